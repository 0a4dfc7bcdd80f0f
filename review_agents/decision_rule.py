"""The decision that is served: the meta-labelled rule when it has a demonstrated edge, the
benchmark otherwise. Applied after the guardrails, to every reviewer's output (rules or LLM).

Two inputs decide it, both from the evidence:

- ``reviewer`` (built by whoever packed the evidence: ``evaluate``'s walk-forward, or the train
  run's fitted reviewer): the decision rule chosen on earlier folds, whether it beat the benchmark
  there net of costs (``edge``), the side it proposes, the fitted meta-labeller
  (``tradeflow.metalabel``, JSON) and its inputs. The stated confidence is the meta-labeller's
  calibrated P(call right); an exit is acted on only when that clears the threshold chosen on
  earlier folds, else the benchmark's position (long) is kept.
- ``model.gate``: a model that failed the do-no-harm gate has no demonstrated edge either.

No edge => the benchmark's position (buy-and-hold: BUY, long), labelled ``NO_EDGE`` first in the
rationale and the key factors, so the WebUI, the payload and the description never present a
losing model's call as agreement. A language model's draft is kept as commentary, but its action
and confidence do not survive this step: they pass the same calibration and gate as the rules'.
"""

from __future__ import annotations

from typing import Any

from tradeflow.metalabel import MetaLabeller, describe_inputs
from tradeflow.positions import NO_EDGE

from .evidence_view import Evidence
from .schema import TradeDecision

#: confidence of the benchmark decision when there is no track record to calibrate on
UNCALIBRATED_CONFIDENCE = 0.5
#: said (key factors, rationale) of every confidence that is not a calibrated probability
NOT_CALIBRATED = "the confidence is NOT a calibrated probability"
MAX_FACTORS = 8


def _probability_up(block: dict[str, Any]) -> tuple[float, str, bool]:
    """``(P(up), how it was found, whether it is a calibrated probability)``."""
    model = block.get("model")
    inputs = block.get("inputs") or {}
    if isinstance(model, dict):
        reviewer = MetaLabeller.from_dict(model)
        return reviewer.probability_up(inputs), (f"meta-label P(up) from {reviewer.samples}+{reviewer.held_out} earlier "
                                                 f"calls, {reviewer.calibration} calibration chosen on earlier calls "
                                                 f"(held-out Brier {reviewer.held_out_brier:.3f}, "
                                                 f"{'beats' if reviewer.skilled else 'does not beat'} the base rate)"), True
    base = block.get("base_rate")
    if isinstance(base, (int, float)):
        return float(base), "base rate of earlier calls (too few to fit a meta-labeller)", True
    return UNCALIBRATED_CONFIDENCE, f"no earlier calls to calibrate on: {NOT_CALIBRATED}", False


def _decision(action: str, confidence: float, ev: Evidence, factors: list[str], rationale: str,
              suggestion: str | None) -> TradeDecision:
    contradicts = suggestion is not None and suggestion != action
    return TradeDecision(
        action=action, confidence=round(min(1.0, max(0.0, confidence)), 4),
        entry=round(ev.close, 4) if action == "BUY" else None, horizon="21 bars",
        key_factors=[f[:200] for f in factors][:MAX_FACTORS], rationale=rationale[:2000],
        contradicts_model=contradicts,
        contradiction_reason=(f"the served decision rule gives {action}" if contradicts else None))


def _with_levels(served: TradeDecision, reviewed: TradeDecision) -> TradeDecision:
    """The reviewer's stop and target kept when it reached the same BUY at the same entry: the served
    decision then carries the risk/reward the WebUI and the IBKR bracket read (a benchmark hold the
    reviewer did not call has none: buy-and-hold sets no stop)."""
    entry = served.entry
    if (served.action == reviewed.action == "BUY" and entry and reviewed.stop_loss and reviewed.take_profit
            and reviewed.stop_loss < entry < reviewed.take_profit):
        return served.model_copy(update={"stop_loss": reviewed.stop_loss, "take_profit": reviewed.take_profit})
    return served


