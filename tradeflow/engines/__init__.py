"""Engines train and backtest trading agents; ``get_engine`` picks one by the config's ``engine`` name."""

from __future__ import annotations

from tradeflow.engines.base import ActionResult, Engine, EngineUnavailable, TradingAgent, TrainResult
from tradeflow.errors import InputError

__all__ = ["ActionResult", "Engine", "EngineUnavailable", "TradingAgent", "TrainResult", "get_engine"]


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
