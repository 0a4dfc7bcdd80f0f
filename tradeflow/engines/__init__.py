"""Engines train and backtest trading agents; ``get_engine`` picks one by the config's ``engine`` name."""

from __future__ import annotations

from tradeflow.engines.base import ActionResult, Engine, EngineUnavailable, TradingAgent, TrainResult

__all__ = ["ActionResult", "Engine", "EngineUnavailable", "TradingAgent", "TrainResult", "get_engine"]


def get_engine(name: str) -> Engine:
    """``builtin`` (stable-baselines3) or ``trademaster`` (upstream TradeMaster, imported only when asked for).

    Raises ``EngineUnavailable`` when the trademaster engine cannot be imported and ``ValueError``
    for any other name.
    """
    if name == "builtin":
        from tradeflow.engines.builtin import BuiltinEngine

        return BuiltinEngine()
    if name == "trademaster":
        try:
            from tradeflow.engines.trademaster import TradeMasterEngine
        except ImportError as exc:
            raise EngineUnavailable(f"engine 'trademaster' is unavailable: {exc}") from None
        return TradeMasterEngine()
    raise ValueError(f"unknown engine {name!r}; choose 'builtin' or 'trademaster'")
