"""Baseline policies: what a decision must beat to be worth anything.

Each baseline maps the rebalance rows of one symbol to target positions in
``-max_volume..max_volume`` using only bars up to each rebalance close (the SMA crossover reads
the past closes; the random policy reads nothing). The RL agent and the reviewed decision are
produced by the walk-forward itself (``walkforward.py``), because they need refitted models.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

BUY_AND_HOLD = "buy_and_hold"
FLAT = "flat"
SMA_CROSSOVER = "sma_crossover"
REVIEWED = "reviewed"
RANDOM_PREFIX = "random_s"
AGENT_PREFIX = "agent_"


def buy_and_hold(n: int, max_volume: int) -> np.ndarray:
    """Fully long at every rebalance (one entry fee, then held)."""
    return np.full(n, max_volume, dtype=np.int64)


def flat(n: int) -> np.ndarray:
    """Never invested: the do-nothing benchmark (earns 0)."""
    return np.zeros(n, dtype=np.int64)


def random_policy(n: int, max_volume: int, *, seed: int, symbol: str, long_only: bool = False) -> np.ndarray:
    """Uniform over the positions the mode allows (``0..max_volume`` in long_only, else
    ``-max_volume..max_volume``) at every rebalance; seeded by (seed, symbol) so a symbol's draws do
    not depend on which other symbols are evaluated."""
    rng = np.random.default_rng([seed, zlib.crc32(symbol.encode())])
    return rng.integers(0 if long_only else -max_volume, max_volume + 1, size=n).astype(np.int64)


def sma_crossover(close: pd.Series, rows: np.ndarray, max_volume: int, *, fast: int = 20, slow: int = 50) -> np.ndarray:
    """Long while SMA(fast) > SMA(slow) of the close at the rebalance close, else flat.

    ``close`` is the full close series; ``rows`` are the positions in it of the rebalance bars.
    Rolling means use bars up to each row only; before ``slow`` bars exist the policy is flat.
    """
    fast_sma = close.rolling(fast, min_periods=fast).mean().to_numpy()
    slow_sma = close.rolling(slow, min_periods=slow).mean().to_numpy()
    f, s = fast_sma[rows], slow_sma[rows]
    long = np.isfinite(f) & np.isfinite(s) & (f > s)
    return np.where(long, max_volume, 0).astype(np.int64)


def random_name(seed: int) -> str:
    return f"{RANDOM_PREFIX}{seed}"


def agent_name(algorithm: str) -> str:
    return f"{AGENT_PREFIX}{algorithm}"
