"""``pipeline`` end to end: child runs under a parent, WebUI persistence with lineage, the stage
cache, failure handling and reproduction. Real ``mlflow run`` subprocesses, a real SQLite store and
a real WebUI contract server on 127.0.0.1 (POST answers 200, unknown keys 500, no dedup)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DJ30_SOURCE, mlflow_run, require_shared_data
from tests.support.webui import WebUIServer
from tradeflow.runs.tracking import recorded_params

pytestmark = pytest.mark.slow

SYMBOL = "AAPL"
BASE = {"symbol": SYMBOL, "data_source": DJ30_SOURCE, "epochs": "1"}
STAGES = ("train_backtest", "inference", "review", "persist")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One store and one WebUI server for the module (the scenarios that build on the first run ask for ``first_run``)."""
    require_shared_data()
    tmp = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    client = MlflowClient(uri)
    client.create_experiment("trademaster_autogen", artifact_location=(tmp / "artifacts").as_uri())
    with WebUIServer() as server:
        yield {"uri": uri, "server": server, "client": client}


@pytest.fixture(autouse=True)
def _point_at_world(world, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["uri"])
    mlflow.set_tracking_uri(world["uri"])


def _pipeline(world, *, backend: bool = True, **params):
    # the store named explicitly: ``first_run`` (module scope) runs before the autouse fixtures
    env = {"MLFLOW_TRACKING_URI": world["uri"], **({"BACKEND_API_URL": world["server"].url} if backend else {})}
    result = mlflow_run("pipeline", {**BASE, **params}, env=env)
    return result


def _parent(client: MlflowClient, execution_id: str):
    exp = client.get_experiment_by_name("trademaster_autogen").experiment_id
    runs = client.search_runs([exp], f"tags.`tradeflow.stage` = 'pipeline' and tags.`tradeflow.execution_id` = '{execution_id}'",
                              order_by=["attributes.start_time DESC"])
    assert runs, f"no pipeline run for execution {execution_id}"
    return runs[0]


def _children(client: MlflowClient, parent_id: str):
    exp = client.get_experiment_by_name("trademaster_autogen").experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.fixture(scope="module")
def first_run(world):
    """The cold mode-both run (execution ``exec-1``) the later scenarios build on: its trained and
    registered model, its cached stages, its train run to reproduce."""
    return _pipeline(world, execution_id="exec-1", mode="both")


