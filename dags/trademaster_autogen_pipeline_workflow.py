"""
# TradeMaster + AutoGen pipeline, per symbol

Trains and backtests an RL trading agent, runs inference, has an AutoGen team review the evidence
and persists the decision to the trading WebUI: the MLflow `pipeline` entry point, once per symbol.

**Which symbols**

- `{"symbol": "AAPL"}`: only that symbol (its WebUI link config applies when the backend knows it).
  The WebUI auto-trigger sends `{"symbol", "conid", "workflow_symbol_id"}`.
- no `symbol`: every *enabled* WebUI Workflow Symbol with an *active* link to this DAG, by priority,
  at most `max_symbols`. None assigned: the run succeeds and says so (nothing to do).

**Per-run config** (`dag_run.conf`): `mode` (both | train_backtest | inference), `force`, and
`config`, a layer over defaults < `TRADEFLOW_*` env < the symbol's WebUI link config, e.g.
`{"config": {"trademaster": {"epochs": 5}}}`.

**Tasks**: `resolve_targets` -> `open_dag_run` (MLflow parent run of this DAG run) ->
`run_symbol` (one mapped task per symbol, child run per symbol, retried with backoff) ->
`finalize` (closes the parent; fails the DAG run naming the failed symbols).

**Where to look**: MLflow experiment `trademaster_autogen`, run `<dag_id> <run_id>` -> one
`<SYMBOL> pipeline` run per symbol -> its stage runs. WebUI: artifacts with
`execution_id` = this run id. Runbook: `docs/airflow.md`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

try:
    from tradeflow import orchestration as orch
except ImportError:  # the repository is deployed, not installed: its root holds `tradeflow`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tradeflow import orchestration as orch

SETTINGS = orch.DagSettings.from_env()


@task(task_id=orch.RESOLVE_TASK)
def resolve_targets() -> list[dict]:
    return orch.resolve_targets(orch.RunContext.from_airflow(get_current_context()))


@task
def open_dag_run(targets: list[dict]) -> dict:
    return orch.open_dag_run(targets, orch.RunContext.from_airflow(get_current_context()))


@task(task_id=orch.RUN_SYMBOL_TASK, **SETTINGS.symbol_task_args())
def run_symbol(target: dict, parent: dict) -> dict:
    context = get_current_context()
    context["tradeflow_symbol"] = target["symbol"]  # label of the mapped task in the UI
    return orch.run_symbol(target, parent, orch.RunContext.from_airflow(context))


@task(trigger_rule="all_done")
def finalize(targets: list[dict] | None, parent: dict | None, results: list[dict]) -> dict:
    context = get_current_context()
    ctx = orch.RunContext.from_airflow(context)
    states = orch.mapped_task_states(context["ti"], ctx)
    return orch.finalize(targets, parent, list(results or []), ctx, task_states=states)


@dag(
    dag_id=orch.DAG_ID,
    schedule=SETTINGS.schedule,
    catchup=False,
    doc_md=__doc__,
    params=SETTINGS.params(),
    default_args=SETTINGS.default_args(),
    max_active_runs=SETTINGS.max_active_runs,
    tags=["tradeflow", "mlflow", "trademaster", "autogen"],
)
def trademaster_autogen_pipeline_workflow():
    targets = resolve_targets()
    parent = open_dag_run(targets)
    results = run_symbol.partial(parent=parent).expand(target=targets)
    finalize(targets, parent, results)


workflow = trademaster_autogen_pipeline_workflow()
