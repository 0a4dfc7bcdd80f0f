"""``engine=finagent``: upstream FinAgent's technical-analysis agent, calibrated, behind the ``Engine`` interface.

Upstream (akshata29/finagent @ aa7fe01, installed by ``scripts/install_finagent.sh``; import guards in
``_finagent_compat``) rates a stock from the last bars: ``run_enhanced_technical_analysis`` computes
EMA 12/26 crossover, RSI 14, MACD 12/26/9, Stochastics 14/3 and ADX 14 with the ``ta`` library,
turns each into a vote (+1 bullish/oversold, -1 bearish/overbought, 0 neutral), sums them with
weight 1 each into ``probability = 0.5 + 0.5 * score / max_score`` and rates ``buy`` at >= 0.66,
``sell`` at <= 0.33, else ``hold``. That rule has no free parameters in upstream; here they are
the model:

* **train** = calibrate the five vote weights (each in ``WEIGHT_GRID``) and the buy/sell thresholds
  (``BUY_GRID`` x ``SELL_GRID``). Every bar's votes come from upstream run on the ``lookback_bars``
  bars up to and including that bar only (no look-ahead). Each config is scored on the training
  split (Sharpe of its daily returns after costs); the ``top_k`` best are re-ranked on the
  validation split, which comes after it in time (walk-forward), and the best there is kept.
  Upstream's own rule (weights 1, 0.66/0.33) is always evaluated too and reported beside it.
* **act**: upstream on the window -> votes -> calibrated probability -> rating -> target position:
  ``buy`` = +max_volume, ``sell`` = 0 (or -max_volume with ``allow_short``), ``hold`` = keep.
* **backtest**: the default ``Engine.backtest`` (the shared ``simulate`` accounting) on the
  agent's decisions, metrics vs buy-and-hold as for every engine.

The agent's saved directory is the "config package": ``finagent_config.json`` (weights, thresholds,
lookback, the calibration report, upstream repository and commit). Loading it imports upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradeflow.config import RunConfig
from tradeflow.engines.base import ActionResult, Engine, TrainResult, best_epoch_metrics
from tradeflow.errors import InputError, StepError

if TYPE_CHECKING:
    from tradeflow.engines._finagent_compat import FinAgentUpstream
    from tradeflow.features import Splits

log = logging.getLogger(__name__)

CONFIG_FILE = "finagent_config.json"
#: the bar columns upstream's analysis reads (its yfinance frame's Open/High/Low/Close)
BAR_FEATURES: tuple[str, ...] = ("open", "high", "low", "close")
#: upstream's five votes, in the order of its ``add_signal`` calls
SIGNALS: tuple[str, ...] = ("ema", "rsi", "macd", "stochastics", "adx")
UPSTREAM_WEIGHTS: dict[str, float] = {name: 1.0 for name in SIGNALS}
UPSTREAM_BUY, UPSTREAM_SELL = 0.66, 0.33
WEIGHT_GRID: tuple[float, ...] = (0.0, 1.0, 2.0)
BUY_GRID: tuple[float, ...] = (0.55, 0.6, 0.66, 0.75, 0.85)
SELL_GRID: tuple[float, ...] = (0.15, 0.25, 0.33, 0.4, 0.45)
#: what upstream calls each vote's label, and its sign (upstream's ``add_signal`` and ADX rule)
VOTE_LABELS: dict[str, dict[str, int]] = {
    "ema": {"bullish": 1, "bearish": -1, "neutral": 0},
    "rsi": {"oversold": 1, "overbought": -1, "neutral": 0},
    "macd": {"bullish": 1, "bearish": -1, "neutral": 0},
    "stochastics": {"oversold": 1, "overbought": -1, "neutral": 0},
    "adx": {"bullish_trend": 1, "bearish_trend": -1, "neutral_trend": 0},
}
_VOTE_PATHS: dict[str, tuple[str, str]] = {
    "ema": ("ema", "signal"), "rsi": ("rsi", "signal"), "macd": ("macd", "trend"),
    "stochastics": ("stochastics", "signal"), "adx": ("adx", "trend_direction"),
}
CACHE_SIZE = 8192


class UpstreamOutputError(InputError):
    """Upstream's analysis is not what its code documents (junk, missing votes, an error result)."""


