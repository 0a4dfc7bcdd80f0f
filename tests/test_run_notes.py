"""Names, descriptions, resolved parameters, plot titles and the review trace, in process (the
end-to-end checks on real runs are in test_pipeline.py and test_browser.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import mlflow
import pytest

from review_agents.schema import TradeDecision
from tradeflow.runs import notes as run_notes
from tradeflow.config import resolve_config
from tradeflow.plots import plot_title
from tradeflow.runs.review_trace import log_review_trace, transcript_html, transcript_markdown


def test_params_are_logged_under_their_mlproject_names_with_resolved_values():
    cfg = resolve_config({"symbol": "aapl", "epochs": "2", "reviewer": "rules"})
    params = run_notes.resolved_params("train_backtest", cfg)
    assert list(params)[:3] == ["symbol", "data_source", "engine"]  # MLproject order
    assert (params["symbol"], params["epochs"], params["engine"], params["hidden_dims"], params["register_model"],
            params["end_date"]) == ("AAPL", "2", "builtin", "64,64", "true", "")
    assert json.loads(params["config"]) == json.loads(cfg.to_json())
    assert resolve_config({"symbol": "X", "config": params["config"]}) == cfg  # a re-run gets the same config
    pipeline = run_notes.resolved_params("pipeline", cfg, execution_id="e1", force=False, dag_id="", task_id="")
    assert (pipeline["mode"], pipeline["reviewer"], pipeline["force"], pipeline["execution_id"]) == ("both", "rules", "false", "e1")
    review = run_notes.resolved_params("review", cfg, evidence_uri="runs:/r/evidence.json")
    assert review == {"evidence_uri": "runs:/r/evidence.json", "reviewer": "rules", "review_model": "", "config": cfg.to_json()}


def test_names_say_the_outcome():
    cfg = resolve_config({"symbol": "AAPL", "epochs": 3})
    assert run_notes.train_backtest_name(cfg) == "AAPL · train_backtest · dqn 3 ep"
    decision = {"action": "BUY", "confidence": 0.8234}
    assert run_notes.pipeline_name("AAPL", "both", as_of="2021-12-31", decision=decision) == \
        "AAPL · pipeline · 2021-12-31 → BUY 0.82"
    assert run_notes.pipeline_name("AAPL", "train_backtest", as_of=None, decision=None, test_return=-0.318) == \
        "AAPL · pipeline · train_backtest, test -31.8 %"
    assert run_notes.review_name("AAPL", "HOLD", 0.0, "openai", True) == "AAPL · review · HOLD 0.00 FALLBACK (openai)"


def test_synthetic_data_is_said_loudly_and_an_override_is_explained():
    assert run_notes.data_line("synthetic", True).startswith("⚠️ **SYNTHETIC PRICES**")
    assert run_notes.data_line("csv:/x.csv", False, start="2020-01-02", end="2021-12-31", rows=505) == \
        "**Data**: real market data from `csv:/x.csv` 2020-01-02 → 2021-12-31, 505 bars."
    lines = run_notes.decision_lines({"action": "BUY", "confidence": 0.8, "rationale": "trend up", "key_factors": ["a"],
                                      "contradiction_reason": "the trend outweighs the model"}, "HOLD")
    assert lines[0] == "The model suggested **HOLD**; the review team decided **BUY**: the trend outweighs the model"


def test_reproduce_block_is_the_exact_command():
    block = run_notes.reproduce_block("train_backtest", {"symbol": "AAPL", "end_date": "", "config": '{"a": 1}'},
                                      commit="abc+dirty.123", run_id="r1", experiment_name="trademaster_autogen")
    assert "mlflow run . -e reproduce --env-manager local -P run_id=r1" in block
    assert "git checkout abc  # the recorded commit\nmlflow run . -e train_backtest --env-manager local " \
           "--experiment-name trademaster_autogen -P symbol=AAPL -P config='{\"a\": 1}'" in block
    assert "uncommitted changes" in block


def test_metrics_json_groups_by_split_headline_first():
    grouped = run_notes.grouped_metrics({"test_sharpe": 1.0, "train_sharpe": 2.0, "train_seconds": 3.0, "timesteps": 4.0})
    assert grouped == {"test": {"sharpe": 1.0}, "train": {"sharpe": 2.0, "seconds": 3.0}, "other": {"timesteps": 4.0}}


def test_plot_titles_name_symbol_period_source_and_headline_numbers():
    title = plot_title("AAPL", "test split", start="2021-08-17", end="2021-12-31",
                       source="csv:/long/path/dj30_2020_2021.csv", synthetic=False, model_return=-0.318,
                       benchmark_return=0.075)
    assert title == ("AAPL test split 2021-08-17 to 2021-12-31 | data: csv:dj30_2020_2021.csv\n"
                     "model -31.8 % vs buy-and-hold +7.5 %")
    assert "SYNTHETIC prices" in plot_title("DEMO", "test split", start=None, end=None, source="synthetic",
                                            synthetic=True, model_return=None, benchmark_return=None)


def _outcome(tokens: int):
    start = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
    transcript = [
        {"agent": "user", "type": "TextMessage", "content": "review AAPL", "prompt_tokens": 0, "completion_tokens": 0},
        {"agent": "technical_analyst", "type": "TextMessage", "content": "trend up", "prompt_tokens": tokens,
         "completion_tokens": tokens // 2},
        {"agent": "guardrail", "type": "FinalDecision", "content": '{"action": "BUY"}', "prompt_tokens": 0,
         "completion_tokens": 0},
    ]
    for i, line in enumerate(transcript):
        line["timestamp"] = (start + timedelta(seconds=i)).isoformat()
    decision = TradeDecision(action="BUY", confidence=0.7, entry=10.0, stop_loss=9.0, take_profit=12.0,
                             rationale="the trend is up and the model agrees", key_factors=["trend up"])
    return SimpleNamespace(transcript=transcript, decision=decision, fallback_reason=None, messages=2,
                           guardrail_notes=[], usage={"total_tokens": tokens + tokens // 2})


@pytest.mark.parametrize("reports_tokens", [False, True])
def test_the_review_trace_has_a_span_per_message_and_tokens_only_when_reported(tracking_store, reports_tokens):
    outcome = _outcome(tokens=120)
    experiment = mlflow.get_experiment_by_name("trademaster_autogen").experiment_id
    with mlflow.start_run(experiment_id=experiment) as run:
        trace_id = log_review_trace("AAPL", {"as_of": "2021-12-31", "model": {"suggestion": "BUY"}}, outcome,
                                    reviewer="test", reports_tokens=reports_tokens)
    (trace,) = mlflow.search_traces(locations=[experiment], run_id=run.info.run_id, return_type="list")
    assert trace.info.trace_id == trace_id and trace.info.request_metadata["mlflow.sourceRun"] == run.info.run_id
    root = next(s for s in trace.data.spans if s.parent_id is None)
    spans = sorted((s for s in trace.data.spans if s.parent_id == root.span_id), key=lambda s: s.name)
    assert [s.name for s in spans] == ["01 user: TextMessage", "02 technical_analyst: TextMessage", "03 guardrail: FinalDecision"]
    assert root.outputs["decision"]["action"] == "BUY" and spans[2].outputs == {"action": "BUY"}
    assert spans[1].start_time_ns < spans[1].end_time_ns  # from the messages' own timestamps
    usage = [s.get_attribute("mlflow.chat.tokenUsage") for s in spans]
    if reports_tokens:
        assert usage == [None, {"input_tokens": 120, "output_tokens": 60, "total_tokens": 180}, None]
    else:
        assert usage == [None, None, None]


def test_the_transcript_reads_as_markdown_and_html():
    outcome = _outcome(tokens=0)
    text = transcript_markdown("AAPL", outcome, reviewer="rules", reports_tokens=False)
    assert text.startswith("# AAPL review: BUY (confidence 0.70)")
    assert "## 2. technical_analyst (TextMessage)\n" in text and '```json\n{\n  "action": "BUY"\n}\n```' in text
    page = transcript_html(text, "AAPL review")
    assert "<h2>2. technical_analyst (TextMessage)</h2>" in page and "<script" not in page
    hostile = transcript_html("## <script>alert(1)</script>", "x")
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile
