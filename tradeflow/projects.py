"""Run an MLproject entry point as a child run of a given parent, through ``mlflow.projects.run``.

Nesting is done by tagging ``mlflow.parentRunId`` on the submitted run instead of resuming the
parent with ``mlflow.start_run(run_id=parent)``: resuming flips the parent's status on exit and is
not safe when several threads (Airflow mapped tasks, batch fan-out) nest under one parent.
The child keeps every tag ``mlflow.projects.run`` writes (entry point, params, git commit).
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.projects
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tradeflow.tracking import PROJECT_ROOT, TAG_FAILURE, create_project_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageOutcome:
    """What a child run ended as. ``failure`` is the child's one-line reason when it failed."""

    entry_point: str
    run_id: str
    status: str
    seconds: float
    failure: str | None = None
    reused: bool = False
    params: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


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


def run_entry_point(
    entry_point: str,
    parameters: dict[str, str],
    *,
    experiment_id: str,
    parent_run_id: str | None,
    project_uri: str | Path = PROJECT_ROOT,
    env_manager: str | None = None,
    run_name: str | None = None,
) -> StageOutcome:
    """Run one entry point to completion as a child of ``parent_run_id``; never raises on failure.

    ``env_manager`` defaults to ``TRADEFLOW_ENV_MANAGER`` or ``local`` (the worker's environment).
    """
    env_manager = env_manager or os.environ.get("TRADEFLOW_ENV_MANAGER", "local")
    client = MlflowClient()
    started = time.perf_counter()
    # A stray MLFLOW_RUN_ID (we may be running inside another entry point) must not leak into
    # how mlflow resolves the active run for the child.
    inherited = os.environ.pop("MLFLOW_RUN_ID", None)
    # We create the run (nested, tagged like `mlflow run` does) so that MLflow does not log the raw
    # -P values; the step logs every parameter's resolved value under its own name.
    precreated = create_project_run(entry_point, experiment_id=experiment_id, project_dir=Path(project_uri),
                                    parent_run_id=parent_run_id, run_name=run_name)
    try:
        submitted = mlflow.projects.run(
            uri=str(project_uri),
            entry_point=entry_point,
            parameters=parameters,
            experiment_id=experiment_id,
            env_manager=env_manager,
            synchronous=False,
            run_name=run_name,
            run_id=precreated,
        )
    except BaseException as exc:
        client.set_tag(precreated, TAG_FAILURE, f"entry point '{entry_point}' could not start: {' '.join(str(exc).split())[:500]}")
        client.set_terminated(precreated, "FAILED")
        raise
    finally:
        if inherited is not None:
            os.environ["MLFLOW_RUN_ID"] = inherited
    run_id = submitted.run_id
    if parent_run_id:
        client.set_tag(run_id, MLFLOW_PARENT_RUN_ID, parent_run_id)
    try:
        succeeded = submitted.wait()
    except BaseException:
        # Interrupted (Airflow timeout, SIGTERM, Ctrl-C): stop the child's process group so a
        # retry never runs beside an orphan, and close its run honestly.
        submitted.cancel()
        client.set_tag(run_id, TAG_FAILURE, f"entry point '{entry_point}' cancelled: its caller was interrupted")
        client.set_terminated(run_id, "FAILED")
        raise
    status = client.get_run(run_id).info.status
    if not RunStatus.is_terminated(RunStatus.from_string(status)):
        # The process ended without closing its run (killed, or env build failure).
        status = "FINISHED" if succeeded else "FAILED"
        client.set_terminated(run_id, status)
    failure = None
    if status != "FINISHED":
        failure = client.get_run(run_id).data.tags.get(TAG_FAILURE) or (
            f"entry point '{entry_point}' exited non-zero (run {run_id})"
        )
        if TAG_FAILURE not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, TAG_FAILURE, failure)
    seconds = time.perf_counter() - started
    log.info("stage %s run %s %s in %.1fs", entry_point, run_id, status, seconds)
    return StageOutcome(entry_point, run_id, status, seconds, failure, params=dict(parameters))