def test_mode_both_builds_the_run_tree_and_persists_with_lineage(world, first_run):
    client, server = world["client"], world["server"]
    result = first_run
    assert result.returncode == 0, result.stderr[-3000:]

    parent = _parent(client, "exec-1")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.project.entryPoint"] == "pipeline"
    assert parent.data.tags["tradeflow.stage_processes"] == "forked"  # every stage from the warm server
    children = {c.data.tags["mlflow.project.entryPoint"]: c for c in _children(client, parent.info.run_id)}
    assert set(children) == set(STAGES)
    for stage, child in children.items():
        assert child.info.status == "FINISHED"
        assert child.data.tags.get("mlflow.source.git.commit") == parent.data.tags["mlflow.source.git.commit"]
        assert parent.data.tags[f"tradeflow.stage.{stage}.run_id"] == child.info.run_id
        assert parent.data.tags[f"tradeflow.stage.{stage}.reused"] == "false"
    # only ids and URIs travel between stages
    train, inference, review = children["train_backtest"], children["inference"], children["review"]
    assert inference.data.params["model_uri"] == f"models:/builtin_{SYMBOL}/{train.data.tags['tradeflow.model_version']}"
    assert review.data.params["evidence_uri"] == f"runs:/{inference.info.run_id}/evidence.json"
    assert children["persist"].data.params["review_run_id"] == review.info.run_id
    assert json.loads(recorded_params(train.data.params)["config"])["symbol"] == SYMBOL

    # the decision is on the parent; the artifacts on the server point at the review run
    assert parent.data.tags["tradeflow.decision.action"] in ("BUY", "SELL", "HOLD")
    artifacts = server.artifacts()
    assert sorted(a["type"] for a in artifacts) == ["chart", "llm", "signal"]
    for artifact in artifacts:
        assert artifact["run_id"] == review.info.run_id
        assert artifact["experiment_id"] == review.info.experiment_id
        assert artifact["execution_id"] == "exec-1"
        assert artifact["symbol"] == SYMBOL
        assert artifact["dag_id"] == artifact["workflow_id"] == "trademaster_autogen_pipeline_workflow"
    by_type = {a["type"]: a for a in artifacts}
    assert by_type["signal"]["action"] == parent.data.tags["tradeflow.decision.action"]
    assert 0.0 <= by_type["signal"]["confidence"] <= 1.0
    transcript_uri = by_type["llm"]["metadata"]["transcript_uri"]
    assert transcript_uri.endswith("autogen_conversation.jsonl")
    lines = mlflow.artifacts.load_text(transcript_uri).splitlines()
    assert len(lines) >= 3 and all(json.loads(line)["agent"] for line in lines)
    assert by_type["chart"]["image_path"].endswith("plots/price.png")
    # what the WebUI's pages read: the risk/reward box, a chart it can redraw, MLflow links it shows
    signal_data = by_type["signal"]["signal_data"]
    assert "risk_reward_ratio" in signal_data and signal_data["risk_reward_ratio"] == signal_data["r_multiple"]
    benchmark = str(signal_data.get("reasoning", "")).startswith("no demonstrated edge: hold")
    if signal_data["action"] != "HOLD" and not benchmark:
        assert signal_data["risk_reward_ratio"] > 0
    elif benchmark:  # buy-and-hold sets no stop of its own: levels only where the reviewer called the same BUY
        assert signal_data["risk_reward_ratio"] is None or signal_data["risk_reward_ratio"] > 0
    assert signal_data["mlflow"]["review_run"] == f"runs:/{review.info.run_id}"
    assert f"runs:/{review.info.run_id}" in by_type["llm"]["response"] and "MLflow:" in by_type["llm"]["response"]
    snapshot = by_type["chart"]["metadata"]["market_data_snapshot"]
    assert snapshot["symbol"] == SYMBOL and snapshot["timeframe"] == "1 day"
    assert snapshot["bar_count"] == len(snapshot["bars"]) == 120
    assert snapshot["bars"][-1]["date"] == "2021-12-31" and snapshot["bars"][0]["date"] < snapshot["bars"][-1]["date"]
    assert snapshot["latest_price"] == snapshot["bars"][-1]["close"]
    assert set(snapshot["bars"][0]) == {"date", "open", "high", "low", "close", "volume"}
    import requests

    served = requests.get(f"{server.url}/api/artifacts/{by_type['chart']['id']}/market-data", timeout=10)
    assert served.status_code == 200 and served.json()["data"] == list(reversed(snapshot["bars"]))[:50]
    assert requests.get(f"{server.url}/api/artifacts/{by_type['signal']['id']}/market-data", timeout=10).status_code == 400
    # the chart the WebUI shows is ours: a plain path it reads, served byte for byte
    image = requests.get(f"{server.url}/api/artifacts/{by_type['chart']['id']}/image", timeout=10)
    assert image.status_code == 200 and image.content == Path(by_type["chart"]["image_path"]).read_bytes()
    assert by_type["chart"]["chart_data"]["bars_count"] == 120 and by_type["chart"]["chart_data"]["indicators"]
    assert by_type["chart"]["metadata"]["timeframe"] == by_type["chart"]["chart_data"]["timeframe"] == "1 day"

    _assert_runs_explain_themselves(client, parent, children)
    _assert_review_is_traced(client, review)


