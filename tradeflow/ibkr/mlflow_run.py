"""MLflow for the IBKR workflows: one run per DAG run, every task logs into it.

The run is found again by its tags (``tradeflow.dag_id`` + ``tradeflow.execution_id``), so a
retried ``start_tracking`` reuses it. Tasks log with ``MlflowClient`` and the run id (no active
run: tasks may run in different processes). Metric keys are ``<symbol>.<what>`` or ``<what>``;
artifacts sit under ``market_data/``, ``indicators/``, ``charts/``, ``signals/``, ``risk/``,
``orders/`` and ``portfolio/``. A failing task tags ``tradeflow.failed.<task>`` (cleared when a retry
succeeds); ``finish_run`` closes the run FAILED naming them, or FINISHED.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tradeflow.runs.records import Tag, find_by_tags
from tradeflow.runs.tracking import code_version, configure_tracking, ensure_experiment

FAILED_PREFIX = Tag.FAILED_TASK.format(task="")


def _client():
    from mlflow.tracking import MlflowClient

    configure_tracking()
    return MlflowClient()


def open_run(*, experiment: str, dag_id: str, execution_id: str, strategy: str, kind: str,
             params: Mapping[str, Any]) -> dict[str, str]:
    """Create (or find again) the MLflow run of one DAG run; returns ``{"run_id", "experiment_id"}``."""
    client = _client()
    experiment_id = ensure_experiment(experiment)
    found = find_by_tags(client, experiment_id, {Tag.DAG_ID: dag_id, Tag.EXECUTION_ID: execution_id}, max_results=1)
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(experiment_id, run_name=f"{dag_id} {execution_id}",
                                tags={Tag.DAG_ID: dag_id, Tag.EXECUTION_ID: execution_id, Tag.WORKFLOW: kind,
                                      Tag.STRATEGY: strategy, Tag.CODE_VERSION: code_version()})
        run_id = run.info.run_id
        for key, value in params.items():
            client.log_param(run_id, key, str(value)[:6000])
    return {"run_id": run_id, "experiment_id": experiment_id}


def experiment_of(run_id: str) -> str:
    return _client().get_run(run_id).info.experiment_id


def log_metrics(run_id: str, metrics: Mapping[str, Any]) -> None:
    client = _client()
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            client.log_metric(run_id, key, float(value))


def log_json(run_id: str, artifact_path: str, payload: Any) -> None:
    """``artifact_path`` like ``orders/AAPL.json``."""
    _client().log_dict(run_id, payload, artifact_path)


def log_file(run_id: str, local_path: str | Path, artifact_dir: str) -> None:
    _client().log_artifact(run_id, str(local_path), artifact_dir)


def log_text(run_id: str, artifact_path: str, text: str) -> None:
    _client().log_text(run_id, text, artifact_path)


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value)[:5000])


def mark_task(run_id: str, task_id: str, error: BaseException | None) -> None:
    """Record a task's failure on the run (or clear an earlier attempt's)."""
    client = _client()
    key = Tag.FAILED_TASK.format(task=task_id)
    if error is not None:
        client.set_tag(run_id, key, " ".join(str(error).split())[:5000] or type(error).__name__)
    elif key in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, key)


def finish_run(run_id: str) -> list[str]:
    """Close the run: FAILED (reason names the failed tasks) or FINISHED. Returns the failed tasks."""
    client = _client()
    tags = client.get_run(run_id).data.tags
    failed = sorted(k.removeprefix(FAILED_PREFIX) for k in tags if k.startswith(FAILED_PREFIX))
    if failed:
        client.set_tag(run_id, Tag.FAILURE, "failed tasks: " + ", ".join(
            f"{t} ({tags[FAILED_PREFIX + t][:200]})" for t in failed))
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
    return failed


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tradeflow-ibkr-"))


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str)
