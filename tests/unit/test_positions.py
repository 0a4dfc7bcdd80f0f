"""What a decision means, once (``tradeflow.positions``): long_only never shorts anywhere, and a
model that failed the gate yields the benchmark's decision, labelled."""

from __future__ import annotations

import copy

import pytest

from review_agents import review, signal_payload, validate_signal_data
from tests.unit.test_review_agents import BEARISH, BULLISH
from tradeflow.config import ReviewConfig, resolve_config
from tradeflow.ibkr.risk import assess
from tradeflow.ibkr.strategy import RiskSettings
from tradeflow.positions import NO_EDGE, allows_short, target_position
from tradeflow.runs.notes import review_note


@pytest.mark.parametrize("action", ["BUY", "SELL", "HOLD"])
@pytest.mark.parametrize("held", [-1.0, 0.0, 1.0])
def test_long_only_never_targets_a_short(action, held):
    assert target_position(action, 0.9, mode="long_only", held=held) >= 0.0


def test_the_mapping_in_both_modes():
    assert target_position("SELL", 0.7, mode="long_only") == 0.0
    assert target_position("SELL", 0.7, mode="long_short") == -1.0
    assert target_position("BUY", 0.2) == 1.0 and target_position("HOLD", 0.5, held=1.0) == 1.0
    assert not allows_short("long_only") and allows_short("long_short")
    with pytest.raises(ValueError, match="position_mode"):
        target_position("BUY", mode="short_only")


def test_position_mode_is_a_config_key_long_only_by_default():
    assert resolve_config({"symbol": "AAPL"}).review.position_mode == "long_only"
    assert resolve_config({"symbol": "AAPL", "position_mode": "long_short"}).review.position_mode == "long_short"


def test_long_only_sell_in_the_payload_is_an_exit_with_no_position():
    outcome = review(BEARISH, ReviewConfig())
    assert outcome.decision.action == "SELL" and outcome.position_mode == "long_only"
    payload = validate_signal_data(signal_payload(outcome, BEARISH))
    assert payload["position_size_percent"] is None  # nothing is shorted: the SELL exits
    short = review(BEARISH, ReviewConfig(position_mode="long_short"))
    assert signal_payload(short, BEARISH)["position_size_percent"] == 10.0


def test_long_only_sell_never_opens_a_short_at_the_broker_even_with_allow_short():
    limits = RiskSettings(allow_short=True)
    base = dict(symbol="AAPL", action="SELL", confidence=0.9, entry_price=100.0, atr=2.0, equity=100_000.0,
                prices={"AAPL": 100.0}, limits=limits)
    flat = assess(**base, positions={})
    assert not flat.approved and "never short" in flat.reason
    assert not assess(**base, positions={"AAPL": -10}).approved  # no adding to a short either
    closing = assess(**base, positions={"AAPL": 40})
    assert closing.approved and closing.side == "SELL" and closing.quantity == 40  # exit to flat, no more
    assert assess(**base, positions={}, position_mode="long_short").approved


def _failed_gate(evidence):
    out = copy.deepcopy(evidence)
    out["model"]["gate"] = {"passed": False, "enforced": True, "reason": "validation return -3.00% does not beat "
                            "buy-and-hold (+5.00%)", "source": "validation split"}
    return out


@pytest.mark.parametrize("evidence", [BULLISH, BEARISH])
def test_a_model_that_failed_the_gate_yields_the_benchmark_decision_labelled(evidence):
    failed = _failed_gate(evidence)
    outcome = review(failed, ReviewConfig())
    d = outcome.decision
    assert d.action == "BUY"  # the benchmark's position: buy-and-hold (long)
    assert d.rationale.startswith(NO_EDGE) and d.key_factors[0].startswith(NO_EDGE)
    payload = validate_signal_data(signal_payload(outcome, failed))
    assert payload["reasoning"].startswith(NO_EDGE)
    note = review_note("AAPL", d.model_dump(mode="json"), suggestion=failed["model"]["suggestion"], reviewer="rules",
                       fallback_reason=None, reports_tokens=False, usage={}, data={}, as_of="2021-12-31",
                       reproduce="", position_mode="long_only")
    assert NO_EDGE in note and "agreed" not in note


def test_a_passing_model_is_not_replaced():
    outcome = review(BULLISH, ReviewConfig())
    assert outcome.decision.action == "BUY" and not outcome.decision.rationale.startswith(NO_EDGE)
