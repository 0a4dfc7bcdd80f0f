"""A failure a retry cannot fix (a ConfigError, an engine that is not installed) is tagged on its
stage run and fails the Airflow task at once; any other failure stays retryable. Real SQLite store."""

from __future__ import annotations

import pytest

from tests.support.stores import EXPERIMENT, sqlite_store, tracking_to
from tradeflow.engines.base import EngineUnavailable
from tradeflow.errors import ConfigError, StepError
from tradeflow.runs.records import Tag


def _failed_stage(error: Exception, parent_id: str | None = None) -> str:
    import mlflow

    from tradeflow.runs.tracking import stage_run

    tags = {Tag.PARENT_RUN_ID: parent_id} if parent_id else None
    with pytest.raises(type(error)), stage_run("train_backtest", experiment_name=EXPERIMENT, tags=tags) as run:
        run_id = run.info.run_id
        raise error
    assert mlflow.get_run(run_id).info.status == "FAILED"
    return run_id


def test_only_config_and_not_installed_failures_are_permanent(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tradeflow.orchestration.symbol import permanent_failure

    with tracking_to(sqlite_store(tmp_path), monkeypatch) as uri:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        for error, permanent in ((ConfigError("invalid parameter 'epochs': -1"), True),
                                 (EngineUnavailable("engine 'finagent' is unavailable: not installed"), True),
                                 (StepError("data source answered 503"), False)):
            parent = client.create_run(experiment).info.run_id
            child = _failed_stage(error, parent)
            client.set_terminated(parent, "FAILED")
            assert (client.get_run(child).data.tags.get(Tag.FAILURE_PERMANENT) == "true") is permanent
            found = permanent_failure(client, parent)
            assert (found == str(error)) if permanent else found is None, (error, found)
