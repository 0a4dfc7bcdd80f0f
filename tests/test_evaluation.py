"""``evaluate``: walk-forward decisions without look-ahead, every policy on a tiny universe,
determinism with a seed, and the do-no-harm gate from training to the reviewed decision."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DJ30_SOURCE, mlflow_run, require_shared_data
from tradeflow.config import resolve_config
from tradeflow.evaluation import WalkForwardSpec, decide, evaluate_symbol
from tradeflow.evaluation.policies import random_policy
from tradeflow.gate import GATE_CONFIDENCE_CAP, cap_confidence, check_gate, decide_alias
from tradeflow.positions import NO_EDGE

#: a tiny walk-forward: 4 rebalances a month apart, 2 refits, 1 epoch each
TINY = WalkForwardSpec(min_train=150, step=21, horizon=10, refit_every=2, random_seeds=(0, 1))
TINY_END = "2021-01-14"  # 233 feature rows of the dj30 data: 4 rebalances after 150 training rows


def _cfg(symbol: str = "AAPL", **extra):
    return resolve_config({"symbol": symbol, "data_source": DJ30_SOURCE, "epochs": 1, **extra})


@pytest.fixture(scope="module")
def aapl_bars():
    require_shared_data()
    from tradeflow.data import load_market_data

    cfg = resolve_config({"symbol": "AAPL", "data_source": DJ30_SOURCE, "end_date": TINY_END})
    return load_market_data(cfg).bars


@pytest.fixture(scope="module")
def aapl_result(aapl_bars):
    return evaluate_symbol(_cfg(), aapl_bars, TINY)


# --- the gate, as pure rules -------------------------------------------------------------------

def test_gate_passes_only_a_model_beating_buy_and_hold_and_flat():
    assert check_gate({"total_return": 0.05, "benchmark_total_return": 0.02}).passed
    lost_to_hold = check_gate({"valid_total_return": 0.05, "valid_benchmark_total_return": 0.10})
    assert not lost_to_hold.passed and "buy-and-hold (+10.00%)" in lost_to_hold.reason
    lost_to_flat = check_gate({"total_return": -0.01, "benchmark_total_return": -0.05})
    assert not lost_to_flat.passed and "flat" in lost_to_flat.reason and "buy-and-hold" not in lost_to_flat.reason
    with pytest.raises(ValueError, match="total_return"):
        check_gate({"benchmark_total_return": 0.1})


def test_alias_moves_only_to_a_passing_version_that_beats_the_champion_on_the_same_window():
    passing = check_gate({"total_return": 0.08, "benchmark_total_return": 0.02})
    failing = check_gate({"total_return": -0.02, "benchmark_total_return": 0.02})
    assert decide_alias(failing, -0.02, None) == (False, f"not moved: failed the do-no-harm gate ({failing.reason})")
    assert decide_alias(passing, 0.08, None)[0] is True
    assert decide_alias(passing, 0.08, 0.05)[0] is True
    move, reason = decide_alias(passing, 0.08, 0.12)
    assert move is False and "does not beat the champion's +12.00%" in reason
    assert decide_alias(failing, -0.02, 0.5, enforced=False) == (True, "moved: do-no-harm gate disabled")


def test_confidence_is_capped_only_for_an_enforced_failed_gate():
    failed = {"passed": False, "enforced": True, "reason": "validation return -3.00% does not beat flat (+0.00%)"}
    capped, note = cap_confidence(0.8, failed)
    assert capped == GATE_CONFIDENCE_CAP and note.startswith("model_failed_gate: validation return -3.00%")
    assert cap_confidence(0.8, {**failed, "enforced": False}) == (0.8, None)
    assert cap_confidence(0.8, {"passed": None, "enforced": True, "reason": "not checked"}) == (0.8, None)
    assert cap_confidence(0.8, {"passed": True, "enforced": True}) == (0.8, None)


# --- walk-forward -----------------------------------------------------------------------------

def test_every_policy_decides_on_the_same_dates_with_the_same_accounting(aapl_result):
    table = aapl_result.decisions.table
    assert len(table) == 4 and table["date"].is_monotonic_increasing
    assert list(aapl_result.metrics) == TINY.policies()
    assert set(table["reviewed_action"]) <= {"BUY", "SELL", "HOLD"}
    assert table["reviewed_confidence"].between(0, 1).all()
    assert set(table["pos_agent_dqn"]) <= {0, 1}  # long_only (the default): never a short
    positions = table[[c for c in table.columns if c.startswith("pos_")]]
    assert (positions >= 0).all().all(), "long_only produced a short position"
    assert set(table["reviewed_rule"]) <= {"benchmark", "agent", "trend_sma50", "trend_sma200", "vol_filter"}
    assert (table["pos_buy_and_hold"] == 1).all() and (table["pos_flat"] == 0).all()
    assert [f["refit_date"] for f in aapl_result.decisions.folds] == [f"{d:%Y-%m-%d}" for d in table["date"].iloc[[0, 2]]]

    ledgers, metrics = aapl_result.ledgers, aapl_result.metrics
    for policy, ledger in ledgers.items():  # one ledger per policy, all on the same bars
        assert ledger["date"].equals(ledgers["flat"]["date"]), policy
    assert metrics["flat"]["total_return"] == 0.0 and metrics["flat"]["num_trades"] == 0
    hold = ledgers["buy_and_hold"]
    gross = hold["price"].iloc[-1] / hold["price"].iloc[0] - 1
    assert metrics["buy_and_hold"]["total_return"] == pytest.approx(gross, abs=0.002)  # one entry fee
    assert metrics["buy_and_hold"]["num_trades"] == 1
    for policy, m in metrics.items():
        for key in ("total_return", "annualised_return", "sharpe", "sortino", "max_drawdown", "turnover"):
            assert np.isfinite(m[key]), (policy, key)
    assert 0 <= metrics["reviewed"]["brier"] <= 1
    assert metrics["random_s0"] != metrics["random_s1"]


def test_sma_crossover_and_random_policies_follow_their_definitions(aapl_bars, aapl_result):
    table = aapl_result.decisions.table
    close = aapl_bars.set_index("date")["close"]
    for date, position in zip(table["date"], table["pos_sma_crossover"]):
        history = close.loc[:date]
        assert position == int(history.tail(20).mean() > history.tail(50).mean())
    again = random_policy(len(table), 1, seed=0, symbol="AAPL", long_only=True)  # long_only: 0 or 1
    assert (table["pos_random_s0"].to_numpy() == again).all()
    assert not (random_policy(200, 1, seed=0, symbol="AAPL") == random_policy(200, 1, seed=0, symbol="MSFT")).all()


def test_hit_rate_counts_directional_calls_against_the_next_k_bars(aapl_bars, aapl_result):
    table = aapl_result.decisions.table
    close = aapl_bars.set_index("date")["close"]
    dates = list(close.index)
    expected = []
    for date, position in zip(table["date"], table["pos_buy_and_hold"]):
        ahead = dates.index(date) + TINY.horizon
        if ahead < len(dates):
            expected.append(position * (close.iloc[ahead] / close.loc[date] - 1) > 0)
    assert aapl_result.metrics["buy_and_hold"]["hit_rate"] == pytest.approx(np.mean(expected))


def test_scrambling_future_bars_leaves_past_decisions_unchanged(aapl_bars, aapl_result):
    """No look-ahead: shuffle every bar after the third decision; the first three must not move."""
    before = aapl_result.decisions.table
    cut = before["date"].iloc[2]
    future = aapl_bars.index[aapl_bars["date"] > cut]
    rng = np.random.default_rng(7)
    scrambled = aapl_bars.copy()
    values = ["open", "high", "low", "close", "adjcp", "volume"]
    scrambled.loc[future, values] = aapl_bars.loc[rng.permutation(future), values].to_numpy() * 1.3
    after = decide(_cfg(), scrambled, TINY).table
    assert not np.allclose(after["close"].iloc[3:], before["close"].iloc[3:])  # the future did change
    past_before = before.iloc[:3].drop(columns=["forward_return"])
    pd.testing.assert_frame_equal(after.iloc[:3], past_before)


def test_a_failed_gate_never_serves_the_agent_in_the_walk_forward(aapl_bars, monkeypatch):
    """With a margin no model can clear, nothing passes: the agent's calls are never served (the
    benchmark, or a rule that beat it on earlier bars, is)."""
    monkeypatch.setattr("tradeflow.gate.GATE_MARGIN", 10.0)
    table = decide(_cfg(), aapl_bars, TINY).table
    assert not table["served_gate_passed"].any()
    assert (table["reviewed_rule"] != "agent").all()
    assert (table.loc[table["reviewed_rule"] == "benchmark", "reviewed_action"] == "BUY").all()


def test_long_short_is_a_choice_and_then_sells_can_short(aapl_bars):
    table = decide(_cfg(position_mode="long_short"), aapl_bars, TINY).table
    assert set(table["pos_random_s0"]) <= {-1, 0, 1} and table["reviewed_confidence"].between(0, 1).all()


def test_evaluate_reads_its_own_window_and_refuses_past_the_cap(aapl_bars):
    from tradeflow.data.base import DataError
    from tradeflow.evaluation.walkforward import MAX_EVALUATE_DAYS, evaluation_window

    later = evaluation_window(aapl_bars, WalkForwardSpec(start_date="2020-06-01"), symbol="AAPL")
    assert later["date"].min() >= pd.Timestamp("2020-06-01") and later["date"].max() == aapl_bars["date"].max()
    old = aapl_bars.copy()
    old.loc[0, "date"] = aapl_bars["date"].max() - pd.Timedelta(days=MAX_EVALUATE_DAYS + 1)
    with pytest.raises(DataError, match="beyond evaluate's cap"):
        evaluation_window(old, WalkForwardSpec(), symbol="AAPL")


# --- the entry point ----------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_entry_point_is_deterministic_and_reports_parent_and_children(tracking_store):
    """The real ``mlflow run -e evaluate`` twice with the same seed: same figures; one parent run,
    a child per symbol, the report and plots as artifacts."""
    require_shared_data()
    params = {"symbols": "AAPL,KO", "epochs": "1", "min_train": "150", "refit_every": "4", "random_seeds": "0,1",
              "end_date": TINY_END, "seed": "7"}
    client = MlflowClient()
    summaries = []
    for _ in range(2):
        result = mlflow_run("evaluate", params)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "evaluate: 2 symbols" in result.stdout
        parent = client.search_runs(["1"], "tags.`tradeflow.stage` = 'evaluate'", order_by=["attributes.start_time DESC"])[0]
        assert parent.info.status == "FINISHED"
        summaries.append(json.loads(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/summary.json")))
    children = client.search_runs(["1"], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["tradeflow.symbol"] for c in children) == ["AAPL", "KO"]
    assert all(c.info.status == "FINISHED" and "reviewed_sharpe" in c.data.metrics for c in children)
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/universe_table.csv", "report/folds.csv"} <= files
    plots = {f.path for f in client.list_artifacts(parent.info.run_id, "report/plots")}
    assert plots == {f"report/plots/{n}.png" for n in ("sharpe_by_policy", "equity_curves", "reliability")}
    assert "reviewed_vs_buy_and_hold_median_sharpe_difference" in parent.data.metrics
    first, second = (json.dumps({k: v for k, v in s.items() if k not in ("run_id", "seconds")}, sort_keys=True)
                     for s in summaries)  # compared as text: NaN (no directional calls) != NaN as floats
    assert first == second


def test_evaluate_refuses_bad_parameters_before_any_work(tracking_store, capsys):
    from entrypoints.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--symbols", "AAPL", "--step", "0"])
    assert exit_info.value.code == 2
    assert "evaluate: step must be >= 1 bar, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--symbols", "AAPL,bad sym"])
    assert "invalid parameter 'symbol'" in capsys.readouterr().err
    assert MlflowClient().search_runs(["1"]) == []


# --- the gate in the registry, inference and review -------------------------------------------

@pytest.mark.slow
def test_a_model_that_loses_on_validation_gets_no_alias_and_a_capped_labelled_decision(tracking_store, monkeypatch):
    """train (fails the gate) -> no alias, inference serves it labelled, the review serves the benchmark, labelled;
    train (passes) -> champion; train again (passes, but no better on the same window) -> alias stays."""
    require_shared_data()
    from tradeflow.model import resolve_model
    from tradeflow.steps.inference import inference_step, training_context
    from tradeflow.steps.review import review_step
    from tradeflow.steps.train_backtest import train_backtest_step

    client = MlflowClient()
    cfg = resolve_config({"symbol": "KO", "data_source": DJ30_SOURCE, "epochs": 1})
    name = cfg.registered_model_name

    monkeypatch.setattr("tradeflow.gate.GATE_MARGIN", 10.0)  # no model beats buy-and-hold by 1000%
    first = train_backtest_step(cfg)
    version = client.get_model_version(name, first["model_version"])
    assert version.tags["tradeflow.gate"] == "failed" and "does not beat buy-and-hold" in version.tags["tradeflow.gate_reason"]
    assert version.tags["tradeflow.alias_decision"].startswith("not moved: failed the do-no-harm gate")
    assert {"engine", "algorithm", "data_window", "valid_window"} <= set(version.tags)
    assert client.get_registered_model(name).aliases == {}

    resolved = resolve_model(cfg, None)  # no champion: the newest version serves, labelled
    assert resolved.version == first["model_version"] and "no version of builtin_KO passed" in resolved.gate_note
    served = inference_step(cfg, resolved, training_context(resolved.training_run_id))
    evidence = json.loads(mlflow.artifacts.load_text(served["evidence_uri"]))
    assert evidence["model"]["gate"]["passed"] is False and evidence["model"]["gate"]["enforced"] is True
    assert client.get_run(served["run_id"]).data.tags["tradeflow.gate"] == "failed"
    reviewed = review_step(cfg, evidence, served["evidence_uri"])
    assert reviewed["action"] == "BUY"  # the benchmark's position, not the failed model's call
    decision = json.loads(mlflow.artifacts.load_text(f"runs:/{reviewed['run_id']}/decision.json"))
    assert decision["decision"]["rationale"].startswith(NO_EDGE)
    assert any(note.startswith("model_failed_gate:") for note in decision["guardrail_notes"])
    assert any(note.startswith("no_edge_benchmark:") for note in decision["guardrail_notes"])
    note = client.get_run(reviewed["run_id"]).data.tags["mlflow.note.content"]
    assert NO_EDGE in note and "agreed" not in note

    monkeypatch.setattr("tradeflow.gate.GATE_MARGIN", -10.0)  # everything passes
    second = train_backtest_step(cfg)
    assert client.get_registered_model(name).aliases == {"champion": int(second["model_version"])}
    third = train_backtest_step(cfg)  # same data and seed: passes, but does not beat the champion
    alias_decision = client.get_model_version(name, third["model_version"]).tags["tradeflow.alias_decision"]
    assert alias_decision.startswith("not moved: passed the gate but")
    assert client.get_registered_model(name).aliases == {"champion": int(second["model_version"])}
    assert client.get_run(third["run_id"]).data.tags["tradeflow.serving_model"] == f"models:/{name}/{second['model_version']}"
