"""Where a symbol's ``pipeline`` entry point runs: one protocol, one typed result.

``local`` runs it on this worker (``mlflow.projects.run``); ``databricks`` submits it as a
Databricks run (``tradeflow.orchestration.databricks``). Either way the pipeline run is a child of
the DAG-run parent; ``TRADEFLOW_EXECUTOR`` chooses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tradeflow.orchestration.context import OrchestrationError
from tradeflow.orchestration.execution import ExecutionResult, Executor

if TYPE_CHECKING:
    from tradeflow.orchestration.context import RunContext



class LocalExecutor:
    """The ``pipeline`` entry point on this worker, through ``mlflow.projects.run``."""

    kind = "local"

    def run(self, symbol: str, params: Mapping[str, str], *, parent: Mapping[str, str],
            ctx: RunContext) -> ExecutionResult:
        from tradeflow.pipeline.stages import WARM_LATER, WARM_MODULES
        from tradeflow.runs.projects import run_entry_point, warm_stage_processes

        # the pipeline process itself forks from this machine's warm process (shared by the
        # worker's successive tasks), and its stages from the same one: a symbol's task pays no
        # interpreter start or imports (issue 26); the pipeline run says how its stages started
        from contextlib import nullcontext

        from tradeflow.settings import current

        shared = current().fork_server and current().fork_server_idle_s > 0  # a server of its own would not pay
        with (warm_stage_processes(list(WARM_MODULES), later=list(WARM_LATER), label_parent=False) if shared
              else nullcontext()) as warm:
            outcome = run_entry_point("pipeline", dict(params), experiment_id=parent["experiment_id"],
                                      parent_run_id=parent["run_id"], run_name=f"{symbol} pipeline")
        if warm is not None and warm.label != "forked":  # the pipeline knows it started fresh, not why
            _label_fallback(outcome.run_id, warm.label)
        return ExecutionResult(run_id=outcome.run_id, status=outcome.status, seconds=float(outcome.seconds),
                               failure=outcome.failure)


def _label_fallback(run_id: str, label: str) -> None:
    """``Tag.PIPELINE_PROCESS`` with why the pipeline did not fork from the warm process."""
    from mlflow.tracking import MlflowClient

    from tradeflow.runs.records import Tag

    MlflowClient().set_tag(run_id, Tag.PIPELINE_PROCESS, label)


def _databricks() -> Executor:
    from tradeflow.orchestration.databricks import DatabricksExecutor

    return DatabricksExecutor()


#: ``TRADEFLOW_EXECUTOR`` value -> its executor (== the values ``tradeflow.settings.Settings.executor`` accepts)
EXECUTORS = {"local": LocalExecutor, "databricks": _databricks}


def get_executor(kind: str) -> Executor:
    try:
        return EXECUTORS[kind]()
    except KeyError:
        raise OrchestrationError(f"TRADEFLOW_EXECUTOR={kind!r}: use one of {', '.join(EXECUTORS)}") from None
