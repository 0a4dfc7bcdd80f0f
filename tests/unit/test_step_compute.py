"""The steps' compute halves on in-memory frames: no MLflow store, no subprocess, milliseconds each.

Each step is open run -> load inputs -> compute -> record; these tests run only the compute half
(``compute_train``, ``compute_inference``, ``compute_review``, ``plan_persist``) on the shipped AAPL
slice, and prove it is pure by running it with every MLflow write and client forbidden.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
from types import SimpleNamespace

import pytest

from tests.conftest import REPO

AAPL = f"csv:{REPO / 'data' / 'trademaster' / 'dj30_2020_2021.csv'}"
RUN_ID = "0" * 32
SPLITS = ("train", "valid", "test")
HEADLINE = ("total_return", "benchmark_total_return", "excess_total_return", "sharpe", "max_drawdown", "num_trades")


def _cfg(**overrides):
    from tradeflow.config import resolve_config

    return resolve_config({"symbol": "AAPL", "data_source": AAPL, "epochs": 1, "hidden_dims": "32,32",
                           "reviewer": "rules", **overrides})


@pytest.fixture(scope="module")
def market():
    from tradeflow.data import load_market_data

    return load_market_data(_cfg())


@pytest.fixture(scope="module")
def splits(market):
    from tradeflow.features import compute_features, split_for_run

    return split_for_run(compute_features(market.bars), _cfg())


def _train(splits, workdir):
    from tradeflow.engines import get_engine
    from tradeflow.steps.train_backtest import compute_train

    cfg = _cfg()
    return compute_train(splits, cfg, engine=get_engine(cfg.engine), workdir=workdir)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    return _train(splits, tmp_path_factory.mktemp("train"))


class _Loaded:
    """What ``load_logged_model`` gives inference (a pyfunc model), around an in-memory agent."""

    def __init__(self, agent, symbol: str = "AAPL"):
        from tradeflow.model import TradingAgentModel

        self._model = TradingAgentModel()
        self._model.agent = agent
        self._model.meta = {"engine": "builtin", "algorithm": "dqn", "symbol": symbol, "window": agent.window,
                            "max_volume": agent.max_volume, "feature_columns": list(agent.feature_columns)}

    def predict(self, frame):
        return self._model.predict(None, frame)

    def unwrap_python_model(self):
        return self._model


def _infer(trained, market, symbol: str = "AAPL"):
    from tradeflow.steps.inference import ResolvedModel, compute_inference

    resolved = ResolvedModel(f"runs:/{RUN_ID}/model", None, RUN_ID, None)
    return compute_inference(_cfg(), model=_Loaded(trained.agent, symbol), market=market, resolved=resolved,
                             training={"run_id": RUN_ID, "metrics": trained.metrics, "config": {}},
                             gate=trained.gate.as_evidence())


def _review(inferred):
    from tradeflow.steps.review import compute_review

    evidence = json.loads(json.dumps(inferred.evidence))  # as the review step reads it: JSON
    return evidence, compute_review(_cfg(), evidence, f"runs:/{RUN_ID}/evidence.json")


def _review_record(evidence, reviewed, *, chart: bool = True):
    """``review_record``'s answer, built from the compute outcomes instead of a store."""
    return {"run": SimpleNamespace(info=SimpleNamespace(run_id="1" * 32, experiment_id="7")),
            "decision": reviewed.decision, "signal_data": reviewed.signal_data, "evidence": evidence,
            "transcript_lines": [json.loads(line) for line in reviewed.conversation.splitlines()],
            "transcript_uri": "file:///store/autogen_conversation.jsonl",
            "chart_uri": "file:///store/plots/price.png" if chart else None,
            "market_data_snapshot": None, "links": {"review_run": f"runs:/{'1' * 32}"}}


# --- train ---------------------------------------------------------------------------------------


