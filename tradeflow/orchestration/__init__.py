"""Everything behind the pipeline DAGs (``trademaster_autogen_pipeline_workflow``,
``finagent_autogen_pipeline_workflow``); the DAG files in ``dags/`` are thin.

One DAG run = one batch of symbols::

    resolve_targets -> open_dag_run -> run_symbol[symbol] (dynamic mapping) -> finalize (all_done)

One module per concern:

- ``settings``: DAG and task ids, the per-DAG config layer, ``DagSettings`` (parse time);
- ``context``: ``RunContext`` (what a task knows of its Airflow run), the ``dag_run.conf`` layer,
  ``fail_now`` / ``skip``;
- ``targets``: ``resolve_targets``: ``conf.symbol`` (checked against its WebUI link when
  ``BACKEND_API_URL`` is set), else the WebUI's assigned symbols (enabled, ACTIVE link to this DAG,
  priority desc then symbol, at most ``max_symbols``, inside their sessions). Empty is valid;
- ``dag_run``: the DAG-run parent run (``open_dag_run``, RUNNING until ``finalize``), its tags and
  the verdict from task states, XComs and the MLflow children;
- ``symbol``: ``run_symbol``: config layering (defaults < TRADEFLOW_* env < WebUI link config <
  ``dag_run.conf``), then the ``pipeline`` entry point as a child of the DAG-run parent on the
  executor; raises on failure so that Airflow retries (same ``execution_id`` = the Airflow run id);
- ``executors`` / ``databricks``: ``local`` and ``databricks`` behind one protocol
  (``ExecutionResult``); the Databricks side is ``deploy/databricks/run_pipeline.py``;
- ``dag_builder``: the DAG objects (plain and staged shapes).

Import cost matters: DAG files import this package at parse time, so only the standard library,
``tradeflow.config`` / ``tradeflow.settings`` (pydantic, which Airflow has loaded already) are
imported at module level. mlflow, requests, the Databricks provider and the WebUI client load
inside tasks.
"""

from tradeflow.orchestration.context import OrchestrationError, RunContext, conf_layer, fail_now, skip
from tradeflow.orchestration.dag_run import finalize, mapped_task_states, open_dag_run, record_failed_symbol_run, symbol_runs
from tradeflow.orchestration.databricks import (
    DATABRICKS_RUNNER,
    DATABRICKS_SPEC,
    DatabricksExecutor,
    databricks_outcome,
    databricks_run_spec,
    git_source,
)
from tradeflow.orchestration.execution import ExecutionResult, Executor
from tradeflow.orchestration.executors import EXECUTORS, LocalExecutor, get_executor
from tradeflow.orchestration.dag_settings import DAG_ID, FINAGENT_DAG_ID, PIPELINE_LAYERS, RESOLVE_TASK, RUN_SYMBOL_TASK, DagSettings
from tradeflow.names import PROJECT_ROOT
from tradeflow.orchestration.symbol import (
    CSV_SUFFIXES,
    check_link_files,
    csv_roots,
    pipeline_parameters,
    run_symbol,
    symbol_config,
)
from tradeflow.orchestration.targets import resolve_targets

__all__ = [
    "CSV_SUFFIXES", "DAG_ID", "DATABRICKS_RUNNER", "DATABRICKS_SPEC", "EXECUTORS", "FINAGENT_DAG_ID",
    "PIPELINE_LAYERS", "PROJECT_ROOT", "RESOLVE_TASK", "RUN_SYMBOL_TASK", "DagSettings", "DatabricksExecutor", "ExecutionResult", "Executor",
    "LocalExecutor", "OrchestrationError", "RunContext", "check_link_files", "conf_layer", "csv_roots",
    "databricks_outcome", "databricks_run_spec", "fail_now", "finalize", "get_executor", "git_source",
    "mapped_task_states", "open_dag_run", "pipeline_parameters", "record_failed_symbol_run", "resolve_targets",
    "run_symbol", "skip", "symbol_config", "symbol_runs",
]
