"""The run-records module: look-ups, the FAILED ending and the artifact declarations, on a real
SQLite store. (That a real pipeline writes exactly these records is tests/test_records_golden.py.)"""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tradeflow.runs.records import (
    MAX_TAG_CHARS,
    RECORDS,
    Artifact,
    InferenceRecord,
    ReviewRecord,
    Tag,
    TrainRecord,
    children_of,
    find_by_tags,
    mark_failed,
)


@pytest.fixture
def store(tracking_store):
    client = MlflowClient(tracking_store)
    return client, client.get_experiment_by_name("trademaster_autogen").experiment_id


def test_find_by_tags_matches_every_tag_quotes_values_and_filters_status(store):
    client, exp = store
    quoted = "manual__2026-12-02T10:00:00+00:00 'retry'"
    wanted = client.create_run(exp, tags={Tag.EXECUTION_ID: quoted, Tag.SYMBOL: "AAPL"}).info.run_id
    client.create_run(exp, tags={Tag.EXECUTION_ID: quoted, Tag.SYMBOL: "MSFT"})
    client.create_run(exp, tags={Tag.EXECUTION_ID: "other", Tag.SYMBOL: "AAPL"})
    found = find_by_tags(client, exp, {Tag.EXECUTION_ID: quoted, Tag.SYMBOL: "AAPL"})
    assert [r.info.run_id for r in found] == [wanted]
    assert find_by_tags(client, [exp], {Tag.EXECUTION_ID: quoted, Tag.SYMBOL: "AAPL"}, status="FINISHED") == []
    client.set_terminated(wanted, "FINISHED")
    assert [r.info.run_id for r in find_by_tags(client, exp, {Tag.SYMBOL: "AAPL"}, status="FINISHED")] == [wanted]


def test_children_of_lists_the_nested_runs_only(store):
    client, exp = store
    parent = client.create_run(exp).info.run_id
    kids = [client.create_run(exp, tags={Tag.PARENT_RUN_ID: parent}).info.run_id for _ in range(2)]
    client.create_run(exp, tags={Tag.PARENT_RUN_ID: "f" * 32})
    assert sorted(r.info.run_id for r in children_of(client, exp, parent)) == sorted(kids)
    client.set_terminated(kids[0], "FINISHED")
    assert [r.info.run_id for r in children_of(client, exp, parent, status="RUNNING")] == [kids[1]]


def test_mark_failed_ends_the_run_with_the_reason_cut_to_what_mlflow_keeps(store):
    client, exp = store
    run_id = client.create_run(exp).info.run_id
    mark_failed(client, run_id, "x" * (MAX_TAG_CHARS + 100), extra_tags={Tag.FAILED_STAGE: "review"})
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[Tag.FAILURE] == "x" * MAX_TAG_CHARS and run.data.tags[Tag.FAILED_STAGE] == "review"


def test_an_artifact_is_written_and_read_through_its_declaration(store):
    client, exp = store
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_dict({"decision": {"action": "HOLD"}}, ReviewRecord.decision.path)
    run_id = run.info.run_id
    assert ReviewRecord.decision.uri(run_id) == f"runs:/{run_id}/decision.json"
    assert ReviewRecord.decision.load_json(run_id) == {"decision": {"action": "HOLD"}}
    assert InferenceRecord.price_plot.under(run.info.artifact_uri + "/") == f"{run.info.artifact_uri}/plots/price.png"


def test_each_step_publishes_its_declaration_as_artifacts():
    from tradeflow.pipeline import reproduce
    from tradeflow.pipeline import run as pipeline
    from tradeflow.steps import inference, persist, review, train_backtest

    for module in (train_backtest, inference, review, persist):
        assert module.ARTIFACTS == RECORDS[module.STAGE].described()
    assert pipeline.ARTIFACTS == {"pipeline_summary.json": RECORDS["pipeline"].summary.description}
    assert reproduce.ARTIFACTS == RECORDS["reproduce"].described()
    assert TrainRecord.MODEL.path == "model" and "model" not in TrainRecord.described()
    paths = [a.path for record in RECORDS.values() for a in record.artifacts().values() if isinstance(a, Artifact)]
    assert all(p and not p.startswith("/") for p in paths)


def test_tag_names_are_unique_and_namespaced():
    names = {k: v for k, v in vars(Tag).items() if k.isupper() and isinstance(v, str)}
    assert len(set(names.values())) == len(names), "two Tag attributes share a name"
    assert all(v.split(".", 1)[0] in ("tradeflow", "review", "webui", "finagent", "reproduce", "mlflow")
               for v in names.values())
    assert Tag.STAGE_RUN_ID.format(stage="review") == "tradeflow.stage.review.run_id"