def serve(decision: TradeDecision, ev: Evidence, evidence: dict[str, Any]) -> tuple[TradeDecision, list[str]]:
    """The served decision and the notes saying why it differs from the reviewer's, if it does."""
    block = evidence.get("reviewer") if isinstance(evidence.get("reviewer"), dict) else None
    gate = ev.model.gate or {}
    gate_failed = gate.get("passed") is False and gate.get("enforced", True)
    suggestion = ev.model.suggestion
    if block is None and not gate_failed:
        return decision, []
    if block is None:
        reason = f"the model failed the do-no-harm gate ({gate.get('reason', 'no reason given')})"
        factors = [f"{NO_EDGE}: {reason}", "decision = the benchmark's position (buy-and-hold, long)",
                   f"confidence {UNCALIBRATED_CONFIDENCE}: {NOT_CALIBRATED} (no track record in the evidence)"]
        rationale = (f"{NO_EDGE}: {reason}, so the decision is the benchmark's position (buy-and-hold: long); "
                     f"the model's {suggestion or 'suggestion'} is not served. Confidence "
                     f"{UNCALIBRATED_CONFIDENCE}: {NOT_CALIBRATED} (no track record in the evidence).")
        served = _decision("BUY", UNCALIBRATED_CONFIDENCE, ev, factors, rationale, suggestion)
        return _with_levels(served, decision), [f"no_edge_benchmark: {reason}; {decision.action} -> BUY (benchmark)"]

    p_up, how, calibrated = _probability_up(block)
    said = (f"Confidence {p_up:.2f} is the calibrated probability that the close rises over the horizon ({how})."
            if calibrated else f"Confidence {p_up:.2f}: {NOT_CALIBRATED} ({how}).")
    rule = str(block.get("rule") or "benchmark")
    inputs = describe_inputs(block.get("inputs") or {})
    record = str(block.get("edge_reason") or "")
    threshold = float((block.get("model") or {}).get("threshold", 0.5))
    proposed = str(block.get("proposed") or "BUY")
    edge = bool(block.get("edge")) and not gate_failed if rule == "agent" else bool(block.get("edge"))
    if not edge:
        why = record or (f"the model failed the do-no-harm gate ({gate.get('reason', '')})" if gate_failed else "")
        factors = [f"{NO_EDGE}: {why}", f"P(benchmark long right) {p_up:.2f}: {how}", f"inputs: {inputs}"]
        rationale = (f"{NO_EDGE}: no decision rule beat the benchmark on earlier folds net of costs ({why}); the "
                     f"decision is the benchmark's position (buy-and-hold: long). {said}")
        served = _decision("BUY", p_up, ev, factors, rationale, suggestion)
    elif proposed == "SELL" and 1.0 - p_up >= threshold:
        factors = [f"rule {rule} proposes an exit; P(exit right) {1 - p_up:.2f} >= threshold {threshold:.2f}",
                   f"edge on earlier folds: {record}", f"{how}", f"inputs: {inputs}"]
        rationale = (f"SELL: the decision rule {rule} (it beat the benchmark on earlier folds: {record}) proposes an "
                     f"exit and the meta-labeller puts P(call right) at {1 - p_up:.2f}, above the threshold "
                     f"{threshold:.2f} chosen on earlier folds." + ("" if calibrated else f" {NOT_CALIBRATED}."))
        served = _decision("SELL", 1.0 - p_up, ev, factors, rationale, suggestion)
    else:
        gated = proposed == "SELL"
        head = (f"rule {rule} proposes an exit but P(exit right) {1 - p_up:.2f} < threshold {threshold:.2f}: "
                "the benchmark's position is kept" if gated else f"rule {rule} proposes long")
        factors = [head, f"P(long right) {p_up:.2f}: {how}", f"edge on earlier folds: {record}", f"inputs: {inputs}"]
        rationale = (f"BUY: {head}; the decision rule {rule} beat the benchmark on earlier folds ({record}). "
                     f"{said}")
        served = _decision("BUY", p_up, ev, factors, rationale, suggestion)
    # said where the WebUI shows it, not only in the rationale
    labels = ([f"reviewer fitted at {block['fitted_at']}"[:200]] if block.get("fitted_at") else []) + (
        [] if calibrated else [f"confidence {served.confidence}: {NOT_CALIBRATED}"])
    if labels:
        served = served.model_copy(update={
            "key_factors": [*served.key_factors[:MAX_FACTORS - len(labels)], *labels],
            "rationale": (served.rationale + " " + " ".join(labels) + ".")[:2000]})
    served = _with_levels(served, decision)
    if not edge:
        return served, [f"no_edge_benchmark: {record or 'no rule beat the benchmark'}; {decision.action} -> BUY (benchmark)"]
    notes = [] if served.action == decision.action else [
        f"decision_rule: the reviewer's {decision.action} -> {served.action} (rule {rule}, edge {edge})"]
    return served, notes
