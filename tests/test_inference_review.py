"""``inference`` and ``review`` through the real ``mlflow run``, on a model trained on real data;
the no-model error; and a whole-store scan proving a fake API key leaves no trace."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DJ30_SOURCE, mlflow_run, require_shared_data
from tests.support.openai_server import OpenAICompatibleServer

pytestmark = pytest.mark.slow

FAKE_KEY = "sk-test-" + "Q7w" * 14  # looks like a real key, 50 chars


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real store with AAPL trained on the dj30 data (in process: the CLI path is tested elsewhere)."""
    require_shared_data()
    tmp = tmp_path_factory.mktemp("inference")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    MlflowClient(uri).create_experiment("trademaster_autogen", artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    from tradeflow.config import resolve_config
    from tradeflow.steps.train_backtest import train_backtest_step

    summary = train_backtest_step(resolve_config({"symbol": "AAPL", "data_source": DJ30_SOURCE, "epochs": 1}))
    mlflow.set_tracking_uri(None)
    return {"uri": uri, "dir": tmp, "train_run_id": summary["run_id"]}


@pytest.fixture(autouse=True)
def _use_store(trained, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    mlflow.set_tracking_uri(trained["uri"])


def _latest(client: MlflowClient, stage: str):
    return client.search_runs(["1"], f"tags.`tradeflow.stage` = '{stage}'", order_by=["attributes.start_time DESC"])[0]


def test_inference_then_review_on_the_registered_model(trained):
    client = MlflowClient()
    result = mlflow_run("inference", {"symbol": "AAPL"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = _latest(client, "inference")
    assert run.info.status == "FINISHED"
    assert run.data.params["inference.model_uri"] == "models:/builtin_AAPL/1"
    assert run.data.params["inference.training_run_id"] == trained["train_run_id"]
    assert run.data.params["data.as_of"] == "2021-12-31"
    evidence = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evidence.json"))
    assert evidence["symbol"] == "AAPL" and evidence["as_of"] == "2021-12-31"
    assert len(evidence["latest_bars"]) == 20 and evidence["latest_bars"][-1]["date"] == "2021-12-31"
    for name in ("sma_20", "sma_50", "rsi_14", "atr_14", "volatility_annualised", "support", "resistance"):
        assert isinstance(evidence["indicators"][name], float), name
    assert evidence["model"]["suggestion"] in ("BUY", "SELL", "HOLD")
    assert set(evidence["model"]["scores"]) == {"-1", "0", "1"}
    train_metrics = client.get_run(trained["train_run_id"]).data.metrics
    assert evidence["backtest"]["metrics"]["test_sharpe"] == pytest.approx(train_metrics["test_sharpe"], abs=1e-6)
    assert evidence["data"]["synthetic"] is False
    assert {f.path for f in client.list_artifacts(run.info.run_id, "plots")} == {"plots/price.png", "plots/price_bars.json"}

    evidence_uri = f"runs:/{run.info.run_id}/evidence.json"
    result = mlflow_run("review", {"evidence_uri": evidence_uri})
    assert result.returncode == 0, result.stderr[-3000:]
    review = _latest(client, "review")
    assert review.info.status == "FINISHED"
    assert review.data.tags["review.fallback"] == "false"
    assert review.data.tags["review.model_used"].startswith("rule-based")
    names = {f.path for f in client.list_artifacts(review.info.run_id)}
    assert {"autogen_conversation.jsonl", "decision.json", "signal_data.json", "evidence.json"} <= names
    lines = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{review.info.run_id}/autogen_conversation.jsonl").splitlines()]
    agents = [line["agent"] for line in lines]
    assert {"technical_analyst", "risk_reviewer", "decision_maker"} <= set(agents)
    for line in lines:
        assert {"agent", "type", "content", "prompt_tokens", "completion_tokens", "timestamp"} <= set(line)
    signal = json.loads(mlflow.artifacts.load_text(f"runs:/{review.info.run_id}/signal_data.json"))
    score = signal["confidence_score"]
    band = "HIGH" if score >= 80 else "MEDIUM" if score >= 50 else "LOW"
    assert signal["confidence"] == band and len(signal["reasoning"]) >= 10
    assert signal["timeframe_analyzed"] == "1 day" and signal["model_used"].startswith("rule-based")
    metrics = review.data.metrics
    assert metrics["confidence"] * 100 == pytest.approx(score, abs=0.05)
    # the rule-based reviewer calls no language model: it reports no token usage
    assert "total_tokens" not in metrics and metrics["latency_s"] >= 0


def test_inference_without_a_registered_model_says_to_train_first(trained):
    result = mlflow_run("inference", {"symbol": "MSFT", "data_source": DJ30_SOURCE})
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error == ["error: no registered model builtin_MSFT@champion for MSFT; run train_backtest first: "
                     "mlflow run . -e train_backtest -P symbol=MSFT"]
    failed = MlflowClient().search_runs(["1"], "attributes.status = 'FAILED'")
    assert any(r.data.tags.get("tradeflow.failure_reason", "").startswith("no registered model builtin_MSFT")
               for r in failed)


def test_a_fake_api_key_leaves_no_trace_in_the_store(trained):
    """A review through the production OpenAI-compatible path with a fake key; then every byte of
    the store (SQLite file and artifact tree) and the process output is searched for it."""
    client = MlflowClient()
    inference = _latest(client, "inference")
    env = {"LLM_BASE_URL": "", "LLM_MODEL": "test-model", "LLM_API_KEY": FAKE_KEY}
    with OpenAICompatibleServer({}) as server:
        env["LLM_BASE_URL"] = server.base_url
        result = mlflow_run("review", {"evidence_uri": f"runs:/{inference.info.run_id}/evidence.json",
                                       "reviewer": "openai_compatible"}, env=env)
        assert any(FAKE_KEY in (r.get("authorization") or "") for r in server.requests), "the key was not used"
    assert result.returncode == 0, result.stderr[-3000:]
    review = _latest(client, "review")
    assert review.data.params["review.provider"] == "openai_compatible"
    # a language model reports its usage: on the trace's message spans, summing to the run's metric
    (trace,) = mlflow.search_traces(locations=[review.info.experiment_id], run_id=review.info.run_id, return_type="list")
    reported = [u for u in (s.get_attribute("mlflow.chat.tokenUsage") for s in trace.data.spans) if u]
    assert reported and sum(u["total_tokens"] for u in reported) == review.data.metrics["total_tokens"] > 0
    assert FAKE_KEY not in result.stdout + result.stderr
    needle = FAKE_KEY.encode()
    scanned = 0
    for path in Path(trained["dir"]).rglob("*"):
        if path.is_file():
            scanned += 1
            assert needle not in path.read_bytes(), f"API key found in {path}"
    assert scanned > 10
