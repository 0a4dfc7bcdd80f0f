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


def test_a_retry_closes_the_pipeline_a_dead_worker_left_running_and_takes_its_lease_at_once(tracking_store):
    """A SIGKILLed worker leaves its pipeline RUNNING with a fresh lease claim: the orchestrator's
    retry closes it (and its stage run), and the new attempt holds the lease without waiting."""
    import time

    from mlflow.entities import RunTag

    from tradeflow.pipeline.cache import StageLease
    from tradeflow.pipeline.run import close_dead_attempts

    client = MlflowClient()
    exp = client.get_experiment_by_name("trademaster_autogen").experiment_id
    dag_parent = client.create_run(exp).info.run_id

    def attempt(task_id="run_symbol", parent=dag_parent, execution="exec-1"):
        run = client.create_run(exp, tags={Tag.STAGE: "pipeline", Tag.EXECUTION_ID: execution, Tag.SYMBOL: "AAPL",
                                           Tag.PARENT_RUN_ID: parent})
        client.log_param(run.info.run_id, "task_id", task_id)
        return run

    dead = attempt()
    stamp = f"{time.time():.6f}"  # a live claim: heartbeat just now, as a killed holder leaves it
    client.log_batch(dead.info.run_id, tags=[RunTag(Tag.LEASE.format(stage="train_backtest"), "k1"),
                                             RunTag(Tag.LEASE_CLAIMED_AT.format(stage="train_backtest"), stamp),
                                             RunTag(Tag.LEASE_HEARTBEAT.format(stage="train_backtest"), stamp),
                                             RunTag(Tag.LEASE_HELD.format(stage="train_backtest"), "k1")])
    train = client.create_run(exp, tags={Tag.PARENT_RUN_ID: dead.info.run_id}).info.run_id
    other_task = attempt(task_id="train_backtest.run_symbol")  # another task of the DAG run: not ours
    other_parent = attempt(parent="another-dag-run")

    closed = close_dead_attempts(client, exp, "AAPL", "exec-1", dag_parent_id=dag_parent, task_id="run_symbol",
                                 reason="Airflow started try 2")
    assert closed == [dead.info.run_id]
    assert client.get_run(dead.info.run_id).info.status == "FAILED"
    assert client.get_run(dead.info.run_id).data.tags[Tag.FAILURE] == "abandoned: Airflow started try 2"
    assert client.get_run(train).info.status == "FAILED"
    assert client.get_run(train).data.tags[Tag.FAILURE].startswith(f"abandoned: its pipeline attempt {dead.info.run_id}")
    assert client.get_run(other_task.info.run_id).info.status == "RUNNING"
    assert client.get_run(other_parent.info.run_id).info.status == "RUNNING"

    retry = attempt()
    started = time.monotonic()
    lease = StageLease(client, retry, "train_backtest", "k1", settle_s=0.5, poll_s=0.2, timeout_s=30)
    assert lease.acquire_or_adopt() is None  # holds: the dead claim no longer counts
    assert time.monotonic() - started < 10  # not the 60 s a stale heartbeat takes
