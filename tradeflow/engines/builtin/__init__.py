"""The builtin engine: stable-baselines3 agents on a fast, correctly accounted trading environment."""

from tradeflow.engines.builtin.agent import BuiltinAgent, BuiltinEngine
from tradeflow.engines.builtin.env import ObservationScaler, TradingEnv

__all__ = ["BuiltinAgent", "BuiltinEngine", "ObservationScaler", "TradingEnv"]
