"""What the WebUI's pages read, filled (issue 24): plain chart paths, chart_data, the service's
``llm_analysis`` names, a readable prompt, clickable MLflow links and the execution's own run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tradeflow.errors import InputError
from tradeflow.runs.records import Tag

SIGNAL = {"symbol": "NVDA", "action": "BUY", "confidence": "MEDIUM", "confidence_score": 72.0,
          "reasoning": "breakout above resistance", "timeframe_analyzed": "1 day", "model_used": "rules",
          "suggested_entry_price": 131.2, "suggested_stop_loss": 124.0, "suggested_take_profit": 145.0}
LINEAGE = {"symbol": "NVDA", "run_id": "r" * 32, "experiment_id": "1", "execution_id": "exec-1"}


def test_signal_data_carries_the_names_the_services_llm_analysis_reads():
    from tradeflow.webui import signal_artifact

    data = signal_artifact(action="BUY", confidence=0.72, signal_data=SIGNAL, **LINEAGE)["signal_data"]
    assert (data["confidence_level"], data["entry_price"], data["stop_loss"], data["take_profit"],
            data["is_actionable"]) == ("MEDIUM", 131.2, 124.0, 145.0, True)
    hold = {**SIGNAL, "action": "HOLD", "suggested_entry_price": None}
    assert signal_artifact(action="HOLD", confidence=0.72, signal_data=hold, **LINEAGE)["signal_data"]["is_actionable"] is False


@pytest.mark.parametrize("uri", ["file:///store/plots/price.png", "runs:/abc/plots/price.png", "s3://b/k.png"])
def test_a_chart_image_path_is_never_a_uri_the_service_cannot_open(uri):
    from tradeflow.webui import chart_artifact

    with pytest.raises(InputError, match="plain file path"):
        chart_artifact(image_path=uri, chart_type="price", **LINEAGE)
    # an uploaded object: minio_url is what the service serves
    ok = chart_artifact(image_path=uri, chart_type="price", chart_data={"minio_url": "http://minio:9000/b/k.png"},
                        **LINEAGE)
    assert ok["chart_data"]["minio_url"] == "http://minio:9000/b/k.png"


def test_chart_image_path_is_a_plain_path_one_file_per_symbol_and_execution(tmp_path):
    from tradeflow.steps.persist import chart_image_path

    assert chart_image_path("file:///store/a%20b/price.png", None, "NVDA", "e") == "/store/a b/price.png"
    assert chart_image_path("mlflow-artifacts:/1/x/price.png", None, "NVDA", "e") is None
    one = chart_image_path("file:///s/price.png", str(tmp_path), "NVDA", "manual__2026-12-07T05:00:00+00:00")
    again = chart_image_path("file:///other/price.png", str(tmp_path), "NVDA", "manual__2026-12-07T05:00:00+00:00")
    other = chart_image_path("file:///s/price.png", str(tmp_path), "NVDA", "scheduled__2026-12-08")
    assert one == again != other and one.startswith(str(tmp_path)) and "://" not in one
    assert "/../" not in chart_image_path("file:///s/p.png", str(tmp_path), "../../etc", "../x")


def test_the_prompt_is_readable_text_with_the_json_linked():
    from tradeflow.steps.persist import PROMPT_TEXT_MAX, readable_prompt

    blob = json.dumps({"question": "BUY, SELL or HOLD NVDA?", "model": {"uri": "runs:/m/model", "sharpe": 1.23456789},
                       "bars": [{"close": float(i)} for i in range(300)]}, separators=(",", ":"))
    text = readable_prompt(blob, "http://mlflow/#/experiments/1/runs/i/artifacts/evidence.json")
    lines = text.splitlines()
    assert "question: BUY, SELL or HOLD NVDA?" in lines and "  sharpe: 1.235" in lines
    assert "bars: 300 entries (see the JSON)" in lines
    assert lines[-1] == "Full evidence (JSON): http://mlflow/#/experiments/1/runs/i/artifacts/evidence.json"
    assert max(map(len, lines)) < 200 and len(text) <= PROMPT_TEXT_MAX + 200
    assert readable_prompt("plain question", None) == "plain question"


def test_mlflow_links_are_clickable_with_runs_uris_beside_and_the_executions_own_run(monkeypatch):
    from tradeflow.steps.persist import mlflow_links

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    monkeypatch.setenv("TRADEFLOW_MLFLOW_UI_URL", "http://mlflow.example:5000/")
    run = SimpleNamespace(info=SimpleNamespace(run_id="a" * 32, experiment_id="3"),
                          data=SimpleNamespace(tags={Tag.PARENT_RUN_ID: "b" * 32},
                                               params={"review.evidence_uri": f"runs:/{'c' * 32}/evidence.json"}))
    links = mlflow_links(run, pipeline_run_id="d" * 32)  # the review was reused from execution b...
    assert links["review_run"] == f"http://mlflow.example:5000/#/experiments/3/runs/{'a' * 32}"
    assert links["review_run_uri"] == f"runs:/{'a' * 32}"
    assert links["evidence"].endswith(f"/runs/{'c' * 32}/artifacts/evidence.json")
    assert links["pipeline_run"].endswith("d" * 32) and links["reused_from_pipeline_run"].endswith("b" * 32)
    monkeypatch.delenv("TRADEFLOW_MLFLOW_UI_URL")
    plain = mlflow_links(run)
    assert plain["pipeline_run"] == f"runs:/{'b' * 32}" and not any(k.endswith("_uri") for k in plain)


def _record(chart_uri="file:///store/plots/price.png"):
    snapshot = {"symbol": "NVDA", "timeframe": "1 day", "bar_count": 120,
                "bars": [{"date": "2026-01-01", "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": None}] * 120,
                "latest_price": 1.5}
    return {"run": SimpleNamespace(info=SimpleNamespace(run_id="r" * 32, experiment_id="1")),
            "decision": {"decision": {"action": "BUY", "confidence": 0.72, "rationale": "Breakout.\nVolume confirms.",
                                      "key_factors": ["trend up", "gate passed"]}, "model_used": "rules"},
            "signal_data": SIGNAL, "evidence": {"model": {"uri": "runs:/m/model"}},
            "transcript_lines": [{"agent": "user", "content": json.dumps({"question": "NVDA?"})}],
            "transcript_uri": "file:///store/autogen_conversation.jsonl", "chart_uri": chart_uri,
            "market_data_snapshot": snapshot, "links": {"review_run": "http://m/#/experiments/1/runs/r"}}


def test_the_chart_page_and_airflow_monitor_find_chart_data_and_metadata(tmp_path):
    from tradeflow.steps.persist import CHART_INDICATORS, plan_persist

    plan = plan_persist(_record(), execution_id="exec-1", dag_id="d", task_id="t")
    chart = plan.payloads[2]
    assert chart["image_path"] == "/store/plots/price.png" and plan.chart_copy is None
    assert chart["chart_data"] == {"timeframe": "1 day", "bars_count": 120, "indicators": list(CHART_INDICATORS)}
    assert chart["metadata"]["timeframe"] == "1 day" and chart["metadata"]["indicators"] == list(CHART_INDICATORS)
    served = plan_persist(_record(), execution_id="exec-1", dag_id="d", task_id="t", chart_dir=str(tmp_path))
    assert served.chart_copy == ("file:///store/plots/price.png", served.payloads[2]["image_path"])
    # a store the service cannot read, and no chart dir: no chart artifact with a path it cannot open
    assert plan_persist(_record("mlflow-artifacts:/1/r/artifacts/plots/price.png"), execution_id="e", dag_id="d",
                        task_id="t").types == ["signal", "llm"]
    llm = plan.payloads[1]
    assert llm["prompt"] == "question: NVDA?" and llm["response"].startswith("Breakout. Volume confirms.")
    assert "Key factors: trend up; gate passed" in llm["response"]


def test_the_review_task_messages_evidence_block_becomes_lines():
    from review_agents.prompts import extract_evidence  # noqa: F401 - the block format this reads
    from tradeflow.steps.persist import readable_prompt

    evidence = {"symbol": "AAPL", "model": {"suggestion": "HOLD", "sharpe": 0.123456}, "note": "a<b>c"}
    prompt = "\n".join(["Review the evidence for AAPL as of 2021-12-31 (1 day bars) and decide BUY, SELL or HOLD.",
                        "<evidence>", json.dumps(evidence, separators=(",", ":")).replace("<", "\\u003c")
                        .replace(">", "\\u003e"), "</evidence>"])
    lines = readable_prompt(prompt, None).splitlines()
    assert lines[:3] == ["Review the evidence for AAPL as of 2021-12-31 (1 day bars) and decide BUY, SELL or HOLD.",
                         "<evidence>", "symbol: AAPL"]
    assert "  suggestion: HOLD" in lines and "  sharpe: 0.1235" in lines and "note: a<b>c" in lines
    assert lines[-1] == "</evidence>"
