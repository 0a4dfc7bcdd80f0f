"""The do-no-harm gate: a model that loses to doing nothing, or to holding the stock, on its own
validation split must not be served as if it were good.

One rule, used in three places:

- ``train_backtest`` registers every version but moves ``champion`` only to a version that passes
  the gate *and* beats the current champion on the new version's validation window
  (``tradeflow.steps.train_backtest`` -> ``tradeflow.model.register_model(move_alias=...)``);
- ``inference`` says in the evidence when the model it serves failed the gate, or when no version
  passed (it then serves the newest version, labelled);
- the review guardrails cap the confidence of a decision whose model failed the gate and put the
  reason in the rationale (``review_agents.guardrails``), so the WebUI never shows a confident
  call from a model that lost.

The walk-forward evaluation (``tradeflow.evaluation``) applies the same rule fold by fold, so its
figures measure the gate as the DAG runs it. Switch: ``RunConfig.do_no_harm_gate`` (on by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


#: confidence ceiling for a decision built on a model that failed the gate (same as the guardrails'
#: cap for an unsupported trade: a labelled, low-confidence call)
GATE_CONFIDENCE_CAP = 0.3
#: a validation return must beat buy-and-hold and flat by more than this (fees and noise)
GATE_MARGIN = 0.0


@dataclass(frozen=True)
class GateResult:
    """Whether a model beat buy-and-hold and flat on its validation split, and why (one line)."""

    passed: bool
    reason: str
    valid_total_return: float
    benchmark_total_return: float

    def as_evidence(self, *, enforced: bool = True, source: str = "validation split") -> dict:
        """The ``model.gate`` block of evidence.json (what the reviewers and guardrails read)."""
        return {"passed": self.passed, "enforced": enforced, "reason": self.reason, "source": source,
                "valid_total_return": round(self.valid_total_return, 6),
                "benchmark_total_return": round(self.benchmark_total_return, 6)}


def check_gate(valid_metrics: Mapping[str, float], margin: float | None = None) -> GateResult:
    """Apply the gate to a validation backtest's metrics (``total_return``,
    ``benchmark_total_return``, as ``BacktestResult.metrics`` names them; a ``valid_`` prefix is
    accepted). Flat earns 0; buy-and-hold earns ``benchmark_total_return`` on the same bars."""

    def get(name: str) -> float:
        value = valid_metrics.get(name, valid_metrics.get(f"valid_{name}"))
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"do-no-harm gate: validation metrics lack a finite {name!r}")
        return float(value)

    margin = GATE_MARGIN if margin is None else margin
    model, hold = get("total_return"), get("benchmark_total_return")
    losses = []
    if not model > hold + margin:
        losses.append(f"buy-and-hold ({hold:+.2%})")
    if not model > 0.0 + margin:
        losses.append("flat (+0.00%)")
    if losses:
        reason = f"validation return {model:+.2%} does not beat {' or '.join(losses)}"
        return GateResult(False, reason, model, hold)
    return GateResult(True, f"validation return {model:+.2%} beats buy-and-hold ({hold:+.2%}) and flat", model, hold)


def cap_confidence(confidence: float, gate: Mapping | None) -> tuple[float, str | None]:
    """``(capped confidence, note)`` for a decision whose model's gate block says it failed."""
    if not gate or gate.get("passed") is not False or not gate.get("enforced", True):
        return confidence, None
    if confidence <= GATE_CONFIDENCE_CAP:
        return confidence, f"model_failed_gate: {gate.get('reason', 'failed the do-no-harm gate')}"
    return GATE_CONFIDENCE_CAP, (f"model_failed_gate: {gate.get('reason', 'failed the do-no-harm gate')}; "
                                 f"confidence {confidence:g} capped at {GATE_CONFIDENCE_CAP}")


def decide_alias(gate: GateResult, challenger_return: float, champion_return: float | None,
                 *, enforced: bool = True) -> tuple[bool, str]:
    """Whether ``champion`` moves to the new version, and why (one line, tagged on the version).

    ``champion_return`` is the current champion's return on the *new* version's validation window
    (``None``: there is no champion, or it cannot be replayed there). With the gate off the alias
    always moves, as it did before the gate existed.
    """
    if not enforced:
        return True, "moved: do-no-harm gate disabled"
    if not gate.passed:
        return False, f"not moved: failed the do-no-harm gate ({gate.reason})"
    if champion_return is None:
        return True, "moved: passed the gate; no champion to compare on this validation window"
    if challenger_return > champion_return:
        return True, (f"moved: passed the gate and {challenger_return:+.2%} beats the champion's "
                      f"{champion_return:+.2%} on the same validation window")
    return False, (f"not moved: passed the gate but {challenger_return:+.2%} does not beat the champion's "
                   f"{champion_return:+.2%} on the same validation window")
