"""Importing and running upstream FinAgent (akshata29/finagent @ aa7fe01) offline, on our bars.

Nothing here is upstream code. Upstream is an Azure web app with flat imports under
``src/backend``; ``scripts/install_finagent.sh`` exports that directory at the pinned commit and
records it in ``<venv>/finagent-upstream.json`` (or set ``FINAGENT_BACKEND`` to the directory).
``import_finagent()`` imports the two modules the engine uses, ``agents.technical_analysis``
(``run_enhanced_technical_analysis``: the ``ta`` indicators and upstream's buy/hold/sell scoring)
and ``agents.forecaster`` (``analyze_and_predict``: upstream's forecaster prompt), and returns them
with how they were imported. What it guards, and why (docs/finagent.md):

1. **sys.path.** ``src/backend`` is on ``sys.path`` only during the import, and upstream's
   top-level modules (``config``, ``models``, ``helpers``, ``agents``, ``context``, ``event_utils``)
   are taken back out of ``sys.modules`` afterwards: names that generic must not shadow anything
   else in the process. The imported functions keep their own module globals.
2. **The environment.** Upstream's ``config.py`` runs ``load_dotenv(".env", override=True)`` at
   import, which would let a ``.env`` in the working directory overwrite our variables (tracking
   URI, keys). ``os.environ`` is restored exactly after the import.
3. **Cloud objects.** The same ``config.py`` builds an ``azure.identity.aio.DefaultAzureCredential``
   at class definition (no network until used; it never is). The real azure packages are installed,
   so no stand-in module is needed; nothing Azure, Cosmos, SEC or FMP is ever called.
4. **Network.** ``offline_bars(...)`` is the only way the engine runs upstream code: inside it,
   upstream's ``yfUtils.get_stock_data`` returns our bars (upstream's yfinance schema) and every
   socket ``connect``/DNS lookup raises ``UpstreamNetworkBlocked``. Upstream asking for anything
   else than the prices we gave it is an error, never a silent download.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tradeflow.engines._once import ImportOnce
from tradeflow.engines.base import EngineUnavailable
from tradeflow.engines.provenance import Provenance, verify_tree
from tradeflow.names import PROJECT_ROOT

log = logging.getLogger(__name__)

UPSTREAM_REPO = "akshata29/finagent"
UPSTREAM_COMMIT = "aa7fe01525fe8880c7eafa1a81e6031b2fad3f36"
INSTALL_COMMAND = "bash scripts/install_finagent.sh"
#: the install verifies the exported tree against this (scripts/verify_source_tree.sh); so does every import
MANIFEST = PROJECT_ROOT / "scripts" / f"finagent-{UPSTREAM_COMMIT[:7]}.sha256"
LOCATION_FILE = "finagent-upstream.json"
ENV_BACKEND = "FINAGENT_BACKEND"
TECHNICAL_MODULE = "agents.technical_analysis"
FORECASTER_MODULE = "agents.forecaster"
#: upstream's flat top-level packages/modules (taken back out of sys.modules after the import)
UPSTREAM_TOP_LEVEL = ("agents", "helpers", "config", "models", "context", "event_utils", "auth", "handlers",
                      "middleware")

#: upstream, imported on first use (``_import`` below)
_once: ImportOnce[FinAgentUpstream] = ImportOnce(lambda: _import())
_socket_guard = threading.local()


class UpstreamNetworkBlocked(ConnectionError):
    """Upstream code tried to reach the network while it ran on our bars."""


@dataclass(frozen=True)
class FinAgentUpstream:
    """The upstream functions the engine calls, plus where they came from."""

    technical_analysis: Callable[..., Any]  # async (ticker_symbol) -> dict
    forecaster_prompt: Callable[..., Any]  # async (analysis_result) -> str
    technical_module: types.ModuleType
    forecaster_module: types.ModuleType
    origin: str
    commit: str
    ta_version: str
    #: what was imported, measured: the verified upstream tree or a test double (``provenance``)
    provenance: Provenance | None = None


def locate_backend(environ: dict[str, str] | None = None) -> tuple[Path, str]:
    """Upstream's ``src/backend`` directory and its commit; raises ``EngineUnavailable`` if unknown."""
    env = os.environ if environ is None else environ
    explicit = (env.get(ENV_BACKEND) or "").strip()
    if explicit:
        backend = Path(explicit)
        commit_file = backend.parent.parent / "COMMIT"
        commit = commit_file.read_text().strip() if commit_file.is_file() else UPSTREAM_COMMIT
    else:
        record = Path(sys.prefix) / LOCATION_FILE
        if not record.is_file():
            raise EngineUnavailable(
                f"engine 'finagent' is unavailable: upstream {UPSTREAM_REPO} is not installed in this "
                f"environment ({record} missing); run: {INSTALL_COMMAND} and use .venv-fa")
        data = json.loads(record.read_text())
        backend, commit = Path(data["backend"]), str(data.get("commit", ""))
    if not (backend / "agents" / "technical_analysis.py").is_file():
        raise EngineUnavailable(f"engine 'finagent' is unavailable: {backend} holds no agents/technical_analysis.py; "
                                f"run: {INSTALL_COMMAND}")
    if commit != UPSTREAM_COMMIT:
        raise EngineUnavailable(f"engine 'finagent' is unavailable: {backend} is upstream commit {commit[:12] or '?'}, "
                                f"this adapter is pinned to {UPSTREAM_COMMIT[:12]}; run: {INSTALL_COMMAND}")
    return backend, commit


