"""Running upstream FinAgent's technical analysis on our bars: one event loop per thread, offline
(``compat`` guards the network), cached by the bars' content, its output validated and
made plain JSON. The only module that calls upstream's coroutines."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradeflow.engines.finagent.rule import SIGNALS, UpstreamOutputError, votes_from_analysis
from tradeflow.errors import StepError

if TYPE_CHECKING:
    from tradeflow.engines.finagent.compat import FinAgentUpstream

#: the bar columns upstream's analysis reads (its yfinance frame's Open/High/Low/Close)
BAR_FEATURES: tuple[str, ...] = ("open", "high", "low", "close")
CACHE_SIZE = 8192


class UpstreamFailed(StepError):
    """Upstream raised while analysing bars; ``str(err)`` is one line naming the symbol and bar."""


_loops = threading.local()


def _run_coroutine(coro: Any) -> Any:
    """Run upstream's coroutine to completion: on this thread's own loop (one per thread, reused:
    a fresh ``asyncio.run`` per bar costs more than upstream's analysis), or on a worker thread
    when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_loops, "loop", None)
        if loop is None or loop.is_closed():
            loop = _loops.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="finagent") as pool:
        return pool.submit(asyncio.run, coro).result()


class FinAgentAnalyst:
    """Runs upstream's technical analysis on a window of our bars (offline), with a cache by content."""

    def __init__(self, upstream: FinAgentUpstream, symbol: str = "SYMBOL") -> None:
        self.upstream = upstream
        self.symbol = symbol
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.calls = 0

    def analyse(self, bars: pd.DataFrame) -> dict[str, Any]:
        """Upstream's analysis JSON for the last bar of ``bars`` (every row is history it may use)."""
        from tradeflow.engines.finagent.compat import UpstreamNetworkBlocked, offline_bars

        prices = bars[list(BAR_FEATURES)].to_numpy(np.float64)
        key = hashlib.sha1(prices.tobytes()).hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        self.calls += 1
        try:
            with offline_bars(self.upstream, bars):
                analysis = _run_coroutine(self.upstream.technical_analysis(self.symbol))
        except UpstreamNetworkBlocked:
            raise
        except Exception as exc:  # noqa: BLE001 - upstream's failure, named in one line
            raise UpstreamFailed(f"{self.symbol}: upstream FinAgent technical analysis raised "
                                 f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from exc
        votes_from_analysis(analysis)  # validate before caching
        analysis = json.loads(json.dumps(analysis, default=_json_default))  # plain JSON (numpy scalars out)
        self._cache[key] = analysis
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return analysis

    def forecaster_prompt(self, analysis: Mapping[str, Any]) -> str:
        """Upstream's forecaster prompt (``agents/forecaster.py:analyze_and_predict``) for ``analysis``."""
        from tradeflow.engines.finagent.compat import _network_blocked

        with _network_blocked():
            prompt = _run_coroutine(self.upstream.forecaster_prompt(dict(analysis)))
        if not isinstance(prompt, str) or not prompt.strip():
            raise UpstreamOutputError(f"upstream forecaster returned {type(prompt).__name__}, not a prompt")
        return prompt


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


def vote_matrix(analyst: FinAgentAnalyst, frame: pd.DataFrame, window: int) -> np.ndarray:
    """Votes at every bar from row ``window - 1`` on, each from upstream on that bar's trailing window."""
    rows = []
    for end in range(window, len(frame) + 1):
        votes = votes_from_analysis(analyst.analyse(frame.iloc[end - window:end]))
        rows.append([votes[name] for name in SIGNALS])
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(SIGNALS))
