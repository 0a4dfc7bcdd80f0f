"""``train_backtest`` end to end on the real shared data, through the real ``mlflow run`` CLI."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import BTC_CSV, DJ30_SOURCE, mlflow_run, require_shared_data
# Imported at collection: a pyfunc load in a test below puts the model's copy of tradeflow first on
# sys.path, and a tradeflow first imported after that would be the copy (no MLproject beside it).
from tradeflow.config import resolve_config
from tradeflow.runs.records import Tag

pytestmark = pytest.mark.slow

HEADLINE_METRICS = (
    "total_return", "annualised_return", "annualised_volatility", "sharpe", "sortino", "calmar",
    "max_drawdown", "win_rate", "num_trades", "turnover", "exposure",
)
FAST = {"epochs": "1", "hidden_dims": "32,32"}


def _finished_run(client: MlflowClient, stage: str = "train_backtest"):
    runs = client.search_runs(client.get_experiment_by_name("trademaster_autogen").experiment_id,
                              filter_string=f"tags.`tradeflow.stage` = '{stage}'")
    assert runs, f"no {stage} run recorded"
    return runs[0]


@pytest.mark.parametrize(
    ("symbol", "source", "extra"),
    [
        ("BTC", f"csv:{BTC_CSV}", {"backtest_lookback_days": "900"}),
        ("AAPL", DJ30_SOURCE, {}),
    ],
    ids=["btc", "dj30-aapl"],
)
def test_mlflow_run_train_backtest_on_real_data(tracking_store, symbol, source, extra):
    require_shared_data()
    result = mlflow_run("train_backtest", {"symbol": symbol, "data_source": source, **FAST, **extra})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{symbol}: test total return" in result.stdout

    client = MlflowClient()
    run = _finished_run(client)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics

    # lineage: entry point, params as given, git commit, the data and its digest
    assert tags["mlflow.project.entryPoint"] == "train_backtest"
    assert tags.get("mlflow.source.git.commit")
    assert params["symbol"] == symbol and params["data_source"] == source
    assert params["cfg.trademaster.epochs"] == "1" and params["cfg.engine"] == "builtin" and params["cfg.seed"] == "42"
    assert params["data.train.rows"] and params["data.test.start"]
    assert tags["tradeflow.synthetic_data"] == "false"
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == tags["tradeflow.data_digest"][: len(inputs[0].dataset.digest)]

    for split in ("train", "valid", "test"):
        for name in HEADLINE_METRICS:
            value = metrics[f"{split}_{name}"]
            assert math.isfinite(value), f"{split}_{name} = {value}"
    for name in ("benchmark_total_return", "excess_total_return", "benchmark_sharpe"):
        assert math.isfinite(metrics[f"test_{name}"])
    assert metrics["test_excess_total_return"] == pytest.approx(
        metrics["test_total_return"] - metrics["test_benchmark_total_return"])
    curve = client.get_metric_history(run.info.run_id, next(k for k in metrics if k.startswith("curve_")))
    assert len(curve) >= 1

    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/equity.png", "plots/drawdown.png", "plots/trades.png"}
    table = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/backtest/test_backtest.csv"))
    assert {"date", "price", "action", "position", "equity", "benchmark"} <= set(table.columns)
    assert len(table) > 10

    # the model: registered per symbol, tagged, aliased only when it passed the do-no-harm gate,
    # loadable, predicting a valid action
    (version,) = client.search_model_versions(f"name='builtin_{symbol}'")
    assert version.run_id == run.info.run_id
    assert version.tags["engine"] == "builtin" and version.tags["algorithm"] == "dqn"
    assert version.tags["data_window"] and version.tags["tradeflow.gate"] == tags["tradeflow.gate"]
    aliased = client.get_registered_model(f"builtin_{symbol}").aliases.get("champion")
    assert aliased == (version.version if tags["tradeflow.gate"] == "passed" else None)
    model = mlflow.pyfunc.load_model(f"models:/builtin_{symbol}/{version.version}")
    example = model.input_example
    prediction = model.predict(example)
    assert int(prediction["action"].iloc[0]) in (-1, 0, 1)
    assert prediction["suggestion"].iloc[0] in ("BUY", "SELL", "HOLD")
    assert np.isfinite(prediction[["score_-1", "score_0", "score_1"]].to_numpy()).all()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"epochs": "-3"}, "invalid parameter 'trademaster.epochs'"),
        ({"engine": "tensorflow"}, "invalid parameter 'engine'"),
        ({"data_source": "ftp://prices"}, "is not a data source"),
        ({"data_source": "csv:/nonexistent/prices.csv"}, "/nonexistent/prices.csv"),
    ],
    ids=["negative-epochs", "unknown-engine", "malformed-source", "missing-file"],
)
def test_bad_parameters_fail_fast_with_one_line_and_no_running_run(tracking_store, params, needle):
    result = mlflow_run("train_backtest", {"symbol": "BTC", **params})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
    client = MlflowClient()
    runs = client.search_runs(client.get_experiment_by_name("trademaster_autogen").experiment_id)
    assert runs and all(r.info.status == "FAILED" for r in runs)
    assert needle in runs[0].data.tags["tradeflow.failure_reason"]
    assert "train_seconds" not in runs[0].data.metrics  # nothing was trained


def test_same_seed_and_data_give_identical_metrics(tracking_store):
    """Determinism, in process (two full steps on the same data, seed and code)."""
    require_shared_data()
    from tradeflow.steps.train_backtest import train_backtest_step

    cfg = resolve_config({"symbol": "AAPL", "data_source": DJ30_SOURCE, "register_model": "false", **FAST})
    first = train_backtest_step(cfg)
    second = train_backtest_step(cfg)
    assert first["run_id"] != second["run_id"]
    assert first["data_digest"] == second["data_digest"]
    assert first["test"] == second["test"]
    other_seed = train_backtest_step(cfg.override({"seed": 7}))
    assert other_seed["data_digest"] == first["data_digest"]


@pytest.mark.parametrize(("params", "env", "why"), [
    ({"register_model": "false"}, {}, "register_model=false"),
    ({}, {"TRADEFLOW_REPRODUCTION_OF": "0" * 32}, "reproduction run"),
], ids=["register_model-false", "reproduction"])
def test_an_unregistered_runs_description_says_why(tracking_store, monkeypatch, params, env, why):
    """The run's description names the reason registration was skipped (the registry tag is set
    after the run started, so the run's tag snapshot never had it)."""
    from tradeflow.steps.train_backtest import train_backtest_step

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = resolve_config({"symbol": "AAPL", "data_source": "csv:data/trademaster/dj30_2020_2021.csv", **params, **FAST})
    summary = train_backtest_step(cfg)
    tags = MlflowClient().get_run(summary["run_id"]).data.tags
    assert summary["model_version"] is None and tags[Tag.REGISTRY] == f"skipped: {why}"
    assert f"(not registered: {why})" in tags[Tag.NOTE]
    assert "see tags" not in tags[Tag.NOTE]