def test_train_backtests_every_split_and_gates_on_the_validation_metrics(trained, splits):
    from tradeflow.gate import check_gate

    metrics = trained.metrics
    for split in SPLITS:
        for name in HEADLINE:
            assert math.isfinite(metrics[f"{split}_{name}"]), f"{split}_{name}"
        assert trained.backtests[split].metrics["total_return"] == metrics[f"{split}_total_return"]
    assert {"train_seconds", "env_steps_per_s", "timesteps", "best_epoch"} <= set(metrics)
    assert metrics["train_seconds"] == trained.train_seconds > 0
    # valid/test carry window-1 rows of history so they trade from their split's first bar
    window = trained.agent.window
    assert len(trained.frames["valid"]) == len(splits.valid) + window - 1
    assert trained.frames["test"]["date"].iloc[window - 1] == splits.test["date"].iloc[0]
    gate = trained.gate
    assert gate == check_gate({k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")})
    assert gate.valid_total_return == metrics["valid_total_return"]
    assert gate.benchmark_total_return == metrics["valid_benchmark_total_return"]
    if gate.passed:  # a passing model beat both buy-and-hold and flat on validation
        assert gate.valid_total_return > max(gate.benchmark_total_return, 0.0)
    assert trained.bounds == splits.describe()


def test_registration_skip_reason_summary_and_description_line(trained, market):
    from tradeflow.steps.train_backtest import Registration, model_line, registration_skipped, train_summary

    cfg = _cfg()
    assert registration_skipped(cfg, None) is None
    assert registration_skipped(cfg.override({"register_model": False}), None) == "register_model=false"
    assert registration_skipped(cfg.override({"register_model": False}), RUN_ID) == "reproduction run"
    skipped = Registration(skipped="register_model=false")
    assert "not registered: register_model=false" in model_line(cfg, "models:/m-1", skipped)
    registered = model_line(cfg, "models:/m-1", Registration(version="3"))
    assert cfg.registered_model_name in registered and "version 3" in registered

    summary = train_summary(cfg, trained, market=market, run_id=RUN_ID, model_uri="models:/m-1", registration=skipped)
    assert summary["model_version"] is None and summary["registered_model"] is None
    assert summary["test"] == {k.removeprefix("test_"): v for k, v in trained.metrics.items() if k.startswith("test_")}
    assert summary["data_digest"] == market.digest and summary["synthetic_data"] is False


def test_version_metadata_names_the_windows_and_the_test_result(trained, market):
    from tradeflow.steps.train_backtest import version_metadata

    tags, description = version_metadata(_cfg(), market=market, bounds=trained.bounds, metrics=trained.metrics,
                                         run_id=RUN_ID, pipeline_run_id="")
    test = trained.bounds["test"]
    assert tags["test_window"] == f"{test['start']}..{test['end']}" and tags["source_run_id"] == RUN_ID
    assert {"data_window", "train_window", "valid_window"} <= set(tags)
    assert float(tags["test_total_return"]) == pytest.approx(trained.metrics["test_total_return"], abs=1e-6)
    assert RUN_ID in description and "real data" in description


def test_the_reviewer_logged_with_the_model_has_the_universe_prior_of_its_data_source(trained, market):
    from tradeflow.features import compute_features
    from tradeflow.steps.train_backtest import compute_reviewer

    features = compute_features(market.bars)
    reviewer = compute_reviewer(features, trained, _cfg())
    assert reviewer["universe"]["symbols"] == 3  # the shipped file holds AAPL, JPM and MSFT
    assert reviewer["model"]["prior_source"] == "universe"
    # what the universe holds after the train data's last bar is never read
    cut = features[features["date"] <= features["date"].iloc[-60]]
    early = compute_reviewer(cut, trained, _cfg())
    assert early["universe"] != reviewer["universe"]
    alone = compute_reviewer(features, trained, _cfg(data_source=f"csv:{REPO / 'data' / 'trademaster' / 'btc_2018_2021.csv'}"))
    assert alone["universe"] is None and alone["model"]["prior_source"] == "symbol"  # a one-ticker source


# --- inference -----------------------------------------------------------------------------------


def test_inference_acts_on_the_latest_window_and_packs_the_evidence(trained, market):
    from tradeflow.model import suggestion_for
    from tradeflow.steps.inference import CHART_BARS

    inferred = _infer(trained, market)
    assert inferred.suggestion in ("BUY", "SELL", "HOLD")
    assert inferred.suggestion == suggestion_for(inferred.action)
    assert inferred.scores and all(math.isfinite(v) for v in inferred.scores.values())
    assert inferred.as_of == str(market.bars["date"].iloc[-1].date()) and inferred.window_start < inferred.as_of
    evidence = inferred.evidence
    assert {"symbol", "as_of", "indicators", "model", "latest_bars", "data"} <= set(evidence)
    assert evidence["model"]["suggestion"] == inferred.suggestion
    assert evidence["model"]["target_position"] == inferred.action
    assert evidence["model"]["gate"]["passed"] == trained.gate.passed
    assert evidence["data"]["digest"] == market.digest
    snapshot = inferred.snapshot
    assert snapshot["bar_count"] == len(snapshot["bars"]) <= CHART_BARS
    assert snapshot["latest_price"] == pytest.approx(float(market.bars["close"].iloc[-1]))
    assert inferred.warning is None and inferred.finagent is None
    assert "MSFT" in _infer(trained, market, symbol="MSFT").warning


# --- review --------------------------------------------------------------------------------------


def test_review_gives_a_valid_decision_and_its_records(trained, market):
    from tradeflow.runs.records import Tag

    _, reviewed = _review(_infer(trained, market))
    decision = reviewed.decision["decision"]
    assert decision["action"] in ("BUY", "SELL", "HOLD") and 0.0 <= decision["confidence"] <= 1.0
    assert decision["rationale"] and reviewed.decision["evidence_uri"].endswith("/evidence.json")
    # this train run holds no reviewer.json (an older run): inference fitted one, and the confidence served
    # is its calibrated probability, labelled as fitted at inference (never the uncalibrated 0.5)
    from review_agents.decision_rule import NOT_CALIBRATED
    from tradeflow.metalabel import MetaLabeller

    evidence, _ = _review(_infer(trained, market))
    block = evidence["reviewer"]
    assert block["fitted_at"].startswith("inference") and block["model"] is not None
    p_up = MetaLabeller.from_dict(block["model"]).probability_up(block["inputs"])
    assert decision["confidence"] == pytest.approx(p_up if decision["action"] == "BUY" else 1 - p_up, abs=1e-4)
    assert any(f.startswith("reviewer fitted at inference") for f in decision["key_factors"])
    assert not any(NOT_CALIBRATED in f for f in decision["key_factors"])
    assert {"fallback_reason", "guardrail_notes", "model_used"} <= set(reviewed.decision)
    assert reviewed.signal_data["symbol"] == "AAPL" and reviewed.signal_data["action"] == decision["action"]
    assert reviewed.tags[Tag.REVIEW_ACTION] == decision["action"] == reviewed.action
    assert reviewed.metrics["confidence"] == decision["confidence"]
    assert not reviewed.reports_tokens and "total_tokens" not in reviewed.metrics  # rules: no model tokens
    lines = [json.loads(line) for line in reviewed.conversation.splitlines()]
    assert len(lines) >= reviewed.metrics["messages"] > 0 and all(line["prompt_tokens"] is None for line in lines)
    assert reviewed.markdown.startswith("#") and "<html" in reviewed.html.lower()


# --- persist -------------------------------------------------------------------------------------


def test_persist_plan_carries_lineage_and_agrees_with_the_decision(trained, market):
    from tradeflow.steps.persist import plan_persist

    evidence, reviewed = _review(_infer(trained, market))
    plan = plan_persist(_review_record(evidence, reviewed), execution_id="exec-1", dag_id="dag", task_id="task")
    assert plan.types == ["signal", "llm", "chart"]
    for payload in plan.payloads:
        assert {"name", "type", "symbol", "run_id", "experiment_id", "execution_id", "dag_id", "task_id",
                "metadata"} <= set(payload)
        assert (payload["symbol"], payload["run_id"], payload["execution_id"]) == ("AAPL", "1" * 32, "exec-1")
    signal = plan.payloads[0]
    assert signal["action"] == reviewed.action and signal["confidence"] == pytest.approx(reviewed.confidence)
    assert plan_persist(_review_record(evidence, reviewed, chart=False), execution_id="e", dag_id="d",
                        task_id="t").types == ["signal", "llm"]


# --- purity --------------------------------------------------------------------------------------

COMPUTE = {"tradeflow.steps.train_backtest": ("compute_train", "registration_skipped", "train_summary",
                                              "model_line", "version_metadata"),
           "tradeflow.steps.inference": ("compute_inference", "symbol_warning", "_add_finagent_evidence"),
           "tradeflow.steps.review": ("compute_review",),
           "tradeflow.steps.persist": ("plan_persist", "build_artifacts", "persist_params")}


def test_compute_halves_name_no_mlflow():
    import importlib

    for module_name, functions in COMPUTE.items():
        module = importlib.import_module(module_name)
        for name in functions:
            tree = ast.parse(inspect.getsource(getattr(module, name)))
            named = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            named |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
            named |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not {x for x in named if "mlflow" in x.lower()}, f"{module_name}.{name} names MLflow"


def test_compute_halves_run_with_mlflow_forbidden(monkeypatch, splits, market, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tradeflow.steps.persist import plan_persist

    def forbidden(*args, **kwargs):
        raise AssertionError("a compute half called MLflow")

    for name in ("start_run", "active_run", "log_metric", "log_metrics", "log_param", "log_params", "set_tag",
                 "set_tags", "log_dict", "log_text", "log_artifact", "log_figure", "log_input", "set_tracking_uri"):
        monkeypatch.setattr(mlflow, name, forbidden)
    monkeypatch.setattr(mlflow.artifacts, "load_text", forbidden)
    monkeypatch.setattr(MlflowClient, "__init__", forbidden)

    trained = _train(splits, tmp_path)
    evidence, reviewed = _review(_infer(trained, market))
    plan = plan_persist(_review_record(evidence, reviewed), execution_id="e", dag_id="d", task_id="t")
    assert plan.types == ["signal", "llm", "chart"]
