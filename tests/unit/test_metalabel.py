"""The meta-labelling reviewer and the served decision: no look-ahead, JSON round trip, labels."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from review_agents import review
from tests.unit.test_review_agents import BEARISH, BULLISH
from tradeflow import metalabel
from tradeflow.config import ReviewConfig
from tradeflow.decision_rules import AGENT, BENCHMARK, market_rules, reviewer_block, select
from tradeflow.positions import NO_EDGE, target_position



def _close(n: int = 700, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0.0004, 0.02, n)))


def _block(close: np.ndarray, r: int) -> dict:
    rules = market_rules(close)
    rules[AGENT] = np.full(len(close), np.nan)
    return reviewer_block(rules, metalabel.feature_frame(close), close, r, step=21, horizon=21, fee=0.001,
                          periods_per_year=252.0, agent_allowed=True, seed=0)


def test_scrambling_bars_after_a_date_leaves_the_reviewer_and_its_confidence_unchanged():
    close = _close()
    r = 450
    before = _block(close, r)
    scrambled = close.copy()
    scrambled[r + 1:] = np.random.default_rng(9).permutation(close[r + 1:]) * 1.7
    after = _block(scrambled, r)
    assert before["model"] is not None  # a fitted reviewer, not the fallback
    assert after == before
    p = metalabel.MetaLabeller.from_dict(before["model"]).probability_up(before["inputs"])
    assert p == metalabel.MetaLabeller.from_dict(after["model"]).probability_up(after["inputs"])
    assert _block(scrambled, r + 42) != _block(close, r + 42)  # a later date does see the change


def test_the_fitted_reviewer_round_trips_through_json_and_states_a_probability():
    import json

    block = _block(_close(), 500)
    loaded = metalabel.MetaLabeller.from_dict(json.loads(json.dumps(block["model"])))
    p = loaded.probability_up(block["inputs"])
    assert 0.05 <= p <= 0.95
    assert loaded.probability_right(block["inputs"], "SELL") == pytest.approx(1 - p)
    assert loaded.threshold in metalabel.THRESHOLDS


def test_too_few_closed_calls_fit_nothing():
    close = _close(120)
    X = metalabel.feature_frame(close).assign(proposed_long=1.0)
    forward = np.r_[close[21:] / close[:-21] - 1, [np.nan] * 21]
    assert metalabel.fit(X.iloc[:40], (forward[:40] > 0).astype(int), forward[:40], horizon=21) is None


def test_a_rule_is_served_only_when_it_beat_buy_and_hold_on_earlier_bars():
    rising = np.linspace(100, 300, 600)
    rule, edge, why, _ = select(market_rules(rising), rising, 500, 21, 0.001, 252.0)
    assert rule == BENCHMARK and not edge and "buy-and-hold" in why  # nothing beats holding a steady rise
    crash = np.r_[np.linspace(100, 200, 300), np.linspace(200, 60, 150), np.linspace(60, 90, 150)]
    rule, edge, why, _ = select(market_rules(crash), crash, 580, 21, 0.001, 252.0)
    assert edge and rule.startswith(("trend", "vol")) and "earlier bars" in why


def _with_block(evidence: dict, **block) -> dict:
    out = copy.deepcopy(evidence)
    out["reviewer"] = {"kind": "meta_label", "rule": "trend_sma200", "edge": True, "edge_reason": "trend: 1.2 vs 0.8",
                       "proposed": "SELL", "inputs": {"trend_20": -0.05}, "model": None, "base_rate": 0.3, **block}
    return out


@pytest.mark.parametrize("mode", ["long_only", "long_short"])
def test_the_served_decision_follows_the_reviewer_and_long_only_never_shorts(mode):
    config = ReviewConfig(position_mode=mode)
    exit_ = review(_with_block(BULLISH), config).decision  # P(exit right) 0.7 >= 0.5: the exit is taken
    assert exit_.action == "SELL" and exit_.confidence == pytest.approx(0.7)
    assert target_position(exit_.action, exit_.confidence, mode=mode, held=1.0) == (0.0 if mode == "long_only" else -1.0)
    kept = review(_with_block(BEARISH, base_rate=0.6), config).decision  # P(exit right) 0.4: stay long
    assert kept.action == "BUY" and kept.confidence == pytest.approx(0.6)
    no_edge = review(_with_block(BEARISH, edge=False, edge_reason="best trend_sma50: 0.1 vs 0.4"), config).decision
    assert no_edge.action == "BUY" and no_edge.rationale.startswith(NO_EDGE) and no_edge.key_factors[0].startswith(NO_EDGE)
    assert any("inputs: trend_20 -0.050" in f for f in no_edge.key_factors)  # the reviewer's inputs are shown


def test_an_llm_reviewer_sees_the_track_record_and_its_output_passes_the_same_calibration():
    from tests.unit.test_review_agents import ANALYST_REPLY, BUY_REPLY, RISK_REPLY, _replay

    evidence = _with_block(BULLISH, edge=False, edge_reason="best trend_sma50: 0.1 vs 0.4", base_rate=0.58)
    client = _replay(ANALYST_REPLY, RISK_REPLY, BUY_REPLY)  # the LLM says BUY at 0.72
    outcome = review(evidence, ReviewConfig(provider="openai", model="replay"), client=client)
    task = client.create_calls[0]["messages"][1].content
    assert '"reviewer":' in task and "best trend_sma50" in task  # the track record is in its evidence
    d = outcome.decision
    assert d.action == "BUY" and d.confidence == pytest.approx(0.58)  # the calibrated probability, not 0.72
    assert d.rationale.startswith(NO_EDGE)
