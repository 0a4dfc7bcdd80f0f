"""The DAG-run parent run: one MLflow run per DAG run (``open_dag_run``), the parent of every
symbol's pipeline run, and the DAG run's verdict (``finalize``) from the task states, the XComs
and the MLflow children."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tradeflow.settings import resolve_with_env
from tradeflow.errors import ConfigError
from tradeflow.orchestration.context import RunContext, conf_layer, fail_now, skip
from tradeflow.orchestration.dag_settings import RESOLVE_TASK, RUN_SYMBOL_TASK
from tradeflow.runs.records import Tag, children_of, find_by_tags, mark_failed
from tradeflow.settings import current

log = logging.getLogger(__name__)

# Tags of the DAG-run parent run (the symbol runs carry tradeflow.symbol / execution_id too); the
# names live in tradeflow.runs.records.Tag, these are the Airflow side's short aliases.


def _experiment_id(targets: Sequence[Mapping[str, Any]], ctx: RunContext) -> str:
    """The experiment of the DAG-run parent (and so of every symbol run): env < conf config.

    Also validates the ``dag_run.conf`` layer once, for the whole run: a bad conf fails fast."""
    from tradeflow.runs.tracking import configure_tracking, ensure_experiment

    try:
        cfg = resolve_with_env({"symbol": targets[0]["symbol"]}, conf_layer(ctx))
    except ConfigError as exc:
        fail_now(f"config of this DAG run (TRADEFLOW_* environment + dag_run.conf): {exc}")
    configure_tracking()
    return ensure_experiment(cfg.experiment_name)


def open_dag_run(targets: Sequence[Mapping[str, Any]] | None, ctx: RunContext) -> dict[str, str]:
    """Create (or, on a task retry, find) the MLflow run of this DAG run; RUNNING until finalize.

    Creating it also creates the tracking store before the fan-out (a new SQLite store must not
    be created by parallel processes)."""
    if not targets:
        skip(f"empty batch: no symbols to run for {ctx.dag_id}; assign symbols in the WebUI "
             "(Workflow Symbols, active link to this DAG) or trigger with conf.symbol")
    from mlflow.tracking import MlflowClient

    experiment_id = _experiment_id(targets, ctx)
    client = MlflowClient()
    existing = find_by_tags(client, experiment_id, {Tag.RUN_LEVEL: "dag_run", Tag.DAG_ID: ctx.dag_id,
                                                    Tag.AIRFLOW_RUN_ID: ctx.run_id}, max_results=1)
    symbols = [t["symbol"] for t in targets]
    if existing:
        run_id = existing[0].info.run_id
        log.info("reusing DAG-run parent run %s (task retry)", run_id)
        if existing[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(
            experiment_id,
            run_name=f"{ctx.dag_id} {ctx.run_id}",
            tags={
                Tag.RUN_LEVEL: "dag_run",
                Tag.DAG_ID: ctx.dag_id,
                Tag.AIRFLOW_RUN_ID: ctx.run_id,
                Tag.EXECUTION_ID: ctx.run_id,
                Tag.SYMBOL_COUNT: str(len(symbols)),
                Tag.SYMBOLS: ",".join(symbols)[:5000],
                Tag.EXECUTOR: current().executor,
                Tag.DAG_CONF: json.dumps(dict(ctx.conf), sort_keys=True, default=str)[:5000],
            },
        )
        run_id = run.info.run_id
        log.info("DAG-run parent run %s in experiment %s: %d symbol(s)", run_id, experiment_id, len(symbols))
    return {"run_id": run_id, "experiment_id": experiment_id}


def record_failed_symbol_run(client, parent: Mapping[str, str], symbol: str, reason: str, ctx: RunContext) -> str:
    """A FAILED symbol-level run under the parent for a symbol that never reached its pipeline
    (bad link config), so the MLflow tree shows every symbol of the batch."""
    run = client.create_run(parent["experiment_id"], run_name=f"{symbol} pipeline", tags={
        Tag.PARENT_RUN_ID: parent["run_id"], Tag.SYMBOL: symbol, Tag.STAGE: "pipeline",
        Tag.EXECUTION_ID: ctx.run_id, Tag.AIRFLOW_TRY: str(ctx.try_number)})
    mark_failed(client, run.info.run_id, reason)
    return run.info.run_id


def symbol_runs(client, parent: Mapping[str, str]) -> dict[str, Any]:
    """The latest child run of the parent per symbol (``tradeflow.symbol`` tag, else the
    ``symbol`` param that ``mlflow.projects.run`` logged)."""
    latest: dict[str, Any] = {}
    for run in children_of(client, parent["experiment_id"], parent["run_id"]):
        symbol = run.data.tags.get(Tag.SYMBOL) or run.data.params.get("symbol")
        if symbol and symbol.upper() not in latest:
            latest[symbol.upper()] = run
    return latest


def finalize(
    targets: Sequence[Mapping[str, Any]] | None,
    parent: Mapping[str, str] | None,
    results: Sequence[Mapping[str, Any] | None] | None,
    ctx: RunContext,
    *,
    task_states: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Close the DAG-run parent and decide the DAG run's outcome (trigger rule all_done).

    A symbol succeeded only if every available witness agrees: its mapped task ended ``success``
    (``task_states``, by map index), it returned a FINISHED XCom, and its latest MLflow child run
    under the parent is FINISHED. Anything else names it as failed."""
    if targets is None:
        fail_now(f"no targets: task {RESOLVE_TASK} failed (WebUI backend unreachable? see its log)")
    if not targets:
        message = (f"empty batch: no enabled symbol with an active link to {ctx.dag_id} in the WebUI; "
                   "nothing ran (not an error)")
        log.warning(message)
        return {"symbols": 0, "failed": [], "message": message}
    if not parent:
        fail_now("the DAG-run parent run was not created (task open_dag_run failed; see its log); "
                  f"no symbol ran: {', '.join(t['symbol'] for t in targets)}")

    from mlflow.tracking import MlflowClient

    from tradeflow.runs.notes import describe_dag_run
    from tradeflow.runs.tracking import configure_tracking

    configure_tracking()
    client = MlflowClient()
    latest = symbol_runs(client, parent)
    returned = {r["symbol"]: r for r in (results or []) if r}
    failed: dict[str, str] = {}
    for index, target in enumerate(targets):
        symbol = target["symbol"]
        run = latest.get(symbol)
        state = (task_states or {}).get(index)
        reason = None
        if run is None:
            reason = "no pipeline run was recorded" + (f" (task {RUN_SYMBOL_TASK}[{index}] {state})" if state else "")
        elif run.info.status != "FINISHED":
            reason = run.data.tags.get(Tag.FAILURE) or f"pipeline run {run.info.run_id} {run.info.status}"
        elif state is not None and state != "success":
            reason = f"task {RUN_SYMBOL_TASK}[{index}] ended {state}"
        elif symbol not in returned or returned[symbol].get("status") != "FINISHED":
            reason = f"task {RUN_SYMBOL_TASK}[{index}] returned no result"
        if reason:
            failed[symbol] = " ".join(reason.split())

    ok = [t["symbol"] for t in targets if t["symbol"] not in failed]
    client.log_metric(parent["run_id"], "symbols_total", len(targets))
    client.log_metric(parent["run_id"], "symbols_failed", len(failed))
    client.log_metric(parent["run_id"], "symbols_succeeded", len(ok))
    client.set_tag(parent["run_id"], Tag.SUCCEEDED_SYMBOLS, ",".join(ok)[:5000])
    describe_dag_run(client, parent, ctx.dag_id, ctx.run_id, [t["symbol"] for t in targets], latest, failed)
    if failed:
        summary = f"{len(failed)} of {len(targets)} symbol(s) failed: " + "; ".join(
            f"{symbol}: {reason}" for symbol, reason in failed.items())
        mark_failed(client, parent["run_id"], summary, extra_tags={Tag.FAILED_SYMBOLS: ",".join(failed)[:5000]})
        fail_now(summary[:2000])
    client.set_tag(parent["run_id"], Tag.FAILED_SYMBOLS, "")
    client.set_terminated(parent["run_id"], "FINISHED")
    log.info("all %d symbol(s) finished: %s", len(ok), ", ".join(ok))
    return {"symbols": len(targets), "failed": [], "succeeded": ok}


def mapped_task_states(ti: Any, ctx: RunContext, task_id: str = RUN_SYMBOL_TASK) -> dict[int, str] | None:
    """``{map_index: state}`` of the mapped task in this DAG run (``tradeflow.airflow_compat``: the
    Task SDK on Airflow 3, the metadata DB on 2.x), or None."""
    from tradeflow.airflow_compat import task_states

    try:
        return task_states(ti, dag_id=ctx.dag_id, task_id=task_id, run_id=ctx.run_id)
    except Exception as exc:  # no API / no DB: fall back to XComs + MLflow
        log.warning("could not read task states of %s (%s); relying on XComs and MLflow", task_id, exc)
        return None
