"""MLflow plumbing shared by every entry point: where runs go, what code made them, how they end.

The embedded default is a SQLite store inside the project folder (``mlruns.db``) with artifacts in
``mlartifacts/`` beside it; ``MLFLOW_TRACKING_URI`` overrides it (a team points it at an ``mlflow
server``). A SQLite store anywhere keeps its artifacts beside itself (``<store dir>/mlartifacts``),
never in ``./mlruns`` of whatever folder a command ran from.

Every run lands in the configured experiment (``RunConfig.experiment_name``, default
``trademaster_autogen``): ``mlflow run`` without ``--experiment-name`` creates its run in
*Default*; ``stage_run`` moves such a run (a new run in the right experiment with the same tags
and parameters; the stray one is tagged ``tradeflow.moved_to`` and deleted). A run started in any
other named experiment is refused with a one-line reason (its run ends FAILED saying so).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from tradeflow.errors import InputError
from tradeflow.names import PROJECT_ROOT
from tradeflow.runs.records import MAX_TAG_CHARS, Tag

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlruns.db'}"
DEFAULT_ARTIFACT_ROOT = (PROJECT_ROOT / "mlartifacts").as_uri()

# Tags we set on every run: the names live in ``tradeflow.runs.records.Tag``; these aliases keep the
# older imports working.


DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default" experiment


class WrongExperiment(InputError):
    """A run was started in an experiment other than the configured one (one line, says how to fix)."""


def tracking_uri() -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` or the embedded SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure_tracking() -> str:
    """Point the fluent API at the tracking store and return its URI."""
    uri = tracking_uri()
    os.environ.setdefault("MLFLOW_TRACKING_URI", uri)
    quiet_credentialed_urls(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def quiet_credentialed_urls(uri: str) -> None:
    """MLflow prints "View run ... at: <tracking URI>/#/..." to stdout (and model URLs): with a
    ``user:password@`` in the URI that line carries the password, so MLflow is told not to print
    them (the stage's own output and the run's links say where the run is, without it)."""
    from tradeflow.redaction import strip_credentials

    if strip_credentials(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        os.environ["MLFLOW_PRINT_MODEL_URLS_ON_CREATION"] = "false"


def sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database (``<db dir>/mlartifacts``): a store
    outside the project must not fill the project's ``mlartifacts/``. None for other stores."""
    if not uri.startswith("sqlite:"):
        return None
    database = uri.split(":///", 1)[1].split("?", 1)[0] if ":///" in uri else ""
    if not database or database == ":memory:":
        return DEFAULT_ARTIFACT_ROOT
    return (Path(database).expanduser().resolve().parent / "mlartifacts").as_uri()


