"""The WebUI ``signal`` artifact's ``signal_data``, and the TradingSignal rules it must pass.

The WebUI validates signals with its own rules (see shared/contracts/webui-backend.md); a
payload that fails them is rendered wrong or rejected, so we check before posting rather
than find out in the UI. The artifact's top-level ``confidence`` is ``decision.confidence``
(0 to 1); ``signal_data.confidence`` is the band and ``confidence_score`` the percentage.
The rules themselves live in ``tradeflow.trading_signal`` (shared with the WebUI client).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from tradeflow.positions import NO_EDGE, target_position
from tradeflow.trading_signal import PRICE_FIELDS, REQUIRED_FIELDS, SignalError, check_trading_signal, confidence_band

from .analysis import assess
from .evidence_view import parse_evidence
from .schema import ReviewOutcome

#: Position size of one full unit (``tradeflow.positions``), in percent of equity. Confidence does
#: not scale it (the IBKR risk step does not either); a SELL in long_only is an exit (size none).
MAX_POSITION_PERCENT = 10.0


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
    target = target_position(d.action, d.confidence, mode=outcome.position_mode)
    reasoning = d.rationale
    if d.contradicts_model and d.contradiction_reason and not reasoning.startswith(NO_EDGE):
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
        "position_size_percent": round(abs(target) * MAX_POSITION_PERCENT, 1) if directional and target else None,
        "timeframe_analyzed": ev.bar_size,
        "model_used": outcome.model_used,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def validate_signal_data(data: dict[str, Any]) -> dict[str, Any]:
    """Enforce the WebUI's TradingSignal rules (``tradeflow.trading_signal``, the one contract the
    WebUI client checks too); returns ``data`` or raises ``SignalError``."""
    check_trading_signal(data)
    return data


__all__ = ["MAX_POSITION_PERCENT", "PRICE_FIELDS", "REQUIRED_FIELDS", "SignalError", "confidence_band",
           "signal_payload", "validate_signal_data"]