def unavailable_reason() -> str | None:
    """Why ``import_finagent()`` would fail here (one line), or None."""
    try:
        import_finagent()
    except EngineUnavailable as exc:
        return str(exc)
    return None


def import_finagent() -> FinAgentUpstream:
    """Import upstream once per process (guarded as the module docstring says)."""
    return _once()


@contextlib.contextmanager
def _environment_restored() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != saved:
            changed = sorted(set(os.environ) ^ set(saved) | {k for k in saved if os.environ.get(k) != saved[k]})
            log.info("finagent: undoing upstream's import-time environment changes (%s)", ", ".join(changed)[:300])
            os.environ.clear()
            os.environ.update(saved)


def _import() -> FinAgentUpstream:
    backend, commit = locate_backend()
    before = set(sys.modules)
    sys.path.insert(0, str(backend))
    try:
        with _environment_restored(), _network_blocked(), contextlib.redirect_stdout(sys.stderr):
            technical = importlib.import_module(TECHNICAL_MODULE)
            forecaster = importlib.import_module(FORECASTER_MODULE)
    except UpstreamNetworkBlocked as exc:
        raise EngineUnavailable(f"engine 'finagent' is unavailable: importing upstream tried the network ({exc})") from None
    except ImportError as exc:
        raise EngineUnavailable(f"engine 'finagent' is unavailable: importing upstream failed ({exc}); "
                                f"run: {INSTALL_COMMAND}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(backend))
        for name in set(sys.modules) - before:
            if name.split(".", 1)[0] in UPSTREAM_TOP_LEVEL:
                del sys.modules[name]
    return FinAgentUpstream(
        technical_analysis=technical.run_enhanced_technical_analysis,
        forecaster_prompt=forecaster.analyze_and_predict,
        technical_module=technical,
        forecaster_module=forecaster,
        origin=str(backend),
        commit=commit,
        ta_version=_ta_version(),
        provenance=verify_tree(backend.parent.parent, "src/backend", manifest=MANIFEST, repository=UPSTREAM_REPO,
                               commit=commit),
    )


def _ta_version() -> str:
    """The installed ``ta`` (it has no ``__version__``: read its distribution metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ta")
    except PackageNotFoundError:
        return "not installed"


# --- running upstream offline -------------------------------------------------------------------


def upstream_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Our bars (``date, open, high, low, close[, volume]``) as upstream's yfinance helper returns
    them: a DatetimeIndex and capitalised ``Open/High/Low/Close/Volume`` columns."""
    frame = pd.DataFrame({
        "Open": bars["open"].to_numpy(float), "High": bars["high"].to_numpy(float),
        "Low": bars["low"].to_numpy(float), "Close": bars["close"].to_numpy(float),
        "Volume": bars["volume"].to_numpy(float) if "volume" in bars.columns else float("nan"),
    }, index=pd.DatetimeIndex(pd.to_datetime(bars["date"]).to_numpy(), name="Date") if "date" in bars.columns
        else pd.RangeIndex(len(bars)))
    return frame


def _blocked(*args: Any, **kwargs: Any) -> Any:
    target = args[1] if len(args) > 1 else (args[0] if args else kwargs)
    raise UpstreamNetworkBlocked(f"network access blocked while upstream FinAgent runs (target {target!r}); "
                                 "bars come only from tradeflow's data layer")


@contextlib.contextmanager
def _network_blocked() -> Iterator[None]:
    """Every socket connect and DNS lookup in the process raises while inside (re-entrant)."""
    depth = getattr(_socket_guard, "depth", 0)
    if depth:
        _socket_guard.depth = depth + 1
        try:
            yield
        finally:
            _socket_guard.depth -= 1
        return
    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    socket.socket.connect = _blocked  # type: ignore[method-assign]
    socket.socket.connect_ex = _blocked  # type: ignore[method-assign]
    socket.create_connection = _blocked  # type: ignore[assignment]
    socket.getaddrinfo = _blocked  # type: ignore[assignment]
    _socket_guard.depth = 1
    try:
        yield
    finally:
        _socket_guard.depth = 0
        (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo) = saved


@contextlib.contextmanager
def offline_bars(upstream: FinAgentUpstream, bars: pd.DataFrame) -> Iterator[None]:
    """Upstream's price helper serves ``bars`` (whatever dates it asks for) and the network is blocked."""
    helper = getattr(upstream.technical_module, "yfUtils", None)
    if helper is None:
        raise EngineUnavailable("engine 'finagent': upstream's technical_analysis has no yfUtils helper to feed")
    frame = upstream_frame(bars)
    original = helper.__dict__["get_stock_data"]

    def get_stock_data(symbol: str, start_date: str, end_date: str, save_path: Any = None) -> pd.DataFrame:
        return frame.copy()

    helper.get_stock_data = staticmethod(get_stock_data)
    try:
        with _network_blocked():
            yield
    finally:
        helper.get_stock_data = original
