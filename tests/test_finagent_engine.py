"""engine=finagent: the adapter, the calibration, the evidence and the review's forecaster role.

CI has no upstream: most tests drive the adapter through the interface double in
``tests/support/finagent_stub`` (``FINAGENT_BACKEND``), including its failure modes (upstream raises,
returns junk, tries the network). ``-m finagent_upstream`` tests use the real upstream that
``scripts/install_finagent.sh`` installs into ``.venv-fa`` and skip with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import DJ30_SOURCE, REPO, require_shared_data
from tradeflow.config import ConfigError, resolve_config
from tradeflow.engines import EngineUnavailable
from tradeflow.engines.finagent import compat

STUB_BACKEND = REPO / "tests" / "support" / "finagent_stub" / "src" / "backend"


def _reset_upstream() -> None:
    compat._once.reset()


@pytest.fixture
def stub(monkeypatch):
    """The interface double as 'upstream' (imported through the real adapter)."""
    monkeypatch.setenv(compat.ENV_BACKEND, str(STUB_BACKEND))
    monkeypatch.delenv("FINAGENT_STUB_MODE", raising=False)
    _reset_upstream()
    upstream = compat.import_finagent()
    yield upstream
    _reset_upstream()


def _bars(n: int = 420, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0005, 0.015, n)))
    open_ = close * (1 + rng.normal(0, 0.004, n))
    return pd.DataFrame({
        "date": pd.bdate_range("2020-01-01", periods=n),
        "open": open_, "high": np.maximum(open_, close) * 1.006, "low": np.minimum(open_, close) * 0.994,
        "close": close, "adjcp": close, "volume": np.nan,
    })


def _cfg(**layer):
    return resolve_config({"symbol": "TEST", "engine": "finagent", "data_source": "synthetic", **layer})


def _splits(bars: pd.DataFrame, cfg):
    from tradeflow.features import compute_features, split_for_run

    return split_for_run(compute_features(bars), cfg)


# --- mapping -------------------------------------------------------------------------------------


def _analysis(ema="neutral", rsi="neutral", macd="bullish", stoch="neutral", adx="bullish_trend") -> dict:
    return {"indicators": {"ema": {"signal": ema}, "rsi": {"signal": rsi}, "macd": {"trend": macd},
                           "stochastics": {"signal": stoch}, "adx": {"trend_direction": adx}}}


def test_votes_probability_and_rating_follow_upstreams_rule():
    from tradeflow.engines.finagent.rule import (
        UPSTREAM_BUY, UPSTREAM_SELL, UPSTREAM_WEIGHTS, Calibration, probability, rating_for, votes_from_analysis)

    votes = votes_from_analysis(_analysis(ema="bullish", rsi="overbought", stoch="oversold"))
    assert votes == {"ema": 1, "rsi": -1, "macd": 1, "stochastics": 1, "adx": 1}
    # upstream: score 3 of 5 -> 0.5 + 0.5 * 3/5 = 0.8 -> buy
    assert probability(votes, UPSTREAM_WEIGHTS) == pytest.approx(0.8)
    assert rating_for(0.8, UPSTREAM_BUY, UPSTREAM_SELL) == "buy"
    assert rating_for(0.6, UPSTREAM_BUY, UPSTREAM_SELL) == "hold"
    assert rating_for(0.3, UPSTREAM_BUY, UPSTREAM_SELL) == "sell"
    weights = {"ema": 0, "rsi": 2, "macd": 0, "stochastics": 0, "adx": 0}
    assert probability(votes, weights) == 0.0  # only the overbought RSI counts
    long_only, short = Calibration(weights, 0.6, 0.4), Calibration(weights, 0.6, 0.4, allow_short=True)
    assert [long_only.target(r, 1, 2) for r in ("buy", "sell", "hold")] == [2, 0, 1]
    assert [short.target(r, 1, 2) for r in ("buy", "sell", "hold")] == [2, -2, 1]


@pytest.mark.parametrize("junk, fragment", [
    ("not a dict", "is a str, not a dict"),
    ({"ticker_symbol": "X", "error": "No data found", "analysis": {}}, "reports an error: No data found"),
    ({"ticker_symbol": "X"}, "no 'indicators' object"),
    (_analysis(macd="up"), "indicators.macd.trend is 'up'"),
    ({"indicators": {**_analysis()["indicators"], "adx": 3}}, "indicators.adx.trend_direction is None"),
])
def test_junk_analysis_is_rejected_with_the_field(junk, fragment):
    from tradeflow.engines.finagent.rule import UpstreamOutputError, votes_from_analysis

    with pytest.raises(UpstreamOutputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        votes_from_analysis(junk)


def test_vectorised_calibration_matches_the_agent_rule():
    from tradeflow.engines.finagent.rule import SIGNALS, Calibration, Candidate, positions_for, probability, rating_for

    rng = np.random.default_rng(1)
    votes = rng.integers(-1, 2, size=(60, len(SIGNALS))).astype(float)
    candidates = [Candidate((1, 1, 1, 1, 1), 0.66, 0.33), Candidate((2, 0, 1, 0, 1), 0.55, 0.45),
                  Candidate((0, 0, 0, 0, 1), 0.85, 0.15)]
    for allow_short in (False, True):
        matrix = positions_for(votes, candidates, allow_short=allow_short)
        for k, c in enumerate(candidates):
            rule = Calibration(dict(zip(SIGNALS, c.weights)), c.buy, c.sell, allow_short)
            held, expected = 0, []
            for row in votes:
                prob = probability(dict(zip(SIGNALS, row.astype(int))), rule.weights)
                held = rule.target(rating_for(prob, c.buy, c.sell), held, 1)
                expected.append(held)
            assert matrix[:, k].tolist() == expected


# --- the adapter on the interface double ----------------------------------------------------------


def test_without_upstream_the_engine_is_unavailable_with_the_install_command(monkeypatch):
    from tradeflow.engines import get_engine

    monkeypatch.delenv(compat.ENV_BACKEND, raising=False)
    monkeypatch.setattr(sys, "prefix", "/nonexistent-venv")
    _reset_upstream()
    with pytest.raises(EngineUnavailable, match="bash scripts/install_finagent.sh"):
        get_engine("finagent")
    monkeypatch.setenv(compat.ENV_BACKEND, "/nonexistent/src/backend")
    with pytest.raises(EngineUnavailable, match="holds no agents/technical_analysis.py"):
        get_engine("finagent")
    _reset_upstream()


def test_import_restores_the_environment_and_hides_upstreams_flat_modules(stub):
    assert stub.origin == str(STUB_BACKEND) and stub.commit == compat.UPSTREAM_COMMIT
    assert "agents" not in sys.modules and "agents.technical_analysis" not in sys.modules
    assert str(STUB_BACKEND) not in sys.path


def test_upstream_gets_exactly_our_window_no_look_ahead(stub):
    from tradeflow.engines.finagent.analyst import FinAgentAnalyst, vote_matrix

    bars = _bars(120)
    stub.technical_module.CALLS.clear()
    votes = vote_matrix(FinAgentAnalyst(stub, "TEST"), bars, 60)
    calls = stub.technical_module.CALLS
    assert votes.shape == (61, 5) and len(calls) == 61
    # the k-th decision saw the 60 bars ending at bar 59 + k, never a later one
    assert [c[2] for c in calls] == list(pd.to_datetime(bars["date"]).iloc[59:])
    assert {c[1] for c in calls} == {60}
    with pytest.raises(RuntimeError, match="was not replaced"):  # outside the adapter it is not fed
        stub.technical_module.yfUtils.get_stock_data("X", "a", "b")


@pytest.mark.parametrize("mode, error, fragment", [
    ("raise", "UpstreamFailed", "TEST: upstream FinAgent technical analysis raised ValueError: stub upstream failure"),
    ("junk", "UpstreamOutputError", "indicators.ema.signal is 'sideways'"),
    ("network", "UpstreamNetworkBlocked", "network access blocked while upstream FinAgent runs"),
])
def test_upstream_failure_modes_fail_clearly_and_leave_the_process_intact(stub, monkeypatch, mode, error, fragment):
    from tradeflow.engines.finagent import analyst as finagent_analyst
    from tradeflow.engines.finagent import rule

    exc_type = getattr(finagent_analyst, error, None) or getattr(rule, error, None) or getattr(compat, error)
    monkeypatch.setenv("FINAGENT_STUB_MODE", mode)
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo
    with pytest.raises(exc_type, match=fragment):
        finagent_analyst.FinAgentAnalyst(stub, "TEST").analyse(_bars(80))
    assert socket.socket.connect is connect and socket.getaddrinfo is getaddrinfo  # guard undone
    with pytest.raises(RuntimeError, match="was not replaced"):  # the price helper is upstream's again
        stub.technical_module.yfUtils.get_stock_data("X", "a", "b")


def test_training_fails_before_work_on_a_short_split(stub):
    from tradeflow.engines.finagent.engine import FinAgentEngine

    cfg = _cfg()
    with pytest.raises(ValueError, match="train split has .* rows; engine finagent needs at least 80"):
        FinAgentEngine(stub).train(_splits(_bars(140), cfg), cfg, workdir=Path("/tmp/unused"))


def test_calibration_is_deterministic_walk_forward_and_round_trips(stub, tmp_path):
    from tradeflow.engines.finagent.engine import FinAgentEngine
    from tradeflow.engines.finagent.agent import CONFIG_FILE, FinAgentAgent
    from tradeflow.engines.finagent.rule import candidate_grid
    from tradeflow.features import with_history

    cfg = _cfg(finagent={"top_k": 5, "lookback_bars": 40})
    splits = _splits(_bars(260), cfg)
    engine = FinAgentEngine(stub)
    first = engine.train(splits, cfg, workdir=tmp_path / "a")
    again = engine.train(splits, cfg, workdir=tmp_path / "b")
    assert first.agent.config_package() == again.agent.config_package()  # same data -> same calibration
    assert len(first.learning_curve) == 5 and 1 <= first.best_epoch <= 5
    # walk-forward: the kept rule is the best of the train shortlist on valid
    best = first.learning_curve[first.best_epoch - 1]
    assert best["valid_sharpe"] == max(row["valid_sharpe"] for row in first.learning_curve)
    assert [r["train_sharpe"] for r in first.learning_curve] == sorted(
        (r["train_sharpe"] for r in first.learning_curve), reverse=True)
    extra = first.extra_metrics
    assert extra["calibration_candidates"] == len(candidate_grid())
    assert {"upstream_rule_valid_sharpe", "upstream_rule_test_total_return"} <= set(extra)

    package = json.loads((tmp_path / "a" / "agent" / CONFIG_FILE).read_text())
    assert package["upstream"]["commit"] == compat.UPSTREAM_COMMIT and package["window"] == 40
    assert package["upstream"]["implementation"] == "test_double"  # measured, not the interface's commit
    loaded = FinAgentAgent.load(tmp_path / "a" / "agent", stub)
    frame = with_history(splits.valid, splits.test, 40)
    result = engine.backtest(loaded, frame, cfg)
    original = engine.backtest(first.agent, frame, cfg)
    assert result.metrics == original.metrics
    assert len(result.table) == len(splits.test) and "benchmark" in result.table


def test_act_maps_the_rating_to_a_target_position(stub):
    from tradeflow.engines.finagent.agent import FinAgentAgent
    from tradeflow.engines.finagent.analyst import FinAgentAnalyst
    from tradeflow.engines.finagent.rule import Calibration

    window = _bars(60)[["open", "high", "low", "close"]].to_numpy()
    always_buy = FinAgentAgent(FinAgentAnalyst(stub), Calibration({s: 1.0 for s in
                               ("ema", "rsi", "macd", "stochastics", "adx")}, 0.0, -1.0), window=60, max_volume=2)
    result = always_buy.act(window, position=0.0)
    assert result.action == 2 and set(result.scores) == {2, 0}
    never = FinAgentAgent(FinAgentAnalyst(stub), Calibration(always_buy.calibration.weights, 2.0, -1.0),
                          window=60, max_volume=2)
    assert never.act(window, position=0.5).action == 1  # hold keeps the held position
    with pytest.raises(ValueError, match=r"shape \(60, 4\)"):
        never.act(window[:10])


# --- config and evidence -------------------------------------------------------------------------


def test_config_names_the_finagent_model_and_its_params():
    cfg = _cfg(finagent_lookback_bars="90", finagent_allow_short="true")
    assert cfg.registered_model_name == "finagent_TEST"
    assert cfg.finagent.lookback_bars == 90 and cfg.finagent.allow_short is True
    assert resolve_config({"symbol": "TEST"}).registered_model_name == "builtin_TEST"
    with pytest.raises(ConfigError, match="finagent.lookback_bars"):
        _cfg(finagent={"lookback_bars": 10})


def test_review_adds_the_forecaster_on_upstreams_prompt(stub):
    from review_agents import review
    from review_agents.prompts import extract_evidence
    from tradeflow.config import ReviewConfig
    from tradeflow.engines.finagent.agent import FinAgentAgent, review_evidence
    from tradeflow.engines.finagent.analyst import FinAgentAnalyst
    from tradeflow.engines.finagent.rule import Calibration
    from tradeflow.evidence import build_evidence

    bars = _bars(120)
    agent = FinAgentAgent(FinAgentAnalyst(stub, "TEST"), Calibration.upstream_default(), window=60, max_volume=1)
    section, prompts = review_evidence(agent, bars.tail(60))
    evidence = build_evidence(symbol="TEST", bars=bars, bar_size="1 day", periods_per_year=252,
                              model={"engine": "finagent", "target_position": 0,
                                     "suggestion": {"buy": "BUY", "sell": "SELL"}.get(section["calibrated"]["rating"], "HOLD")},
                              training_run={"metrics": {}}, data={"source": "test", "rows": 120})
    evidence.update(finagent=section, prompts=prompts)
    assert prompts["forecaster"]["text"].startswith("STUB FORECASTER PROMPT")
    # the double is named as what produced the prompt, never upstream's repository and commit
    assert prompts["forecaster"]["source"].startswith("test double tests/support/finagent_stub/src/backend (NOT upstream")
    assert prompts["forecaster"]["source"].endswith(":agents/forecaster.py:analyze_and_predict")

    outcome = review(evidence, ReviewConfig())
    agents = [line["agent"] for line in outcome.transcript]
    assert agents[:5] == ["user", "forecaster", "technical_analyst", "risk_reviewer", "decision_maker"]
    task = outcome.transcript[0]["content"]
    assert "STUB FORECASTER PROMPT" not in task and extract_evidence(task)["finagent"]["analysis"]
    forecast = outcome.transcript[1]["content"]
    rating = section["calibrated"]["rating"].upper()
    assert f"calibrated rule gives {section['calibrated']['probability']}" in forecast
    assert forecast.endswith(f"Forecast: {rating}")
    assert outcome.fallback_reason is None and outcome.decision.action in ("BUY", "SELL", "HOLD")

    plain = review({k: v for k, v in evidence.items() if k not in ("finagent", "prompts")}, ReviewConfig())
    assert "forecaster" not in [line["agent"] for line in plain.transcript]


# --- provenance: what ran is measured against the install's digest manifest -----------------------


def test_the_double_is_recorded_as_a_test_double_and_a_copy_elsewhere_as_unverified(stub, tmp_path, monkeypatch):
    import shutil

    prov = stub.provenance
    assert prov.implementation == "test_double" and not prov.verified
    assert "NOT upstream akshata29/finagent@aa7fe01525fe" in prov.label and "\n" not in prov.label
    assert get_engine_provenance("finagent").label == prov.label  # what the train run tags
    # the same files outside tests/support: not upstream (they do not match the manifest), not a double
    copy = tmp_path / "elsewhere"
    shutil.copytree(STUB_BACKEND.parent.parent, copy)
    monkeypatch.setenv(compat.ENV_BACKEND, str(copy / "src" / "backend"))
    _reset_upstream()
    moved = compat.import_finagent().provenance
    assert moved.implementation == "unverified" and "does not match finagent-aa7fe01.sha256" in moved.label
    assert "changed: src/backend/agents/forecaster.py" in moved.label


def get_engine_provenance(name):
    from tradeflow.engines import get_engine

    return get_engine(name).provenance()


def test_the_manifest_is_the_pinned_commits_export():
    """Every path the install exports (src/backend, LICENSE) is listed once with a sha256."""
    from tradeflow.engines.provenance import read_manifest

    entries = read_manifest(compat.MANIFEST)
    assert compat.MANIFEST.name == f"finagent-{compat.UPSTREAM_COMMIT[:7]}.sha256"
    assert "src/backend/agents/technical_analysis.py" in entries and "LICENSE" in entries
    assert all(len(d) == 64 for d in entries.values()) and all(p.startswith(("src/backend/", "LICENSE")) for p in entries)


# --- the real upstream (scripts/install_finagent.sh; skipped elsewhere) ---------------------------


def _real_upstream():
    if os.environ.get(compat.ENV_BACKEND):
        pytest.skip(f"{compat.ENV_BACKEND} is set: not testing the installed upstream")
    _reset_upstream()
    reason = compat.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return compat.import_finagent()


@pytest.mark.finagent_upstream
def test_real_upstream_rating_is_reproduced_offline_on_dj30(tmp_path):
    require_shared_data()
    upstream = _real_upstream()
    from tradeflow.data import load_market_data
    from tradeflow.engines.finagent.analyst import FinAgentAnalyst
    from tradeflow.engines.finagent.rule import (
        UPSTREAM_BUY, UPSTREAM_SELL, UPSTREAM_WEIGHTS, probability, rating_for, votes_from_analysis)

    assert "config" not in sys.modules and "agents" not in sys.modules
    prov = upstream.provenance  # the installed tree, verified file by file against the manifest
    assert prov.implementation == "upstream" and prov.verified and prov.files >= 40, prov.label
    assert upstream.ta_version == "0.11.0"
    bars = load_market_data(resolve_config({"symbol": "AAPL", "data_source": DJ30_SOURCE})).bars
    analyst = FinAgentAnalyst(upstream, "AAPL")
    ratings = set()
    for end in range(80, len(bars), 40):
        analysis = analyst.analyse(bars.iloc[end - 60:end])
        prob = probability(votes_from_analysis(analysis), UPSTREAM_WEIGHTS)
        assert round(prob, 3) == analysis["final_decision"]["probability"]
        assert rating_for(prob, UPSTREAM_BUY, UPSTREAM_SELL) == analysis["final_decision"]["rating"]
        assert analysis["indicators"]["close_price"] == pytest.approx(bars["close"].iloc[end - 1])
        ratings.add(analysis["final_decision"]["rating"])
    assert len(ratings) >= 2, ratings  # the rule moves with the data
    prompt = analyst.forecaster_prompt(analysis)
    assert "Probability & Confidence" in prompt and "final_decision" in prompt
