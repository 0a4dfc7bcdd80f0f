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


def _universe(closes: dict[str, np.ndarray]) -> metalabel.UniverseLabels:
    dates = np.arange("2015-01-01", 800, dtype="datetime64[D]")[: max(len(c) for c in closes.values())]
    return metalabel.UniverseLabels({s: (dates[: len(c)], c) for s, c in closes.items()}, horizon=21)


def test_the_universe_prior_reads_no_symbol_after_the_decision_date():
    closes = {s: _close(seed=k) for k, s in enumerate(("AAA", "BBB", "CCC"))}
    r = 450
    date = np.arange("2015-01-01", 800, dtype="datetime64[D]")[r]
    before = _universe(closes).rate_at(date)
    scrambled = {s: c.copy() for s, c in closes.items()}
    for k, c in enumerate(scrambled.values()):  # every symbol's future, not only the decided one's
        c[r + 1:] = np.random.default_rng(k).permutation(c[r + 1:]) * 0.6
    after = _universe(scrambled).rate_at(date)
    assert before is not None and before.symbols == 3 and after == before
    rules = market_rules(closes["AAA"])
    rules[AGENT] = np.full(len(closes["AAA"]), np.nan)
    kwargs = dict(step=21, horizon=21, fee=0.001, periods_per_year=252.0, agent_allowed=True, seed=0)
    block = reviewer_block(rules, metalabel.feature_frame(closes["AAA"]), closes["AAA"], r, universe=before, **kwargs)
    again = reviewer_block(rules, metalabel.feature_frame(closes["AAA"]), closes["AAA"], r, universe=after, **kwargs)
    assert block == again and block["model"]["prior_source"] == "universe"
    assert _universe(scrambled).rate_at(date + 42) != _universe(closes).rate_at(date + 42)  # a later date sees it


def test_the_universe_prior_shrinks_a_symbol_towards_the_universe_rate_unless_symbols_really_differ():
    noisy = [np.r_[np.ones(150), np.zeros(100)], np.r_[np.ones(100), np.zeros(150)], np.r_[np.ones(125), np.zeros(125)]]
    same = metalabel.universe_rate(noisy, horizon=21)  # 0.6/0.4/0.5 over ~12 independent calls: noise
    assert same.between_variance == 0.0
    own = metalabel.prior_rate(noisy[0], horizon=21, universe=same)
    assert own == pytest.approx(metalabel.prior_rate(noisy[1], horizon=21, universe=same))  # all the way to the centre
    apart = [np.r_[np.ones(2400), np.zeros(100)], np.r_[np.ones(100), np.zeros(2400)]]  # 0.96 vs 0.04, long records
    wide = metalabel.universe_rate(apart, horizon=21)
    assert wide.between_variance > 0.1
    assert metalabel.prior_rate(apart[0], horizon=21, universe=wide) > 0.9  # a real difference is kept
    assert metalabel.universe_rate(noisy[:1], horizon=21) is None  # a universe of one: the symbol's own


def test_the_calibration_is_chosen_on_earlier_calls_and_an_old_reviewer_json_still_loads():
    block = _block(_close(), 500)
    model = block["model"]
    assert model["calibration"] in metalabel.CALIBRATIONS
    assert set(model["selection_brier"]) <= set(metalabel.CALIBRATIONS) and "base_rate" in model["selection_brier"]
    assert model["calibration"] == min(model["selection_brier"], key=lambda k: (model["selection_brier"][k],
                                                                                metalabel.CALIBRATIONS.index(k)))
    for kind in metalabel.CALIBRATIONS:  # every kind states a probability, the base rate exactly the prior
        fields = {**model, "calibration": kind}
        if kind == "isotonic" and not fields["iso_x"]:
            fields |= {"iso_x": [-1.0, 1.0], "iso_y": [0.4, 0.6]}
        p = metalabel.MetaLabeller.from_dict(fields).probability_up(block["inputs"])
        assert 0.05 <= p <= 0.95
        if kind == "base_rate":
            assert p == pytest.approx(model["prior"])
    old = {k: v for k, v in model.items() if k not in ("calibration", "iso_x", "iso_y", "selection_brier", "prior_source")}
    assert metalabel.MetaLabeller.from_dict(old).calibration == "platt"  # a reviewer.json from before the choice


def test_a_confidence_that_is_not_calibrated_says_so():
    d = review(_with_block(BULLISH, edge=False, edge_reason="", base_rate=None), ReviewConfig()).decision
    assert d.confidence == pytest.approx(0.5)
    from review_agents.decision_rule import NOT_CALIBRATED

    assert NOT_CALIBRATED in d.key_factors[-1] and NOT_CALIBRATED in d.rationale
    calibrated = review(_with_block(BULLISH, edge=False, edge_reason="", base_rate=0.57), ReviewConfig()).decision
    assert not any(NOT_CALIBRATED in f for f in calibrated.key_factors) and NOT_CALIBRATED not in calibrated.rationale


def test_a_train_run_without_reviewer_json_gets_a_calibrated_reviewer_fitted_at_inference():
    from tradeflow.decision_rules import INFERENCE_FITTED, fitted_reviewer, reviewer_at

    close = _close(700)
    fitted = {**fitted_reviewer(close, agent_exposure=None, step=21, horizon=21, fee=0.001, periods_per_year=252.0,
                                agent_allowed=False, seed=0), "fitted_at": INFERENCE_FITTED}
    assert fitted["model"] is not None and fitted["rule"] != AGENT
    evidence = copy.deepcopy(BEARISH)
    evidence["reviewer"] = reviewer_at(fitted, close, model_suggestion="SELL", periods_per_year=252.0)
    d = review(evidence, ReviewConfig()).decision
    expected = metalabel.MetaLabeller.from_dict(fitted["model"]).probability_right(evidence["reviewer"]["inputs"], d.action)
    assert d.confidence == pytest.approx(expected, abs=1e-4)
    assert any(f.startswith("reviewer fitted at inference") for f in d.key_factors)
