"""What a decision means, once: (action, confidence, position mode) -> target position.

Every reader of a decision uses this module: the TradingSignal payload
(``review_agents.signal_payload``), the MLflow description (``tradeflow.runs.notes``), the IBKR
risk/order path (``tradeflow.ibkr.risk``) and ``evaluate``'s ``reviewed`` policy
(``tradeflow.evaluation.walkforward``), so what is evaluated is what would be traded.

- ``long_only`` (the default): BUY = long one full unit; SELL = exit to flat (never a short);
  HOLD = keep what is held (a short held from elsewhere is never extended, and reads as flat).
- ``long_short`` (by choice): BUY = long, SELL = short one full unit, HOLD = keep.

Confidence does not size the position: the IBKR risk step sizes by its own limits (risk per trade,
exposure caps) and only refuses below ``min_confidence``, so evaluate does not scale by it either.
The benchmark a decision must beat is the benchmark's position in the mode: buy-and-hold (long)
in both modes; a decision rule without a demonstrated edge serves it, labelled ``NO_EDGE``.
"""

from __future__ import annotations

from typing import Literal

PositionMode = Literal["long_only", "long_short"]
POSITION_MODES: tuple[str, ...] = ("long_only", "long_short")
DEFAULT_POSITION_MODE: PositionMode = "long_only"

#: the label of a decision that serves the benchmark because no rule beat it on earlier folds
NO_EDGE = "no demonstrated edge: hold"
#: the benchmark's target position (buy-and-hold) in either mode
BENCHMARK_POSITION = 1.0


def _check(mode: str) -> None:
    if mode not in POSITION_MODES:
        raise ValueError(f"position_mode {mode!r}: choose long_only or long_short")


def allows_short(mode: str) -> bool:
    _check(mode)
    return mode == "long_short"


def target_position(action: str, confidence: float | None = None, *, mode: str = DEFAULT_POSITION_MODE,
                    held: float = 0.0) -> float:
    """The target exposure in full units (-1, 0, +1) after acting on ``action``.

    ``held`` is the exposure held before the decision (HOLD keeps it). ``confidence`` is accepted so
    every caller passes the same pair; it does not size (see the module docstring)."""
    _check(mode)
    if action == "BUY":
        return 1.0
    if action == "SELL":
        return -1.0 if mode == "long_short" else 0.0
    if action == "HOLD":
        return float(held) if mode == "long_short" else max(0.0, float(held))
    raise ValueError(f"unknown action {action!r}: BUY, SELL or HOLD")


def meaning(action: str, mode: str = DEFAULT_POSITION_MODE) -> str:
    """One line a person reads: what acting on this decision does in this mode."""
    _check(mode)
    if action == "BUY":
        return f"BUY: go long one full unit ({mode})"
    if action == "SELL":
        return "SELL: exit to flat, never short (long_only)" if mode == "long_only" else "SELL: go short one full unit (long_short)"
    return f"HOLD: keep the position held ({mode})"