class UpstreamFailed(StepError):
    """Upstream raised while analysing bars; ``str(err)`` is one line naming the symbol and bar."""


# --- upstream's analysis -> votes -> rating --------------------------------------------------------


def votes_from_analysis(analysis: Any) -> dict[str, int]:
    """Upstream's five votes from its analysis dict; raises ``UpstreamOutputError`` on anything else."""
    if not isinstance(analysis, Mapping):
        raise UpstreamOutputError(f"upstream analysis is a {type(analysis).__name__}, not a dict")
    if analysis.get("error"):
        raise UpstreamOutputError(f"upstream analysis reports an error: {str(analysis['error'])[:200]}")
    indicators = analysis.get("indicators")
    if not isinstance(indicators, Mapping):
        raise UpstreamOutputError("upstream analysis has no 'indicators' object")
    votes: dict[str, int] = {}
    for name, (section, key) in _VOTE_PATHS.items():
        node = indicators.get(section)
        label = node.get(key) if isinstance(node, Mapping) else None
        if label not in VOTE_LABELS[name]:
            raise UpstreamOutputError(f"upstream indicators.{section}.{key} is {label!r}; "
                                      f"expected one of {sorted(VOTE_LABELS[name])}")
        votes[name] = VOTE_LABELS[name][label]
    return votes


