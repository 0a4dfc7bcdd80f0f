"""Guardrails in code: whatever a model said, the decision that leaves here is sane.

Prompts ask nicely; this module enforces. Every correction adds a ``"<code>: <detail>"`` note
(codes are stable, for MLflow tags and dashboards):

- ``confidence_refused``: confidence outside [0, 1] or not a number (``7``, ``true``, ``"high"``)
  is refused, never clamped to certainty: HOLD at confidence 0.
- ``unsupported_action``: BUY/SELL backed by *neither* the model suggestion *nor* the technical
  stance of the evidence becomes HOLD with confidence <= 0.3. This is the prompt-injection
  defence: untrusted text can talk a model into a trade, but it cannot change the evidence,
  so a trade only the injected text argues for never survives.
- ``contradiction_flag_corrected`` / ``contradiction_unexplained``: ``contradicts_model`` is
  recomputed from the evidence; contradicting the model without a reason caps confidence at 0.5.
- ``entry_reset``, ``stop_defaulted``, ``stop_wrong_side``, ``stop_clamped``, ``target_*``:
  entry defaults to the last close; BUY needs stop < entry < take_profit, SELL the reverse;
  a missing or wrong-side level is set 1.5 ATR from entry; a level farther than
  ``atr_multiple_cap`` x ATR is pulled in to that distance. HOLD carries no levels.
- ``synthetic_data``: confidence capped at 0.5 when the evidence came from synthetic bars.
- ``rationale_missing``: a too-short rationale is replaced by a stated placeholder.
- ``implausible_levels``: levels that are not finite, not ordered (stop < entry < take-profit for
  BUY), beyond 1e9, on an ATR over half the close, or with a reward over 20x the risk: HOLD at 0.
- ``model_failed_gate``: the model failed the do-no-harm gate (``tradeflow.gate``): confidence
  capped at ``GATE_CONFIDENCE_CAP`` and the reason leads the rationale and the key factors.
"""

from __future__ import annotations

import math
import re

from tradeflow.config import ReviewConfig
from tradeflow.gate import cap_confidence

from .analysis import SYNTHETIC_CONFIDENCE_CAP, assess
from .evidence_view import Evidence
from .schema import Action, DecisionDraft, TradeDecision

UNSUPPORTED_CONFIDENCE_CAP = 0.3
UNEXPLAINED_CONTRADICTION_CAP = 0.5
DEFAULT_LEVEL_ATR = 1.5
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_FACTORS, MAX_FACTOR_CHARS, MAX_RATIONALE_CHARS, MAX_REASON_CHARS = 8, 200, 2000, 500


def _clean(text: str | None, limit: int) -> str:
    return _CONTROL_RE.sub(" ", text or "").strip()[:limit]