def ensure_experiment(name: str) -> str:
    """Create the experiment once (a SQLite store's artifacts go beside the store)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = sqlite_artifact_root(tracking_uri())
    # The MLflow 3 UI shows a "model training" experiment with its runs table first.
    tags = {Tag.EXPERIMENT_KIND: "custom_model_development",
            Tag.NOTE: "tradeflow: one parent run per symbol's pipeline (named after its decision), "
                     "its stages nested under it; reviews are in the Traces tab."}
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
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
        commit = git(root, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    diff = git(root, "diff", "HEAD", "--binary", "--", ".", ":(exclude)*.db")
    untracked = git(root, "ls-files", "--others", "--exclude-standard", "-z")
    if not diff and not untracked:
        return commit
    digest = hashlib.sha256(diff.encode())
    for name in sorted(filter(None, untracked.split("\0"))):
        path = root / name
        digest.update(name.encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{commit}+dirty.{digest.hexdigest()[:12]}"


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout


def home_run(run_id: str, experiment_name: str, client: MlflowClient | None = None) -> str:
    """The id of the run to record into: ``run_id`` if it is in ``experiment_name``; a moved copy
    if ``mlflow run`` put it in Default; ``WrongExperiment`` if it was started in another one."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    target_id = ensure_experiment(experiment_name)
    if run.info.experiment_id == target_id:
        return run_id
    current = client.get_experiment(run.info.experiment_id).name
    if run.info.experiment_id != DEFAULT_EXPERIMENT_ID:
        raise WrongExperiment(
            f"run {run_id} was started in experiment '{current}' but tradeflow records to "
            f"'{experiment_name}' (experiment_name); drop --experiment-name or pass --experiment-name "
            f"{experiment_name}, or set experiment_name='{current}' (TRADEFLOW_EXPERIMENT_NAME or -P config)")
    tags = {**run.data.tags, Tag.MOVED_FROM: run_id}
    moved = client.create_run(target_id, start_time=run.info.start_time, tags=tags)
    # MLflow logs MLproject params shell-quoted, "" as "''": keep only the ones that were set,
    # unquoted, so each step logs the resolved value of the others under the same name.
    params = {k: v for k, v in recorded_params(run.data.params).items() if v != ""}
    if params:
        client.log_batch(moved.info.run_id, params=[Param(k, v) for k, v in params.items()])
    client.set_tag(run_id, Tag.MOVED_TO, moved.info.run_id)
    client.set_tag(run_id, Tag.NOTE,
                   f"Moved to experiment `{experiment_name}` as run `{moved.info.run_id}` (tradeflow records every "
                   "run in its configured experiment).")
    client.update_run(run_id, name=f"moved to {experiment_name}")
    # `mlflow run` marks its run terminated when the process ends and fails if it was deleted:
    # a detached helper deletes the stub once that has happened.
    subprocess.Popen([sys.executable, "-m", "tradeflow.runs.tracking", "--delete-when-terminated", run_id],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()})
    print(f"note: `mlflow run` started run {run_id} in experiment '{current}'; recording in experiment "
          f"'{experiment_name}' as run {moved.info.run_id} instead (the stub is deleted when `mlflow run` ends)",
          file=sys.stderr, flush=True)
    _MOVED.append((run_id, experiment_name, moved.info.run_id))
    return moved.info.run_id


#: (stub run id, experiment, the run holding the results) of each run ``home_run`` moved in this process
_MOVED: list[tuple[str, str, str]] = []


def moved_note() -> str | None:
    """The last line a step prints when ``mlflow run`` started it in Default: ``mlflow run`` then
    prints its own stub's id ("=== Run (ID ...) succeeded ==="), which is deleted, not the results."""
    if not _MOVED:
        return None
    stub, experiment, moved = _MOVED[-1]
    return (f"results: run {moved} in experiment '{experiment}' (the run id `mlflow run` prints next, {stub}, "
            "is its placeholder in Default, deleted once it ends)")

def recorded_params(params: dict[str, str]) -> dict[str, str]:
    """The parameters as they were passed, from what ``mlflow.projects.run`` logged.

    MLflow logs entry-point parameters shell-quoted (``''`` for an empty value, ``'{"a": 1}'``
    for JSON); this undoes the quoting so a re-run gets the original values.
    """
    out = {}
    for key, value in params.items():
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            try:
                parts = shlex.split(value)
            except ValueError:
                parts = [value]
            value = parts[0] if len(parts) == 1 else value
            value = "" if value == "''" else value
        out[key] = value
    return out


def delete_when_terminated(run_id: str, *, timeout_s: float = 6 * 3600) -> bool:
    """Wait for ``mlflow run`` to mark its stub run terminated, then delete it; True if deleted."""
    import time

    from mlflow.entities import RunStatus

    client = MlflowClient(tracking_uri())
    deadline, delay = time.monotonic() + timeout_s, 0.2
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run.info.lifecycle_stage == "deleted":
            return False
        if RunStatus.is_terminated(RunStatus.from_string(run.info.status)):
            client.delete_run(run_id)
            return True
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
    return False