def probability(votes: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """Upstream's aggregation with weights: ``0.5 + 0.5 * sum(w*v) / sum(w)`` (0.5 when all w are 0)."""
    total = sum(float(weights[name]) for name in SIGNALS)
    if total <= 0:
        return 0.5
    return 0.5 + 0.5 * sum(float(weights[name]) * votes[name] for name in SIGNALS) / total


def rating_for(prob: float, buy_threshold: float, sell_threshold: float) -> str:
    """Upstream's rule: buy at ``prob >= buy``, sell at ``prob <= sell``, else hold."""
    return "buy" if prob >= buy_threshold else "sell" if prob <= sell_threshold else "hold"


@dataclass(frozen=True)
class Calibration:
    """The calibrated rule (the model's parameters)."""

    weights: dict[str, float]
    buy_threshold: float
    sell_threshold: float
    allow_short: bool = False

    @classmethod
    def upstream_default(cls, allow_short: bool = False) -> Calibration:
        return cls(dict(UPSTREAM_WEIGHTS), UPSTREAM_BUY, UPSTREAM_SELL, allow_short)

    def target(self, rating: str, held: int, max_volume: int) -> int:
        if rating == "buy":
            return max_volume
        if rating == "sell":
            return -max_volume if self.allow_short else 0
        return held


# --- running upstream --------------------------------------------------------------------------------


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
        from tradeflow.engines._finagent_compat import UpstreamNetworkBlocked, offline_bars

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
        from tradeflow.engines._finagent_compat import _network_blocked

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


# --- the agent -------------------------------------------------------------------------------------


class FinAgentAgent:
    """Upstream's analysis + the calibrated rule, as a ``TradingAgent`` over raw OHLC windows."""

    engine = "finagent"
    feature_columns: tuple[str, ...] = BAR_FEATURES

    def __init__(self, analyst: FinAgentAnalyst, calibration: Calibration, *, window: int, max_volume: int,
                 report: Mapping[str, Any] | None = None) -> None:
        self.analyst = analyst
        self.calibration = calibration
        self.window = int(window)
        self.max_volume = int(max_volume)
        self.report = dict(report or {})

    def decide(self, bars: pd.DataFrame, held: int = 0) -> dict[str, Any]:
        """Upstream's analysis of ``bars`` and what the calibrated rule makes of it."""
        analysis = self.analyst.analyse(bars)
        votes = votes_from_analysis(analysis)
        prob = probability(votes, self.calibration.weights)
        rating = rating_for(prob, self.calibration.buy_threshold, self.calibration.sell_threshold)
        return {"analysis": analysis, "votes": votes, "probability": round(prob, 6), "rating": rating,
                "target": self.calibration.target(rating, held, self.max_volume)}

    def act(self, features: np.ndarray, position: float = 0.0) -> ActionResult:
        features = np.asarray(features, dtype=np.float64)
        expected = (self.window, len(self.feature_columns))
        if features.shape != expected:
            raise ValueError(f"features must have shape {expected} (window, open/high/low/close); got {features.shape}")
        held = int(round(float(position) * self.max_volume))
        decision = self.decide(pd.DataFrame(features, columns=list(self.feature_columns)), held)
        prob = decision["probability"]
        low = -self.max_volume if self.calibration.allow_short else 0
        return ActionResult(action=int(decision["target"]), scores={self.max_volume: prob, low: round(1.0 - prob, 6)})

    def config_package(self) -> dict[str, Any]:
        from tradeflow.engines._finagent_compat import UPSTREAM_COMMIT, UPSTREAM_REPO

        return {
            "engine": self.engine,
            "upstream": {"repository": UPSTREAM_REPO, "commit": self.analyst.upstream.commit or UPSTREAM_COMMIT,
                         "function": "agents/technical_analysis.py:run_enhanced_technical_analysis",
                         "forecaster": "agents/forecaster.py:analyze_and_predict"},
            "window": self.window, "max_volume": self.max_volume, "feature_columns": list(self.feature_columns),
            "signals": list(SIGNALS),
            "calibration": asdict(self.calibration),
            "upstream_rule": asdict(Calibration.upstream_default(self.calibration.allow_short)),
            "report": self.report,
        }

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config_package(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path, upstream: FinAgentUpstream | None = None) -> FinAgentAgent:
        from tradeflow.engines._finagent_compat import UPSTREAM_COMMIT, import_finagent

        package = json.loads((Path(directory) / CONFIG_FILE).read_text())
        commit = package["upstream"]["commit"]
        if commit != UPSTREAM_COMMIT:
            raise ValueError(f"model was calibrated on upstream {commit[:12]}; this code pins {UPSTREAM_COMMIT[:12]}")
        c = package["calibration"]
        calibration = Calibration({k: float(v) for k, v in c["weights"].items()}, float(c["buy_threshold"]),
                                  float(c["sell_threshold"]), bool(c["allow_short"]))
        return cls(FinAgentAnalyst(upstream or import_finagent(), package.get("report", {}).get("symbol", "SYMBOL")), calibration,
                   window=int(package["window"]), max_volume=int(package["max_volume"]), report=package.get("report"))


# --- calibration (vectorised over every candidate config) ----------------------------------------


@dataclass(frozen=True)
class Candidate:
    weights: tuple[float, ...]
    buy: float
    sell: float


def candidate_grid() -> list[Candidate]:
    """Every weight vector of ``WEIGHT_GRID`` (all-zero excluded) x every buy > sell threshold pair."""
    weights = [w for w in itertools.product(WEIGHT_GRID, repeat=len(SIGNALS)) if any(w)]
    return [Candidate(w, b, s) for w in weights for b in BUY_GRID for s in SELL_GRID if b > s]


def positions_for(votes: np.ndarray, candidates: list[Candidate], *, allow_short: bool) -> np.ndarray:
    """Target positions (fractions -1/0/1) of every candidate at every bar, (bars, candidates).

    Exactly the agent's rule: buy -> 1, sell -> 0 (or -1), hold keeps the previous target (0 first)."""
    w = np.asarray([c.weights for c in candidates], dtype=np.float64)  # (K, 5)
    prob = 0.5 + 0.5 * (votes @ w.T) / w.sum(axis=1)  # (n, K)
    buy = np.asarray([c.buy for c in candidates])
    sell = np.asarray([c.sell for c in candidates])
    value = np.where(prob >= buy - 1e-12, 1.0, np.where(prob <= sell + 1e-12, -1.0 if allow_short else 0.0, np.nan))
    n, k = value.shape
    index = np.where(np.isnan(value), -1, np.arange(n)[:, None])
    last = np.maximum.accumulate(index, axis=0)
    filled = np.where(last >= 0, value[np.clip(last, 0, None), np.arange(k)[None, :]], 0.0)
    return filled


def strategy_returns(positions: np.ndarray, close: np.ndarray, cost: float) -> np.ndarray:
    """Daily returns of holding ``positions[t]`` from close t to t+1, less ``cost`` per unit traded."""
    moves = close[1:] / close[:-1] - 1.0
    held = positions[:-1]
    traded = np.abs(np.diff(np.vstack([np.zeros((1, positions.shape[1])), positions]), axis=0))[:-1]
    return held * moves[:, None] - cost * traded


def sharpe(returns: np.ndarray) -> np.ndarray:
    mean, std = returns.mean(axis=0), returns.std(axis=0)
    return np.where(std > 1e-12, mean / np.where(std > 1e-12, std, 1.0) * math.sqrt(252), 0.0)


def total_return(returns: np.ndarray) -> np.ndarray:
    return np.prod(1.0 + returns, axis=0) - 1.0


# --- the engine ------------------------------------------------------------------------------------


class FinAgentEngine(Engine):
    """Calibrates upstream FinAgent's technical-analysis rating rule (see the module docstring)."""

    name = "finagent"

    def __init__(self, upstream: FinAgentUpstream | None = None) -> None:
        if upstream is None:
            from tradeflow.engines._finagent_compat import import_finagent

            upstream = import_finagent()  # EngineUnavailable (one line + the install command) if absent
        self.upstream = upstream

    def analyst(self, symbol: str) -> FinAgentAnalyst:
        return FinAgentAnalyst(self.upstream, symbol)

    def train(self, splits: Splits, cfg: RunConfig, *, progress: Callable[[dict], None] | None = None,
              workdir: Path) -> TrainResult:
        params = cfg.finagent
        window = params.lookback_bars
        for name in ("train", "valid"):
            rows = len(getattr(splits, name))
            if name == "train" and rows < window + 20:
                raise InputError(f"{cfg.symbol}: train split has {rows} rows; engine finagent needs at least "
                                 f"{window + 20} (lookback_bars {window} + 20 bars to score a rule)")
        started = time.perf_counter()
        analyst = self.analyst(cfg.symbol)
        train = splits.train.reset_index(drop=True)
        valid = pd.concat([train.tail(window - 1), splits.valid], ignore_index=True)  # history only
        votes = {"train": vote_matrix(analyst, train, window), "valid": vote_matrix(analyst, valid, window)}
        close = {"train": train["close"].to_numpy(np.float64)[window - 1:],
                 "valid": valid["close"].to_numpy(np.float64)[window - 1:]}
        analysis_seconds = time.perf_counter() - started

        cost = float(cfg.trademaster.transaction_cost_pct)
        grid = candidate_grid()
        default = Candidate(tuple(UPSTREAM_WEIGHTS[s] for s in SIGNALS), UPSTREAM_BUY, UPSTREAM_SELL)
        scored = {}
        for split in ("train", "valid"):
            returns = strategy_returns(positions_for(votes[split], grid + [default], allow_short=params.allow_short),
                                       close[split], cost)
            scored[split] = (sharpe(returns), total_return(returns))
        train_sharpe, train_return = scored["train"]
        valid_sharpe, valid_return = scored["valid"]
        # rank on train (Sharpe, then return, then grid order: deterministic), re-rank the top_k on valid
        order = sorted(range(len(grid)), key=lambda i: (-round(train_sharpe[i], 9), -round(train_return[i], 9), i))
        shortlist = order[: params.top_k]
        curve = []
        for rank, i in enumerate(shortlist, start=1):
            row = {"epoch": rank, "timesteps": len(grid) * (len(close["train"]) + len(close["valid"])),
                   "train_total_return": float(train_return[i]), "train_sharpe": float(train_sharpe[i]),
                   "valid_total_return": float(valid_return[i]), "valid_sharpe": float(valid_sharpe[i]),
                   "steps_per_s": 0.0}
            curve.append(row)
        best_rank = 1 + max(range(len(shortlist)), key=lambda r: (round(valid_sharpe[shortlist[r]], 9),
                                                                   round(valid_return[shortlist[r]], 9), -r))
        best = grid[shortlist[best_rank - 1]]
        seconds = time.perf_counter() - started
        for row in curve:
            row["steps_per_s"] = row["timesteps"] / max(seconds - analysis_seconds, 1e-9)
            if progress is not None:
                progress({**row, "epochs": len(curve)})
        calibration = Calibration(dict(zip(SIGNALS, best.weights)), best.buy, best.sell, params.allow_short)
        d = len(grid)  # the default rule's column
        report = {
            "symbol": cfg.symbol, "candidates": len(grid), "top_k": params.top_k, "lookback_bars": window,
            "objective": "train Sharpe (daily, after costs), top_k re-ranked by valid Sharpe",
            "train_bars": int(len(close["train"])), "valid_bars": int(len(close["valid"])),
            "selected": {"train_sharpe": float(train_sharpe[shortlist[best_rank - 1]]),
                         "valid_sharpe": float(valid_sharpe[shortlist[best_rank - 1]])},
            "upstream_rule": {"train_sharpe": float(train_sharpe[d]), "train_total_return": float(train_return[d]),
                              "valid_sharpe": float(valid_sharpe[d]), "valid_total_return": float(valid_return[d])},
            "upstream_calls": analyst.calls,
        }
        agent = FinAgentAgent(analyst, calibration, window=window, max_volume=cfg.trademaster.max_volume, report=report)
        agent.save(Path(workdir) / "agent")
        log.info("%s: finagent calibrated over %d rules in %.1fs (%d upstream analyses): weights %s, buy>=%.2f "
                 "sell<=%.2f; valid sharpe %.2f (upstream's rule %.2f)", cfg.symbol, len(grid), seconds,
                 analyst.calls, calibration.weights, best.buy, best.sell, report["selected"]["valid_sharpe"],
                 report["upstream_rule"]["valid_sharpe"])
        extra = {**best_epoch_metrics(curve[best_rank - 1]), "calibration_candidates": float(len(grid)),
                 "upstream_analyses": float(analyst.calls), "analysis_seconds": analysis_seconds,
                 **{f"upstream_rule_{k}": v for k, v in report["upstream_rule"].items()}}
        test = pd.concat([splits.valid.tail(window - 1), splits.test], ignore_index=True)
        default_agent = FinAgentAgent(analyst, Calibration.upstream_default(params.allow_short), window=window,
                                      max_volume=cfg.trademaster.max_volume)
        default_test = self.backtest(default_agent, test, cfg).metrics
        extra.update({f"upstream_rule_test_{k}": float(default_test[k])
                      for k in ("total_return", "sharpe", "max_drawdown", "num_trades")})
        return TrainResult(agent=agent, learning_curve=curve, best_epoch=best_rank,
                           timesteps=int(curve[0]["timesteps"]), train_seconds=time.perf_counter() - started,
                           env_steps_per_s=float(curve[0]["steps_per_s"]), extra_metrics=extra)

    def load_agent(self, directory: Path) -> FinAgentAgent:
        return FinAgentAgent.load(directory, self.upstream)


# --- inference: upstream's analysis as review evidence ---------------------------------------------


def review_evidence(agent: FinAgentAgent, window: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the review team gets from FinAgent for the latest window: the ``finagent`` evidence
    section (upstream's analysis JSON, the calibrated reading of it, provenance) and the ``prompts``
    section (upstream's forecaster prompt for that analysis, generated by the installed upstream)."""
    decision = agent.decide(window.reset_index(drop=True))
    analysis = decision["analysis"]
    package = agent.config_package()
    section = {
        "upstream": package["upstream"],
        "analysis": analysis,
        "upstream_rating": analysis.get("final_decision", {}).get("rating"),
        "upstream_probability": analysis.get("final_decision", {}).get("probability"),
        "calibrated": {"votes": decision["votes"], "probability": decision["probability"],
                       "rating": decision["rating"], **package["calibration"]},
    }
    missing: list[str] = []
    section = _finite_or_null(section, "finagent", missing)
    if missing:
        # JSON has no NaN/inf and the review refuses them: an indicator upstream could not compute
        # (too few bars for its window) is an absent value, and the evidence says which.
        section["non_finite_as_null"] = missing
    prompt = agent.analyst.forecaster_prompt(analysis)
    prompts = {"forecaster": {"text": prompt, "source": f"{package['upstream']['repository']}@"
                              f"{package['upstream']['commit'][:12]}:{package['upstream']['forecaster']}"}}
    return section, prompts


def _finite_or_null(value: Any, where: str, missing: list[str]) -> Any:
    """``value`` with every NaN/inf number replaced by None; the dotted paths go into ``missing``."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v, f"{where}.{k}", missing) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", missing) for i, v in enumerate(value)]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        missing.append(where)
        return None
    return value
