"""Throwaway MLflow tracking stores for tests, written once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

EXPERIMENT = "trademaster_autogen"


_template: Path | None = None


def migrated_template() -> Path:
    """An empty SQLite store, migrated once per process (MLflow's migrations: 2-10 s on the 2-core
    box; a copy: milliseconds). A copy is what a fresh store would be: the same schema, only the
    ``Default`` experiment, the same id sequence. Removed at exit."""
    global _template
    if _template is None or not _template.exists():
        import atexit
        import shutil
        import tempfile

        from mlflow.tracking import MlflowClient

        directory = Path(tempfile.mkdtemp(prefix="tradeflow-store-template-"))
        atexit.register(shutil.rmtree, directory, True)
        MlflowClient(f"sqlite:///{directory / 'mlruns.db'}").search_experiments()  # runs the migrations
        _template = directory / "mlruns.db"
    return _template


def sqlite_store(root: Path, experiment: str = EXPERIMENT) -> str:
    """A SQLite store ``root/mlruns.db`` with ``experiment`` (artifacts in ``root/artifacts``).

    Created here, in one process, before anything fans out: concurrent first opens of a new SQLite
    store race on MLflow's schema migrations. A new store is a copy of ``migrated_template``."""
    import shutil

    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "mlruns.db").exists():  # (a second experiment in an existing store: no copy)
        shutil.copyfile(migrated_template(), root / "mlruns.db")
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