def _assert_runs_explain_themselves(client, parent, children):
    """Names say the outcome; descriptions say why, vs buy-and-hold, the data, links, reproduce."""
    action = parent.data.tags["tradeflow.decision.action"]
    confidence = parent.data.metrics["decision_confidence"]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.run_name == f"{SYMBOL} · pipeline · 2021-12-31 → {action} {confidence:.2f}"
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"## {SYMBOL} · pipeline (both) → **{action}**")
    assert "**Why**:" in note and "Model vs buy-and-hold on the test split" in note
    assert "real market data from `csv:" in note and "SYNTHETIC" not in note
    assert f"models:/builtin_{SYMBOL}/" in note
    for child in children.values():
        assert f"(#/experiments/{child.info.experiment_id}/runs/{child.info.run_id})" in note
    assert "mlflow run . -e pipeline --env-manager local --experiment-name trademaster_autogen -P symbol=AAPL -P mode=both" in note
    train = client.get_run(children["train_backtest"].info.run_id)
    assert train.info.run_name == f"{SYMBOL} · train_backtest · dqn {BASE['epochs']} ep"
    train_note = train.data.tags["mlflow.note.content"]
    assert "| test |" in train_note and "buy-and-hold" in train_note and "mlflow run . -e reproduce" in train_note
    # MLproject params under their own names, with the values used (not the '' MLflow would log)
    params = train.data.params
    assert (params["symbol"], params["epochs"], params["engine"], params["seed"], params["hidden_dims"]) == (
        SYMBOL, BASE["epochs"], "builtin", "42", "64,64")
    assert "''" not in params.values()
    assert json.loads(params["config"])["trademaster"]["epochs"] == int(BASE["epochs"])
    # the parent was started by `mlflow run` itself, which logged its raw -P values first ('' for
    # "not set"; a logged param cannot change): the resolved values are under cfg.*
    assert parent.data.params["mode"] == "both" and parent.data.params["cfg.review.provider"] == "rules"
    metrics_json = json.loads(mlflow.artifacts.load_text(f"runs:/{train.info.run_id}/metrics.json"))
    assert metrics_json["headline"]["test_total_return"] == train.data.metrics["test_total_return"]
    assert set(metrics_json) >= {"headline", "train", "valid", "test"}
    for stage in ("inference", "review", "persist"):
        named = client.get_run(children[stage].info.run_id)
        assert named.info.run_name.startswith(f"{SYMBOL} · {stage} · ") and named.data.tags["mlflow.note.content"]
    # the registered version says what it is
    version = client.get_model_version(f"builtin_{SYMBOL}", train.data.tags["tradeflow.model_version"])
    assert "real data" in version.description and "buy-and-hold" in version.description
    assert version.tags["symbol"] == SYMBOL and version.tags["pipeline_run_id"] == parent.info.run_id
    assert version.tags["data_window"] == "2020-01-02..2021-12-31" and float(version.tags["test_total_return"]) == \
        pytest.approx(train.data.metrics["test_total_return"], abs=1e-6)


def _assert_review_is_traced(client, review):
    """One trace per review, linked to its run, a span per transcript line, no tokens for rules."""
    lines = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{review.info.run_id}/autogen_conversation.jsonl").splitlines()]
    traces = mlflow.search_traces(locations=[review.info.experiment_id], run_id=review.info.run_id, return_type="list")
    assert len(traces) == 1
    trace = traces[0]
    assert trace.info.request_metadata.get("mlflow.sourceRun") == review.info.run_id
    assert review.data.tags["review.trace_id"] == trace.info.trace_id
    root = next(span for span in trace.data.spans if span.parent_id is None)
    children = [span for span in trace.data.spans if span.parent_id == root.span_id]
    assert len(children) == len(lines) and root.name == f"review {SYMBOL}"
    assert [span.name.split(" ", 1)[1] for span in sorted(children, key=lambda s: s.name)] == \
        [f"{line['agent']}: {line['type']}" for line in lines]
    assert root.outputs["decision"]["action"] == review.data.tags["review.action"]
    assert all(span.get_attribute("mlflow.chat.tokenUsage") is None for span in trace.data.spans)  # rules: no tokens
    assert all(line["prompt_tokens"] is None and line["completion_tokens"] is None for line in lines)
    assert "total_tokens" not in review.data.metrics
    transcript = mlflow.artifacts.load_text(f"runs:/{review.info.run_id}/transcript.md")
    assert transcript.startswith(f"# {SYMBOL} review: {review.data.tags['review.action']}")
    assert transcript.count("\n## ") == len(lines) and "```json" in transcript
    assert "<h2>" in mlflow.artifacts.load_text(f"runs:/{review.info.run_id}/transcript.html")


def test_identical_rerun_reuses_every_stage_and_adds_no_artifact(world, first_run):
    client, server = world["client"], world["server"]
    before_runs = len(client.search_runs([client.get_experiment_by_name("trademaster_autogen").experiment_id]))
    before_artifacts = len(server.artifacts())
    result = _pipeline(world, execution_id="exec-1", mode="both")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 stage(s) reused" in result.stdout
    parent = _parent(client, "exec-1")
    assert all(parent.data.tags[f"tradeflow.stage.{s}.reused"] == "true" for s in STAGES)
    # `mlflow run`'s pipeline process handed over to the warm process the first run left behind
    assert parent.data.tags["tradeflow.pipeline_process"] == "forked"
    after_runs = len(client.search_runs([client.get_experiment_by_name("trademaster_autogen").experiment_id]))
    assert after_runs == before_runs + 1  # only the new parent
    assert len(server.artifacts()) == before_artifacts


