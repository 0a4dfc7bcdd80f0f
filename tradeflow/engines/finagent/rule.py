"""FinAgent's rating rule as numbers: upstream's five votes read from its analysis, the weighted
probability and the buy/sell/hold rating, the ``Calibration`` that parameterises them, and the
vectorised scoring of every candidate rule used to calibrate it. Pure maths (no upstream, no I/O),
so the engine, the agent and the tests share one definition of the rule."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tradeflow.errors import InputError

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


class UpstreamOutputError(InputError):
    """Upstream's analysis is not what its code documents (junk, missing votes, an error result)."""


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
