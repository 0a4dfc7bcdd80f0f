"""The stage-cache lease (tradeflow/pipeline/cache.py ``StageLease``): concurrent cold runs that need the
same stage run it once; the others wait and adopt its result; a dead holder is taken over; a waiter
gives up clearly after its timeout.

Fast tests: the lease itself, threads as pipelines, on a SQLite store. Slow test: three concurrent
``pipeline`` processes of one symbol against an MLflow server on PostgreSQL (tests/support)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, require_shared_data
from tradeflow.runs.records import Tag
from tradeflow.pipeline.cache import StageLease, StageLeaseTimeout

KEY = "f" * 64


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds); each test has its experiment."""
    tmp = tmp_path_factory.mktemp("lease")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    MlflowClient(uri).search_experiments()  # create it before any thread uses it
    return uri


@pytest.fixture
def store(sqlite_uri, request, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    client = MlflowClient(sqlite_uri)
    return client, client.create_experiment(f"lease-{request.node.name}")


def _parent(client: MlflowClient, experiment_id: str):
    return client.create_run(experiment_id, tags={"tradeflow.stage": "pipeline"})


def _finish_stage(client: MlflowClient, experiment_id: str) -> str:
    run = client.create_run(experiment_id, tags={"tradeflow.stage": "train_backtest"})
    client.set_tag(run.info.run_id, Tag.CACHE_KEY, KEY)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_three_concurrent_claims_run_the_stage_once_and_the_others_adopt_it(store):
    client, experiment_id = store
    parents = [_parent(client, experiment_id) for _ in range(3)]
    results: dict[str, str | None] = {}
    trained: list[str] = []
    barrier = threading.Barrier(3)

    def pipeline(parent) -> None:
        lease = StageLease(MlflowClient(), parent, "train_backtest", KEY, settle_s=0.5, poll_s=0.2)
        barrier.wait()
        adopted = lease.acquire_or_adopt()
        results[parent.info.run_id] = adopted
        if adopted is None:  # the holder "trains"
            time.sleep(1.0)
            trained.append(_finish_stage(MlflowClient(), experiment_id))
            lease.release()

    threads = [threading.Thread(target=pipeline, args=(parent,)) for parent in parents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(trained) == 1
    assert sorted(results.values(), key=str) == sorted([None, trained[0], trained[0]], key=str)
    for parent in parents:  # nothing of the lease is left behind
        assert not [t for t in client.get_run(parent.info.run_id).data.tags if t.startswith("tradeflow.lease")]


def test_a_holder_that_dies_is_taken_over(store):
    client, experiment_id = store
    dead = _parent(client, experiment_id)
    StageLease(client, dead, "train_backtest", KEY, settle_s=0).acquire_or_adopt()  # claims, then "is killed"
    waiter = StageLease(client, _parent(client, experiment_id), "train_backtest", KEY, settle_s=0.1, poll_s=0.1,
                        stale_s=1.0)
    started = time.monotonic()
    assert waiter.acquire_or_adopt() is None  # its heartbeat went stale: the waiter runs the stage
    assert 0.8 < time.monotonic() - started < 10
    # a holder whose pipeline run ended (FAILED) stops counting at once
    client.set_terminated(waiter.run_id, "FAILED")
    third = StageLease(client, _parent(client, experiment_id), "train_backtest", KEY, settle_s=0.1, stale_s=1.0)
    assert third.acquire_or_adopt() is None


def test_a_waiter_gives_up_after_its_timeout_naming_the_holder(store):
    client, experiment_id = store
    holder = StageLease(client, _parent(client, experiment_id), "train_backtest", KEY, settle_s=0)
    assert holder.acquire_or_adopt() is None
    waiter = StageLease(client, _parent(client, experiment_id), "train_backtest", KEY, settle_s=0.1, poll_s=0.1,
                        timeout_s=0.5)
    with pytest.raises(StageLeaseTimeout, match=rf"waited 0 s for pipeline run {holder.run_id}, which runs it"):
        waiter.acquire_or_adopt()
    assert "tradeflow.lease.train_backtest" not in client.get_run(waiter.run_id).data.tags


def test_an_uncontended_claim_holds_at_once_and_a_later_rival_with_an_earlier_clock_waits(store, monkeypatch):
    """No rival: no ``settle_s`` wait (issue 26). A rival whose claim shows up after the fast hold
    waits for it even when its own clock says it claimed first (the held mark orders first)."""
    import tradeflow.pipeline.cache as cache

    client, experiment_id = store
    first = StageLease(client, _parent(client, experiment_id), "train_backtest", KEY, settle_s=5.0)
    started = time.monotonic()
    assert first.acquire_or_adopt() is None
    assert time.monotonic() - started < 1.0  # 5 s settle not paid (SQLite round trips only)
    real_time = time.time
    monkeypatch.setattr(cache.time, "time", lambda: real_time() - 100.0)  # the rival's clock is behind
    rival = StageLease(client, _parent(client, experiment_id), "train_backtest", KEY, settle_s=0.1, poll_s=0.1,
                       timeout_s=0.5)
    with pytest.raises(StageLeaseTimeout, match=f"pipeline run {first.run_id}"):
        rival.acquire_or_adopt()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_concurrent_cold_pipelines_on_postgres_train_once(tmp_path):
    """Three ``pipeline`` processes (mode train_backtest, one symbol, no cache yet) at once, against
    an MLflow server on PostgreSQL: one train_backtest run; the other two pipelines adopt it."""
    from tests.support.load import EXPERIMENT, subprocess_env, tiny_config_env
    from tests.support.servers import MlflowServer, PostgresServer, skip_if_no_postgres

    require_shared_data()
    skip_if_no_postgres()
    with PostgresServer() as pg, MlflowServer(pg.sqlalchemy_url, startup_timeout=240) as server:
        client = MlflowClient(server.url)
        experiment_id = client.create_experiment(EXPERIMENT)  # before the fan-out
        env = subprocess_env({"MLFLOW_TRACKING_URI": server.url, **tiny_config_env(),
                              "TRADEFLOW_EPOCHS": "2"})  # a key no other test has cached
        env.pop("BACKEND_API_URL", None)
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "entrypoints.pipeline", "--symbol", "AAPL", "--mode",
                                   "train_backtest", "--execution_id", f"lease-{index}"], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for index in range(3)]
        outputs = [proc.communicate(timeout=540)[0] for proc in procs]
        seconds = time.perf_counter() - started
        assert [proc.returncode for proc in procs] == [0, 0, 0], "\n----\n".join(out[-3000:] for out in outputs)
        runs = client.search_runs([experiment_id], max_results=100)
        stages = [r for r in runs if r.data.tags.get("tradeflow.stage") == "train_backtest"]
        pipelines = [r for r in runs if r.data.tags.get("tradeflow.stage") == "pipeline"]
        leases = sorted(p.data.tags.get("tradeflow.stage.train_backtest.lease", "?") for p in pipelines)
        used = {p.data.tags["tradeflow.stage.train_backtest.run_id"] for p in pipelines}
        print(f"\nlease: 3 cold pipelines in {seconds:.0f} s: {len(stages)} train_backtest run(s); "
              f"pipelines {leases}; all use {used}")
        assert len(stages) == 1 and stages[0].info.status == "FINISHED"
        assert used == {stages[0].info.run_id}
        assert leases.count("held") == 1 and all(lease in {"adopted", "cached"} for lease in leases if lease != "held")
        assert all(p.info.status == "FINISHED" for p in pipelines) and len(pipelines) == 3