def test_mode_inference_uses_the_registered_model_and_a_new_execution_gets_its_own_artifacts(world, first_run):
    client, server = world["client"], world["server"]
    result = _pipeline(world, execution_id="exec-2", mode="inference", force="true")
    assert result.returncode == 0, result.stderr[-3000:]
    parent = _parent(client, "exec-2")
    stages = {c.data.tags["mlflow.project.entryPoint"] for c in _children(client, parent.info.run_id)}
    assert stages == {"inference", "review", "persist"}
    exec2 = [a for a in server.artifacts() if a["execution_id"] == "exec-2"]
    assert sorted(a["type"] for a in exec2) == ["chart", "llm", "signal"]


def test_mode_train_backtest_runs_only_training(world, first_run):
    client = world["client"]
    result = _pipeline(world, execution_id="exec-3", mode="train_backtest", backend=False)
    assert result.returncode == 0, result.stderr[-3000:]
    parent = _parent(client, "exec-3")
    assert parent.data.tags["tradeflow.stage.train_backtest.reused"] == "true"  # cached from mode both
    assert "tradeflow.stage.inference.run_id" not in parent.data.tags


def test_backend_down_fails_clearly_and_keeps_finished_stages(world):
    client, server = world["client"], world["server"]
    server.stop()
    try:
        result = _pipeline(world, execution_id="exec-4", mode="both")
    finally:
        server.start()
    assert result.returncode != 0
    assert "stage persist failed" in result.stderr and "unreachable" in result.stderr
    parent = _parent(client, "exec-4")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["tradeflow.failed_stage"] == "persist"
    assert "unreachable" in parent.data.tags["tradeflow.failure_reason"]
    for stage in ("train_backtest", "inference", "review"):
        assert client.get_run(parent.data.tags[f"tradeflow.stage.{stage}.run_id"]).info.status == "FINISHED"
    persist = client.get_run(parent.data.tags["tradeflow.stage.persist.run_id"])
    assert persist.info.status == "FAILED"
    assert not [a for a in server.artifacts() if a["execution_id"] == "exec-4"]
    # the retry, with the backend back, reuses the finished stages and persists once
    retry = _pipeline(world, execution_id="exec-4", mode="both")
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert len([a for a in server.artifacts() if a["execution_id"] == "exec-4"]) == 3


def test_without_backend_url_persistence_is_skipped_and_says_so(world):
    client = world["client"]
    result = _pipeline(world, execution_id="exec-5", mode="both", backend=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WebUI persistence skipped" in result.stdout
    parent = _parent(client, "exec-5")
    persist = client.get_run(parent.data.tags["tradeflow.stage.persist.run_id"])
    assert persist.data.tags["webui.persist"] == "skipped"


def test_reproduce_a_finished_train_backtest_run_gives_identical_metrics(world, first_run):
    client = world["client"]
    parent = _parent(client, "exec-1")
    train_id = parent.data.tags["tradeflow.stage.train_backtest.run_id"]
    result = mlflow_run("reproduce", {"run_id": train_id})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MATCH" in result.stdout and "MISMATCH" not in result.stdout
    exp = client.get_experiment_by_name("trademaster_autogen").experiment_id
    repro = client.search_runs([exp], "tags.`tradeflow.stage` = 'reproduce'")[0]
    assert repro.data.tags["reproduce.match"] == "true"
    again = client.get_run(repro.data.tags["reproduce.reproduced_run_id"])
    assert again.data.tags["tradeflow.reproduction_of"] == train_id
    assert again.data.metrics["test_total_return"] == client.get_run(train_id).data.metrics["test_total_return"]
    # the reproduction registered nothing, so it cannot have moved the registry alias
    versions = client.search_model_versions(f"name='builtin_{SYMBOL}'")
    assert versions and all(v.run_id != again.info.run_id for v in versions)
