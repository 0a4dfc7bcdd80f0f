"""The WebUI ``signal`` artifact's ``signal_data``, and the TradingSignal rules it must pass.

The WebUI validates signals with its own rules (see shared/contracts/webui-backend.md); a
payload that fails them is rendered wrong or rejected, so we check before posting rather
than find out in the UI. The artifact's top-level ``confidence`` is ``decision.confidence``
(0 to 1); ``signal_data.confidence`` is the band and ``confidence_score`` the percentage.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from .analysis import assess
from .evidence import parse_evidence
from .schema import ACTIONS, ReviewOutcome

#: Position size at confidence 1.0, in percent of equity (scaled linearly; HOLD has none).
MAX_POSITION_PERCENT = 10.0
PRICE_FIELDS = ("support_level", "resistance_level", "suggested_entry_price", "suggested_stop_loss", "suggested_take_profit")
REQUIRED_FIELDS = ("symbol", "action", "confidence", "confidence_score", "reasoning", "timeframe_analyzed", "model_used")


class SignalError(ValueError):
    """``signal_data`` breaks a TradingSignal rule; the message lists every broken rule."""


def confidence_band(score: float) -> str:
    """HIGH (>= 80), MEDIUM (50-79), LOW (< 50), on the 0-100 score."""
    if score >= 80:
        return "HIGH"
    if score >= 50:
        return "MEDIUM"
    return "LOW"


def _r_multiple(entry: float | None, stop: float | None, target: float | None) -> float | None:
    if entry is None or stop is None or target is None or entry == stop:
        return None
    return round(abs(target - entry) / abs(entry - stop), 2)


def signal_payload(outcome: ReviewOutcome, evidence: dict[str, Any]) -> dict[str, Any]:
    """``signal_data`` for the WebUI, from the reviewed decision and the evidence it rests on."""
    ev = parse_evidence(evidence)
    d = outcome.decision
    score = round(d.confidence * 100, 1)
    directional = d.action != "HOLD" and not outcome.is_fallback
    reasoning = d.rationale
    if d.contradicts_model and d.contradiction_reason:
        reasoning = f"{reasoning} (Contradicts the RL model: {d.contradiction_reason})"
    return {
        "symbol": ev.symbol,
        "action": d.action,
        "confidence": confidence_band(score),
        "confidence_score": score,
        "reasoning": reasoning,
        "key_factors": list(d.key_factors),
        "trend": assess(ev).trend,
        "support_level": ev.indicators.support,
        "resistance_level": ev.indicators.resistance,
        "suggested_entry_price": d.entry,
        "suggested_stop_loss": d.stop_loss,
        "suggested_take_profit": d.take_profit,
        "r_multiple": _r_multiple(d.entry, d.stop_loss, d.take_profit),
        # what the WebUI's signal page reads for its risk/reward box (hidden when absent)
        "risk_reward_ratio": _r_multiple(d.entry, d.stop_loss, d.take_profit),
        "position_size_percent": round(d.confidence * MAX_POSITION_PERCENT, 1) if directional else None,
        "timeframe_analyzed": ev.bar_size,
        "model_used": outcome.model_used,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_signal_data(data: dict[str, Any]) -> dict[str, Any]:
    """Enforce the WebUI's TradingSignal rules; returns ``data`` or raises ``SignalError``."""
    problems = [f"'{name}' is required" for name in REQUIRED_FIELDS if data.get(name) in (None, "")]
    if data.get("action") not in ACTIONS:
        problems.append(f"action {data.get('action')!r} is not BUY, SELL or HOLD")
    score = data.get("confidence_score")
    if not _is_number(score) or not 0 <= score <= 100:
        problems.append(f"confidence_score {score!r} is not a number in 0..100")
    elif data.get("confidence") != confidence_band(score):
        problems.append(
            f"confidence {data.get('confidence')!r} does not match confidence_score {score} "
            f"(expected {confidence_band(score)})"
        )
    reasoning = data.get("reasoning")
    if not isinstance(reasoning, str) or len(reasoning.strip()) < 10:
        problems.append("reasoning must be at least 10 characters")
    for name in ("timeframe_analyzed", "model_used", "symbol"):
        if name in data and data[name] is not None and not isinstance(data[name], str):
            problems.append(f"{name} must be a string")
    for name in PRICE_FIELDS:
        value = data.get(name)
        if value is not None and (not _is_number(value) or value <= 0):
            problems.append(f"{name} {value!r} must be a positive number or null")
    for name in ("r_multiple", "risk_reward_ratio", "position_size_percent"):
        value = data.get(name)
        if value is not None and (not _is_number(value) or value < 0):
            problems.append(f"{name} {value!r} must be a non-negative number or null")
    factors = data.get("key_factors", [])
    if not isinstance(factors, list) or not all(isinstance(f, str) for f in factors):
        problems.append("key_factors must be a list of strings")
    if problems:
        raise SignalError("invalid signal_data: " + "; ".join(problems))
    return data
