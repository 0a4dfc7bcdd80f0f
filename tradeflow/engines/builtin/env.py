"""Single-asset trading environment after TradeMaster's ``AlgorithmicTradingEnvironment``.

Differences from upstream, each a defect fix (see docs/engine.md):

* accounting goes through ``tradeflow.backtest.Account``, so shorts are marked to market and the
  training reward is exactly the backtest's equity change;
* the action is the target position (upstream adds it to the position, which grows unbounded);
* observations hold no raw prices or cash: standardised z-features plus the held position as a
  fraction in -1..1;
* everything is a numpy array built once; a step does no pandas indexing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from tradeflow.backtest import Account, PositionSizing

#: reward unit: percent of the initial amount, so a 1% equity move is a reward of 1.0
DEFAULT_REWARD_SCALE = 100.0


@dataclass(frozen=True)
class ObservationScaler:
    """Per-feature standardisation fitted on the training split, clipped so outliers cannot saturate the net."""

    mean: np.ndarray
    std: np.ndarray
    clip: float = 10.0

    @classmethod
    def fit(cls, features: np.ndarray) -> ObservationScaler:
        """Mean and standard deviation per column (a constant column gets std 1)."""
        features = np.asarray(features, dtype=np.float64)
        std = features.std(axis=0)
        return cls(mean=features.mean(axis=0), std=np.where(std > 1e-12, std, 1.0))

    def transform(self, features: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObservationScaler:
        return cls(mean=np.asarray(data["mean"]), std=np.asarray(data["std"]), clip=float(data["clip"]))


def make_observation(window_features: np.ndarray, position: float) -> np.ndarray:
    """The flat observation: the (window, n_features) block row by row, oldest bar first, then the position."""
    obs = np.empty(window_features.size + 1, dtype=np.float32)
    obs[:-1] = window_features.reshape(-1)
    obs[-1] = position
    return obs


class TradingEnv(gym.Env[np.ndarray, np.int64]):
    """One episode walks a whole split, deciding at every close from the first full window on.

    Action ``a`` in ``0..2*max_volume`` targets position ``a - max_volume``. The reward for a step
    from close ``t`` to ``t+1`` is the equity change (fees included) in units of ``reward_scale``
    per initial amount, plus ``future_weights`` times the P&L the new position would make over the
    next ``forward_num_day`` closes (TradeMaster's hindsight shaping: it reads future prices, so it
    only ever enters the reward, never the observation; evaluation envs set it to 0). An episode
    ends at the last bar, or early when equity is no longer positive.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        features: np.ndarray,
        prices: np.ndarray,
        *,
        window: int,
        max_volume: int,
        initial_amount: float,
        transaction_cost_pct: float,
        forward_num_day: int = 1,
        future_weights: float = 0.0,
        position_sizing: PositionSizing = "equity_fraction",
        reward_scale: float = DEFAULT_REWARD_SCALE,
    ) -> None:
        super().__init__()
        self._features = np.ascontiguousarray(features, dtype=np.float32)
        self._prices = np.ascontiguousarray(prices, dtype=np.float64)
        n = len(self._prices)
        if self._features.ndim != 2 or len(self._features) != n:
            raise ValueError(f"features must be (bars, n_features) with one row per price; got {self._features.shape}")
        if n < window + 1:
            raise ValueError(f"need more than window={window} bars to take a step; got {n}")
        self.window = window
        self.max_volume = max_volume
        self.account = Account(
            initial_amount=initial_amount,
            transaction_cost_pct=transaction_cost_pct,
            max_volume=max_volume,
            position_sizing=position_sizing,
        )
        self._scale = reward_scale / initial_amount
        ahead = np.minimum(np.arange(n) + forward_num_day, n - 1)
        self._shaping = future_weights * (self._prices[ahead] - self._prices) * self._scale
        self.action_space = gym.spaces.Discrete(2 * max_volume + 1)
        self.observation_space = gym.spaces.Box(
            low=np.append(np.tile(self._features.min(axis=0), window), -1.0).astype(np.float32),
            high=np.append(np.tile(self._features.max(axis=0), window), 1.0).astype(np.float32),
            dtype=np.float32,
        )
        self._t = window - 1

    @property
    def episode_length(self) -> int:
        """Steps from the first full window to the last bar."""
        return len(self._prices) - self.window

    def _observation(self) -> np.ndarray:
        rows = self._features[self._t - self.window + 1 : self._t + 1]
        return make_observation(rows, self.account.target / self.max_volume)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.account.reset()
        self._t = self.window - 1
        return self._observation(), {}

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict]:
        account = self.account
        price = self._prices[self._t]
        before = account.equity(price)
        account.rebalance(int(action) - self.max_volume, price)
        self._t += 1
        after = account.equity(self._prices[self._t])
        reward = (after - before) * self._scale + account.units * self._shaping[self._t - 1]
        terminated = self._t == len(self._prices) - 1 or after <= 0.0
        return self._observation(), float(reward), terminated, False, {"equity": after}
