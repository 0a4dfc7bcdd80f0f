"""Throwaway MLflow tracking stores for tests, written once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

EXPERIMENT = "trademaster_autogen"


def sqlite_store(root: Path, experiment: str = EXPERIMENT) -> str:
    """A SQLite store ``root/mlruns.db`` with ``experiment`` (artifacts in ``root/artifacts``).

    Created here, in one process, before anything fans out: concurrent first opens of a new SQLite
    store race on MLflow's schema migrations."""
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlruns.db'}"
    MlflowClient(uri).create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    return uri


@contextlib.contextmanager
def tracking_to(uri: str, monkeypatch) -> Iterator[str]:
    """Point this process (``mlflow.set_tracking_uri``) and its children (``MLFLOW_TRACKING_URI``)
    at ``uri`` for the duration; back to MLflow's default afterwards."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)
