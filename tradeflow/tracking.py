"""MLflow plumbing shared by every entry point: where runs go, what code made them, how they end.

The embedded default is a SQLite store inside the project folder (``mlruns.db``) with artifacts in
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` overrides it (a team points it at an ``mlflow server``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlruns.db'}"
DEFAULT_ARTIFACT_ROOT = (PROJECT_ROOT / "mlartifacts").as_uri()

# Tags we set on every run (namespaced so they never collide with mlflow.* system tags).
TAG_SYMBOL = "tradeflow.symbol"
TAG_STAGE = "tradeflow.stage"
TAG_CODE_VERSION = "tradeflow.code_version"
TAG_FAILURE = "tradeflow.failure_reason"
TAG_DATA_DIGEST = "tradeflow.data_digest"
TAG_DATA_SOURCE = "tradeflow.data_source"
TAG_SYNTHETIC = "tradeflow.synthetic_data"
TAG_EXECUTION_ID = "tradeflow.execution_id"


def tracking_uri() -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` or the embedded SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure_tracking() -> str:
    """Point the fluent API at the tracking store and return its URI."""
    uri = tracking_uri()
    os.environ.setdefault("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database (``<db dir>/mlartifacts``): a store
    outside the project must not fill the project's ``mlartifacts/``. None for other stores."""
    if not uri.startswith("sqlite:"):
        return None
    database = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not database or database == ":memory:":
        return DEFAULT_ARTIFACT_ROOT
    return (Path(database).expanduser().resolve().parent / "mlartifacts").as_uri()


def ensure_experiment(name: str) -> str:
    """Create the experiment once (artifacts under ``mlartifacts/`` for the embedded store)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = sqlite_artifact_root(tracking_uri())
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Created concurrently by another process: fetch it.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def code_version(root: Path = PROJECT_ROOT) -> str:
    """The git commit, suffixed with a digest of uncommitted changes (``<sha>+dirty.<hash>``).

    MLflow records only the commit; a run made from a dirty tree is not reproducible from it, so
    the stage cache keys on this value instead.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    diff = _git(root, "diff", "HEAD", "--binary", "--", ".", ":(exclude)*.db")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z")
    if not diff and not untracked:
        return commit
    digest = hashlib.sha256(diff.encode())
    for name in sorted(filter(None, untracked.split("\0"))):
        path = root / name
        digest.update(name.encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{commit}+dirty.{digest.hexdigest()[:12]}"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout


@contextmanager
def stage_run(stage: str, *, experiment_name: str, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, under ``mlflow run``) the run of one stage and end it honestly.

    On any exception the run is marked FAILED with ``tradeflow.failure_reason`` set to the
    exception's one-line message, then the exception propagates (the process exits non-zero).
    """
    configure_tracking()
    if os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    else:
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or ensure_experiment(experiment_name)
        run = mlflow.start_run(experiment_id=experiment_id)
    mlflow.set_tags({TAG_STAGE: stage, TAG_CODE_VERSION: code_version(), **(tags or {})})
    try:
        yield run
    except BaseException as exc:
        reason = one_line(exc)
        try:
            mlflow.set_tag(TAG_FAILURE, reason[:5000])
            log.debug("stage %s failed:\n%s", stage, traceback.format_exc())
        finally:
            mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (our own errors are already one line)."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    if exc.__class__.__module__.startswith("tradeflow") or isinstance(exc, ValueError):
        return text
    return f"{exc.__class__.__name__}: {text}"


def fail_cli(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit (used before any run or expensive work)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
