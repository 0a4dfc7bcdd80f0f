"""Pipeline bookkeeping in process, on a real SQLite store: cache keys and abandoned stage runs."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from tradeflow.pipeline.cache import cache_key, find_cached
from tradeflow.pipeline.run import close_abandoned_runs
from tradeflow.runs.records import Tag


def _pipeline_run(client, exp, execution_id, status):
    run = client.create_run(exp, tags={"tradeflow.stage": "pipeline", "tradeflow.execution_id": execution_id,
                                       "tradeflow.symbol": "AAPL"})
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_a_retry_closes_stage_runs_a_killed_attempt_left_running(tracking_store):
    client = MlflowClient()
    exp = client.get_experiment_by_name("trademaster_autogen").experiment_id
    killed = _pipeline_run(client, exp, "exec-9", "FAILED")
    orphan = client.create_run(exp, tags={"mlflow.parentRunId": killed}).info.run_id
    finished = client.create_run(exp, tags={"mlflow.parentRunId": killed}).info.run_id
    client.set_terminated(finished, "FINISHED")
    still_running = _pipeline_run(client, exp, "exec-9", "RUNNING")  # a concurrent attempt: hands off
    its_child = client.create_run(exp, tags={"mlflow.parentRunId": still_running}).info.run_id
    other_execution = _pipeline_run(client, exp, "exec-10", "FAILED")
    other_orphan = client.create_run(exp, tags={"mlflow.parentRunId": other_execution}).info.run_id
    current = _pipeline_run(client, exp, "exec-9", "RUNNING")

    assert close_abandoned_runs(client, exp, "AAPL", "exec-9", current) == [orphan]
    assert client.get_run(orphan).info.status == "FAILED"
    assert client.get_run(orphan).data.tags["tradeflow.failure_reason"].startswith(f"abandoned: its pipeline attempt {killed}")
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(its_child).info.status == "RUNNING"
    assert client.get_run(other_orphan).info.status == "RUNNING"


def test_cache_key_changes_with_every_input_and_finds_only_finished_runs(tracking_store):
    base = dict(code="abc", data_digest="d1")
    key = cache_key("train_backtest", {"symbol": "AAPL", "config": "{}"}, **base)
    assert key == cache_key("train_backtest", {"config": "{}", "symbol": "AAPL"}, **base)
    assert key != cache_key("inference", {"symbol": "AAPL", "config": "{}"}, **base)
    assert key != cache_key("train_backtest", {"symbol": "AAPL", "config": "{}"}, code="abc+dirty.1", data_digest="d1")
    assert key != cache_key("train_backtest", {"symbol": "AAPL", "config": "{}"}, code="abc", data_digest="d2")
    client = MlflowClient()
    exp = client.get_experiment_by_name("trademaster_autogen").experiment_id
    failed = client.create_run(exp, tags={Tag.CACHE_KEY: key}).info.run_id
    client.set_terminated(failed, "FAILED")
    assert find_cached(client, exp, key) is None
    done = client.create_run(exp, tags={Tag.CACHE_KEY: key}).info.run_id
    client.set_terminated(done, "FINISHED")
    assert find_cached(client, exp, key) == done
