"""Every run lands in the configured experiment, whichever way it starts; a SQLite store keeps its
artifacts beside itself. Real SQLite stores; the `mlflow run` CLI path end to end is in
tests/test_browser.py (the demo, without --experiment-name)."""

from __future__ import annotations

import os
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tradeflow.runs.records import Tag
from tradeflow.runs.tracking import WrongExperiment, ensure_experiment, sqlite_artifact_root, stage_run


@pytest.fixture
def bare_store(tmp_path, monkeypatch):
    """A new SQLite store in a folder of its own, as `mlflow run` would first meet it."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # a command run from elsewhere must not write ./mlruns here
    mlflow.set_tracking_uri(uri)
    yield uri, tmp_path
    mlflow.set_tracking_uri(None)


def _mlflow_run_stub(client: MlflowClient, experiment_id: str) -> str:
    """What `mlflow run` creates before our code starts: a run with the raw, shell-quoted -P values."""
    run = client.create_run(experiment_id, tags={"mlflow.project.entryPoint": "train_backtest",
                                                 "mlflow.source.type": "PROJECT", "mlflow.source.git.commit": "abc123"})
    for key, value in {"symbol": "AAPL", "epochs": "''", "config": """'{"seed": 7}'"""}.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def test_sqlite_artifacts_live_beside_the_store(bare_store):
    uri, tmp = bare_store
    experiment_id = ensure_experiment("trademaster_autogen")
    location = MlflowClient().get_experiment(experiment_id).artifact_location
    assert location == (tmp / "store" / "mlartifacts").as_uri()
    assert sqlite_artifact_root("sqlite:////data/x/mlruns.db") == "file:///data/x/mlartifacts"
    assert sqlite_artifact_root("postgresql+psycopg2://u@h/db") is None
    with stage_run("train_backtest", experiment_name="trademaster_autogen") as run:
        mlflow.log_text("hello", "note.txt")
    assert (tmp / "store" / "mlartifacts" / run.info.run_id / "artifacts" / "note.txt").is_file()
    assert not (tmp / "mlruns").exists()


@pytest.mark.slow  # the stub is deleted by a detached helper process
def test_a_run_mlflow_started_in_default_is_moved(bare_store, monkeypatch, capsys):
    client = MlflowClient()
    stub = _mlflow_run_stub(client, "0")  # `mlflow run` without --experiment-name -> Default
    monkeypatch.setenv("MLFLOW_RUN_ID", stub)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    with stage_run("train_backtest", experiment_name="trademaster_autogen") as run:
        moved_id = run.info.run_id
        assert os.environ["MLFLOW_RUN_ID"] == moved_id != stub
    moved = client.get_run(moved_id)
    target = client.get_experiment_by_name("trademaster_autogen")
    assert moved.info.experiment_id == target.experiment_id and moved.info.status == "FINISHED"
    assert moved.data.tags[Tag.MOVED_FROM] == stub
    assert moved.data.tags["mlflow.source.git.commit"] == "abc123"  # reproduce reads these
    assert moved.data.tags["mlflow.project.entryPoint"] == "train_backtest"
    # the -P values that were set are kept, unquoted; the '' ones are left for the step to resolve
    assert moved.data.params == {"symbol": "AAPL", "config": '{"seed": 7}'}
    assert "recording in experiment 'trademaster_autogen' as run " + moved_id in capsys.readouterr().err
    from tradeflow.cli import main_wrapper

    import signal

    before = signal.getsignal(signal.SIGTERM)
    try:
        main_wrapper(lambda: None)  # a step's last line says where the results are (mlflow run prints the stub next)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"results: run {moved_id} in experiment 'trademaster_autogen' (the run id `mlflow run` prints next, "
        f"{stub}, is its placeholder in Default, deleted once it ends)")

    assert client.get_run(stub).data.tags[Tag.MOVED_TO] == moved_id
    # `mlflow run` ends its own run when the process exits; the helper then deletes the stub
    client.set_terminated(stub, "FINISHED")
    deadline = time.monotonic() + 60
    while client.get_run(stub).info.lifecycle_stage != "deleted" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert client.get_run(stub).info.lifecycle_stage == "deleted"
    assert client.search_runs(["0"]) == []  # Default shows nothing


def test_a_run_started_in_another_named_experiment_is_refused(bare_store, monkeypatch):
    client = MlflowClient()
    other = client.create_experiment("someone_elses")
    stub = _mlflow_run_stub(client, other)
    monkeypatch.setenv("MLFLOW_RUN_ID", stub)
    with pytest.raises(WrongExperiment) as raised:
        with stage_run("train_backtest", experiment_name="trademaster_autogen"):
            pytest.fail("the step must not run")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"run {stub} was started in experiment 'someone_elses' but tradeflow records to "
                              "'trademaster_autogen'")
    assert "--experiment-name trademaster_autogen" in message and "TRADEFLOW_EXPERIMENT_NAME" in message
    assert client.get_run(stub).info.experiment_id == other  # nothing was moved


def test_refusal_through_the_entry_point_fails_the_run_with_the_reason(bare_store, monkeypatch, capsys):
    from entrypoints import review as review_entry

    client = MlflowClient()
    stub = client.create_run(client.create_experiment("elsewhere")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", stub)
    evidence = bare_store[1] / "evidence.json"
    evidence.write_text('{"symbol": "AAPL", "indicators": {}, "model": {}, "latest_bars": []}')
    with pytest.raises(SystemExit) as exited:
        review_entry.main(["--evidence_uri", str(evidence)])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: run {stub} was started in experiment 'elsewhere'")
    run = client.get_run(stub)
    assert run.info.status == "FAILED" and run.data.tags["tradeflow.failure_reason"] == err.removeprefix("error: ")


def test_without_mlflow_run_the_configured_experiment_is_used_even_if_env_says_otherwise(bare_store, monkeypatch):
    client = MlflowClient()
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", client.create_experiment("stale"))
    with stage_run("pipeline", experiment_name="my_research") as run:
        pass
    assert client.get_experiment(client.get_run(run.info.run_id).info.experiment_id).name == "my_research"
