"""Engines train and backtest trading agents; ``get_engine`` picks one by the config's ``engine`` name."""

from __future__ import annotations

from tradeflow.engines.base import ActionResult, Engine, EngineUnavailable, TradingAgent, TrainResult
from tradeflow.errors import InputError

__all__ = ["ActionResult", "Engine", "EngineUnavailable", "TradingAgent", "TrainResult", "engine_missing", "get_engine"]


def engine_missing(name: str) -> str | None:
    """Why engine ``name`` cannot run in this interpreter (one line with the install command), or
    None; cheap (no upstream import), so entry points check it before any run or stage starts."""
    if name == "trademaster":
        from tradeflow.engines.trademaster.compat import INSTALL_COMMAND, UPSTREAM_COMMIT, unavailable_reason

        reason = unavailable_reason()
        return (f"engine 'trademaster' needs upstream TradeMaster @ {UPSTREAM_COMMIT[:12]} ({reason}); install it with: "
                f"{INSTALL_COMMAND} and use .venv-tm") if reason else None
    if name == "finagent":
        from tradeflow.engines.finagent.compat import locate_backend

        try:
            locate_backend()
        except EngineUnavailable as exc:
            return str(exc)
    return None


def get_engine(name: str) -> Engine:
    """``builtin`` (stable-baselines3), ``trademaster`` (upstream TradeMaster) or ``finagent`` (upstream
    FinAgent's technical analysis, calibrated); upstreams are imported only when asked for.

    Raises ``EngineUnavailable`` when an upstream engine cannot be imported and ``ValueError``
    for any other name.
    """
    if name == "builtin":
        from tradeflow.engines.builtin import BuiltinEngine

        return BuiltinEngine()
    if name == "trademaster":
        try:
            from tradeflow.engines.trademaster.engine import TradeMasterEngine
        except ImportError as exc:
            raise EngineUnavailable(f"engine 'trademaster' is unavailable: {exc}") from None
        return TradeMasterEngine()
    if name == "finagent":
        try:
            from tradeflow.engines.finagent.engine import FinAgentEngine
        except ImportError as exc:
            raise EngineUnavailable(f"engine 'finagent' is unavailable: {exc}") from None
        return FinAgentEngine()
    raise InputError(f"unknown engine {name!r}; choose 'builtin', 'trademaster' or 'finagent'")