def log_own_params(values: dict[str, object]) -> None:
    """Log each MLproject parameter's resolved value under its own name, unless already logged
    (``mlflow run`` logged the raw ``-P`` values; a logged param cannot change)."""
    run = mlflow.active_run()
    if run is None:
        return
    logged = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: "" if v is None else str(v) for k, v in values.items() if k not in logged}
    if fresh:
        mlflow.log_params(fresh)


def log_resolved_config(cfg: Any, own_params: dict[str, object], artifact_file: str) -> None:
    """What a run was asked and what it used: its MLproject parameters under their own names, the
    flat ``cfg.*`` view, any adjustments made to the config, and the resolved config as a file."""
    log_own_params(own_params)
    mlflow.log_params(cfg.flat_params())
    if cfg.adjustments:
        mlflow.set_tag(Tag.CONFIG_ADJUSTMENTS, "; ".join(cfg.adjustments))
    mlflow.log_dict(json.loads(cfg.to_json()), artifact_file)


@contextmanager
def stage_run(stage: str, *, experiment_name: str, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, under ``mlflow run``) the run of one stage and end it honestly.

    The run is always in ``experiment_name`` (see the module docstring). On any exception the run
    is marked FAILED with ``tradeflow.failure_reason`` set to the exception's one-line message,
    then the exception propagates (the process exits non-zero).
    """
    with stage_tempdir(stage):
        yield from _stage_run(stage, experiment_name=experiment_name, tags=tags)


@contextmanager
def stage_tempdir(stage: str) -> Iterator[Path]:
    """Every temporary file or directory of the stage (ours and MLflow's: artifact downloads make
    ``mkdtemp`` directories nobody removes) under one directory, removed when the stage ends."""
    import shutil
    import tempfile

    previous = tempfile.tempdir
    root = tempfile.mkdtemp(prefix=f"tradeflow-{stage}-")
    tempfile.tempdir = root
    try:
        yield Path(root)
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(root, ignore_errors=True)


def _stage_run(stage: str, *, experiment_name: str, tags: dict[str, str] | None) -> Iterator[mlflow.ActiveRun]:
    configure_tracking()
    experiment_id = ensure_experiment(experiment_name)
    if os.environ.get("MLFLOW_RUN_ID"):
        run_id = home_run(os.environ["MLFLOW_RUN_ID"], experiment_name)
        os.environ["MLFLOW_RUN_ID"] = run_id
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id  # traces follow the run's experiment
        mlflow.set_experiment(experiment_id=experiment_id)
        run = mlflow.start_run(run_id=run_id)
    else:
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
        run = mlflow.start_run(experiment_id=experiment_id)
    mlflow.set_tags({Tag.STAGE: stage, Tag.CODE_VERSION: code_version(), **(tags or {})})
    try:
        yield run
    except BaseException as exc:
        reason = one_line(exc)
        try:
            mlflow.set_tags({Tag.FAILURE: reason[:MAX_TAG_CHARS],
                             **({Tag.FAILURE_PERMANENT: "true"} if getattr(exc, "retryable", True) is False else {})})
            log.debug("stage %s failed:\n%s", stage, traceback.format_exc())
        finally:
            mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (our own errors are already one line), secrets masked: it
    becomes ``tradeflow.failure_reason`` and the printed error."""
    from tradeflow.redaction import redact

    text = redact(" ".join(str(exc).split())) or exc.__class__.__name__
    if exc.__class__.__module__.startswith("tradeflow") or isinstance(exc, ValueError):
        return text
    return f"{exc.__class__.__name__}: {text}"


def fail_cli(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit (used before any run or expensive work)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":  # python -m tradeflow.runs.tracking --delete-when-terminated <run_id>
    if len(sys.argv) == 3 and sys.argv[1] == "--delete-when-terminated":
        delete_when_terminated(sys.argv[2])
    else:
        fail_cli("usage: python -m tradeflow.runs.tracking --delete-when-terminated <run_id>")
