"""``TRADEFLOW_EXECUTOR=databricks``: a symbol's pipeline as a Databricks run.

The run checks this repository out at the current commit (``git_source``) and runs
``deploy/databricks/run_pipeline.py`` (the far side: the ``pipeline`` entry point as a child of the
DAG-run parent, on the same tracking server); the task submits it, polls it and maps its state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tradeflow.runs.records import Tag
from tradeflow.orchestration.context import OrchestrationError, RunContext
from tradeflow.orchestration.dag_run import symbol_runs
from tradeflow.orchestration.execution import ExecutionResult
from tradeflow.names import PROJECT_ROOT
from tradeflow.settings import Settings, current

log = logging.getLogger(__name__)

DATABRICKS_SPEC = PROJECT_ROOT / Settings.model_fields["databricks_spec"].default
DATABRICKS_RUNNER = "deploy/databricks/run_pipeline.py"  # relative to the repository root


def git_source(project_root: Path = PROJECT_ROOT, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``git_source`` of the Databricks run: the CURRENT commit of this checkout.

    ``TRADEFLOW_GIT_URL`` / ``TRADEFLOW_GIT_COMMIT`` / ``TRADEFLOW_GIT_PROVIDER`` override what
    git says. Databricks checks the commit out of the remote: it must be pushed, and uncommitted
    changes are not part of it (warned)."""
    from tradeflow.runs.tracking import code_version

    env = current(environ)
    commit = env.git_commit or ""
    if not commit:
        version = code_version(project_root)
        if version == "unknown":
            raise OrchestrationError(f"{project_root} is not a git checkout with a commit; "
                                     "set TRADEFLOW_GIT_COMMIT (Databricks runs a commit)")
        commit, _, dirty = version.partition("+")
        if dirty:
            log.warning("the checkout has uncommitted changes; Databricks runs commit %s without them", commit)
    url = env.git_url or ""
    if not url:
        try:
            url = subprocess.run(["git", "-C", str(project_root), "remote", "get-url", "origin"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            raise OrchestrationError("no git remote 'origin'; set TRADEFLOW_GIT_URL to the https URL "
                                     "Databricks clones") from None
    if m := re.fullmatch(r"git@([^:]+):(.+)", url):  # scp-like ssh -> https (Databricks clones https)
        url = f"https://{m.group(1)}/{m.group(2)}"
    provider = env.git_provider or _git_provider(url)
    return {"git_url": url, "git_provider": provider, "git_commit": commit}


def _git_provider(url: str) -> str:
    match = re.match(r"^[a-z+]+://(?:[^@/]*@)?([^/:]+)", url)
    host = match.group(1).lower() if match else ""
    for needle, provider in (("github", "gitHub"), ("gitlab", "gitLab"), ("bitbucket", "bitbucketCloud"),
                             ("dev.azure.com", "azureDevOpsServices"), ("visualstudio.com", "azureDevOpsServices")):
        if needle in host:
            return provider
    raise OrchestrationError(f"cannot tell the git provider of {url!r}; set TRADEFLOW_GIT_PROVIDER "
                             "(gitHub, gitLab, bitbucketCloud, azureDevOpsServices, ...)")


def databricks_run_spec(
    symbol: str,
    params: Mapping[str, str],
    *,
    parent: Mapping[str, str],
    ctx: RunContext,
    environ: Mapping[str, str] | None = None,
    project_root: Path = PROJECT_ROOT,
) -> dict[str, Any]:
    """The ``runs/submit`` payload: our job template (``deploy/databricks/pipeline_run_submit.json``
    or ``TRADEFLOW_DATABRICKS_SPEC``) with the git source at the current commit, and a
    ``spark_python_task`` running ``deploy/databricks/run_pipeline.py`` = the ``pipeline`` entry
    point as a child of the DAG-run parent (same tracking server on both sides)."""
    settings = current(environ)
    spec_path = PROJECT_ROOT / settings.databricks_spec  # an absolute path stays as it is
    spec = json.loads(spec_path.read_text())
    spec = {k: v for k, v in spec.items() if not k.startswith("_")}  # drop "_comment" keys
    tasks = spec.get("tasks") or []
    if len(tasks) != 1 or "spark_python_task" not in tasks[0]:
        raise OrchestrationError(f"{spec_path}: expected exactly one task with a spark_python_task")
    task = tasks[0]
    arguments = ["--entry-point", "pipeline", "--experiment-id", parent["experiment_id"],
                 "--parent-run-id", parent["run_id"]]
    for key, value in params.items():
        arguments += ["-P", f"{key}={value}"]
    task["task_key"] = task.get("task_key") or "pipeline"
    task["spark_python_task"] = {**task["spark_python_task"], "python_file": DATABRICKS_RUNNER,
                                 "source": "GIT", "parameters": arguments}
    if cluster_id := settings.databricks_cluster_id:
        task.pop("new_cluster", None)
        task.pop("job_cluster_key", None)
        task["existing_cluster_id"] = cluster_id
    spec["git_source"] = git_source(project_root, environ)
    spec["run_name"] = f"tradeflow {symbol} {ctx.run_id}"[:100]
    identity = f"{ctx.dag_id}|{ctx.run_id}|{symbol}|{ctx.try_number}"
    spec["idempotency_token"] = hashlib.sha256(identity.encode()).hexdigest()[:64]
    return spec


def databricks_outcome(life_cycle_state: str, result_state: str | None, state_message: str | None) -> tuple[str, str | None]:
    """Map a terminal Databricks run state to an MLflow-like status and a reason."""
    if life_cycle_state == "TERMINATED" and result_state == "SUCCESS":
        return "FINISHED", None
    detail = f"Databricks run ended {life_cycle_state}/{result_state or '-'}"
    if state_message:
        detail += f": {' '.join(state_message.split())}"
    return "FAILED", detail


class DatabricksExecutor:
    """Submit the symbol's pipeline to Databricks (``DatabricksHook.submit_run``), wait for it and
    map its result state. Cancels the Databricks run if this task is interrupted."""

    kind = "databricks"

    def run(self, symbol: str, params: Mapping[str, str], *, parent: Mapping[str, str], ctx: RunContext,
            environ: Mapping[str, str] | None = None) -> ExecutionResult:
        from airflow.providers.databricks.hooks.databricks import DatabricksHook
        from mlflow.tracking import MlflowClient

        settings = current(environ)
        poll_s = settings.databricks_poll_s
        spec = databricks_run_spec(symbol, params, parent=parent, ctx=ctx, environ=environ)
        hook = DatabricksHook(databricks_conn_id=settings.databricks_conn_id, retry_limit=3,
                              retry_delay=min(poll_s, 10.0))
        started = time.perf_counter()
        db_run_id = hook.submit_run(spec)
        page_url = ""
        try:
            page_url = hook.get_run_page_url(db_run_id)
            log.info("%s: Databricks run %s submitted (commit %s): %s", symbol, db_run_id,
                     spec["git_source"]["git_commit"], page_url)
            while True:
                state = hook.get_run_state(db_run_id)
                if state.is_terminal:
                    break
                log.info("%s: Databricks run %s %s", symbol, db_run_id, state.life_cycle_state)
                time.sleep(poll_s)
        except BaseException:
            log.warning("%s: cancelling Databricks run %s", symbol, db_run_id)
            try:
                hook.cancel_run(db_run_id)
            except Exception as exc:  # best effort: the original error matters more
                log.warning("could not cancel Databricks run %s: %s", db_run_id, exc)
            raise
        status, failure = databricks_outcome(state.life_cycle_state, state.result_state, state.state_message)
        client = MlflowClient()
        child = symbol_runs(client, parent).get(symbol)
        run_id = child.info.run_id if child is not None else None
        if run_id:
            client.set_tag(run_id, Tag.DATABRICKS_RUN, str(db_run_id))
            if page_url:
                client.set_tag(run_id, Tag.DATABRICKS_URL, page_url)
        if status == "FINISHED" and child is not None and child.info.status != "FINISHED":
            status, failure = "FAILED", f"Databricks run succeeded but MLflow run {run_id} is {child.info.status}"
        return ExecutionResult(run_id=run_id, status=status, seconds=time.perf_counter() - started,
                               failure=failure and f"{failure} ({page_url or db_run_id})", remote_id=str(db_run_id))