def _confidence(value: float, notes: list[str]) -> float | None:
    """The confidence, or None (refused) when it is not a finite number in [0, 1]: an answer of
    ``confidence: 7`` says the model did not follow the schema, not that it is certain."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        notes.append(f"confidence_refused: {value:g} is not a number in [0, 1]; HOLD at confidence 0")
        return None
    return value


def _level(
    name: str, value: float | None, entry: float, side: int, atr: float, cap_atr: float, notes: list[str]
) -> float:
    """One protective level. ``side`` is +1 when the level must be above entry, -1 below."""
    default = entry + side * DEFAULT_LEVEL_ATR * atr
    if value is None or not math.isfinite(value):
        notes.append(f"{name}_defaulted: missing; set {DEFAULT_LEVEL_ATR:g} ATR from entry ({default:.4f})")
        level = default
    elif side * (value - entry) <= 0:
        notes.append(f"{name}_wrong_side: {value:g} is on the wrong side of entry {entry:g}; set to {default:.4f}")
        level = default
    elif abs(value - entry) > cap_atr * atr:
        level = entry + side * cap_atr * atr
        notes.append(f"{name}_clamped: {value:g} is more than {cap_atr:g} ATR from entry; set to {level:.4f}")
    else:
        level = value
    if level <= 0:  # a huge ATR on a cheap stock: keep the level positive and on its side
        level = entry * 0.5
        notes.append(f"{name}_floor: level below zero; set to half the entry ({level:.4f})")
    return round(level, 4)


#: Bounds of a plausible daily-bar trade: ATR at most half the close, prices below 1e9, and a
#: reward at most this many times the risk.
MAX_ATR_FRACTION, MAX_PRICE, MAX_R_MULTIPLE = 0.5, 1e9, 20.0


def _implausible(side: int, entry: float, stop: float, target: float, close: float, atr: float) -> str | None:
    """Why the levels cannot be traded (unordered, absurd or degenerate), or None."""
    values = (entry, stop, target, close, atr)
    if not all(math.isfinite(v) for v in values):
        return "a level is not a finite number"
    if max(abs(v) for v in values) >= MAX_PRICE:
        return f"prices of {max(abs(v) for v in values):.3g} are beyond {MAX_PRICE:g}"
    if close <= 0 or atr <= 0 or atr > MAX_ATR_FRACTION * close:
        return f"ATR {atr:g} against a close of {close:g} is not a plausible daily range"
    if not side * (target - entry) > 0 or not side * (entry - stop) > 0:
        return f"levels are not ordered (stop {stop:g}, entry {entry:g}, take-profit {target:g})"
    if abs(target - entry) / abs(entry - stop) > MAX_R_MULTIPLE:
        return f"reward is {abs(target - entry) / abs(entry - stop):.1f} times the risk (cap {MAX_R_MULTIPLE:g})"
    return None


def apply_guardrails(draft: DecisionDraft, ev: Evidence, config: ReviewConfig) -> tuple[TradeDecision, list[str]]:
    """Validate, correct and bound a draft against the evidence; returns the decision and notes."""
    notes: list[str] = []
    action: Action = draft.action
    confidence = _confidence(float(draft.confidence), notes)
    rationale = _clean(draft.rationale, MAX_RATIONALE_CHARS)
    refused = confidence is None
    if confidence is None:
        action, confidence = "HOLD", 0.0
        rationale = _clean(f"[guardrail: confidence refused, HOLD] {rationale}", MAX_RATIONALE_CHARS)
    suggestion = ev.model.suggestion
    stance = assess(ev, atr_cap=config.atr_multiple_cap).technical_stance

    if action != "HOLD" and action != suggestion and action != stance:
        notes.append(
            f"unsupported_action: {action} is backed by neither the model suggestion ({suggestion}) "
            f"nor the technical stance ({stance}); overridden to HOLD"
        )
        rationale = _clean(f"[guardrail: {action} overridden to HOLD] {rationale}", MAX_RATIONALE_CHARS)
        action, confidence = "HOLD", min(confidence, UNSUPPORTED_CONFIDENCE_CAP)

    contradicts = suggestion is not None and action != suggestion
    reason = _clean(draft.contradiction_reason, MAX_REASON_CHARS) or None
    if "unsupported_action" in (n.split(":", 1)[0] for n in notes) and contradicts:
        reason = f"guardrail: {draft.action} was unsupported by the evidence, so HOLD"
    if contradicts != draft.contradicts_model:
        notes.append(f"contradiction_flag_corrected: action {action} vs model {suggestion} -> {contradicts}")
    if contradicts and (reason is None or len(reason) < 5):
        notes.append(f"contradiction_unexplained: no reason for contradicting the model; confidence <= {UNEXPLAINED_CONTRADICTION_CAP}")
        confidence = min(confidence, UNEXPLAINED_CONTRADICTION_CAP)
        reason = None
    if refused and contradicts:
        reason = "guardrail: the confidence was not a number in [0, 1], so HOLD"
    if not contradicts:
        reason = None

    if ev.data.synthetic and confidence > SYNTHETIC_CONFIDENCE_CAP:
        notes.append(f"synthetic_data: confidence {confidence:g} capped at {SYNTHETIC_CONFIDENCE_CAP}")
        confidence = SYNTHETIC_CONFIDENCE_CAP

    gate_factor = None
    confidence, gate_note = cap_confidence(confidence, ev.model.gate)
    if gate_note:
        notes.append(gate_note)
        gate_factor = f"model failed the do-no-harm gate: {ev.model.gate.get('reason', '')}"[:MAX_FACTOR_CHARS]
        rationale = _clean(f"[do-no-harm gate: {gate_factor}] {rationale}", MAX_RATIONALE_CHARS)

    entry = stop = target = None
    if action != "HOLD":
        close, atr, cap = ev.close, ev.atr, config.atr_multiple_cap
        entry = draft.entry if draft.entry is not None and math.isfinite(draft.entry) and draft.entry > 0 else close
        if abs(entry - close) > cap * atr:
            notes.append(f"entry_reset: {entry:g} is more than {cap:g} ATR from the last close; set to {close:g}")
            entry = close
        side = 1 if action == "BUY" else -1
        stop = _level("stop", draft.stop_loss, entry, -side, atr, cap, notes)
        target = _level("target", draft.take_profit, entry, side, atr, cap, notes)
        entry = round(entry, 4)
        if problem := _implausible(side, entry, stop, target, close, atr):
            notes.append(f"implausible_levels: {problem}; overridden to HOLD")
            action, confidence, entry, stop, target = "HOLD", 0.0, None, None, None
            contradicts = suggestion is not None and action != suggestion
            reason = "guardrail: the price levels were implausible, so HOLD" if contradicts else None

    if len(rationale) < 10:
        notes.append("rationale_missing: the model gave no usable rationale")
        rationale = f"{action} decision; the model gave no usable rationale."
    factors = [f for f in (_clean(k, MAX_FACTOR_CHARS) for k in draft.key_factors) if f][:MAX_FACTORS]
    if gate_factor:
        factors = [gate_factor, *factors][:MAX_FACTORS]
    decision = TradeDecision(
        action=action,
        confidence=round(confidence, 4),
        entry=entry,
        stop_loss=stop,
        take_profit=target,
        horizon=_clean(draft.horizon, 40) or "5 bars",
        key_factors=factors,
        rationale=rationale,
        contradicts_model=contradicts,
        contradiction_reason=reason,
    )
    return decision, notes


def fallback_decision(reason: str, ev: Evidence) -> TradeDecision:
    """HOLD at confidence 0: the safe answer whenever the review itself failed."""
    suggestion = ev.model.suggestion
    contradicts = suggestion is not None and suggestion != "HOLD"
    return TradeDecision(
        action="HOLD",
        confidence=0.0,
        horizon="5 bars",
        key_factors=[f"review fallback: {reason}"],
        rationale=f"HOLD: the AI review did not produce a usable decision ({reason}), so no trade is taken.",
        contradicts_model=contradicts,
        contradiction_reason=f"review failed ({reason}); HOLD is the safe default" if contradicts else None,
    )
