"""Task ``run_symbol``: one symbol's config (defaults < env < WebUI link config < ``dag_run.conf``)
and its ``pipeline`` run, a child of the DAG-run parent, on the configured executor."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tradeflow.runs.records import Tag
from tradeflow.config import RunConfig, normalise_layer
from tradeflow.errors import ConfigError
from tradeflow.errors import StepError
from tradeflow.orchestration.context import RunContext, conf_layer, fail_now
from tradeflow.orchestration.dag_run import record_failed_symbol_run
from tradeflow.orchestration.executors import get_executor
from tradeflow.orchestration.dag_settings import PIPELINE_LAYERS, RUN_SYMBOL_TASK
from tradeflow.names import PROJECT_ROOT
from tradeflow.settings import current, parse_bool, resolve_with_env

log = logging.getLogger(__name__)


def symbol_config(target: Mapping[str, Any], ctx: RunContext) -> RunConfig:
    """defaults < TRADEFLOW_* env < WebUI link config < dag_run.conf, for one symbol."""
    symbol = target["symbol"]
    link = normalise_layer(target.get("link_config") or {}, origin=f"WebUI link config of {symbol}")
    # The link may not move the symbol elsewhere; the DAG decides which symbol runs.
    link.pop("symbol", None)
    check_link_files(link, symbol)
    check_link_safety(link, symbol)
    pinned = PIPELINE_LAYERS.get(ctx.dag_id, {})
    cfg = resolve_with_env({"symbol": symbol}, pinned, link, conf_layer(ctx))
    for key, value in pinned.items():
        if getattr(cfg, key) != value:
            raise ConfigError(f"{ctx.dag_id} runs {key}={value}; the WebUI link config or dag_run.conf asked for "
                              f"{key}={getattr(cfg, key)} (use that pipeline's DAG instead)")
    return cfg


#: Settings that keep a bad model from trading: a WebUI link config (anyone who can edit a link)
#: may not set them unless the operator allows it (``TRADEFLOW_LINK_SAFETY_OVERRIDES=1``).
SAFETY_KEYS = ("do_no_harm_gate",)


def check_link_safety(link: Mapping[str, Any], symbol: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a link config that sets a safety setting, unless the operator flag is on."""
    touched = [key for key in SAFETY_KEYS if key in link]
    if touched and not current(environ).link_safety_overrides:
        raise ConfigError(f"WebUI link config of {symbol} sets {', '.join(touched)}: safety settings are not "
                          "settable from a link (the operator can allow it with TRADEFLOW_LINK_SAFETY_OVERRIDES=1)")


#: Files a WebUI link config may name as ``data_source=csv:...`` (anyone who can edit a link in the
#: WebUI could otherwise make the worker read any file it can): these roots, or TRADEFLOW_CSV_ROOTS.
CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".parquet", ".pq")


def csv_roots(environ: Mapping[str, str] | None = None) -> list[Path]:
    return current(environ).csv_root_paths(PROJECT_ROOT)


def check_link_files(link: Mapping[str, Any], symbol: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a link ``data_source=csv:`` path outside ``csv_roots`` or not a data file. The path is
    named by position only; nothing of the file is read or echoed."""
    source = link.get("data_source")
    if not isinstance(source, str) or not source.strip().startswith("csv:"):
        return
    roots = csv_roots(environ)
    for index, raw in enumerate(source.strip()[4:].split(","), start=1):
        path = Path(raw.strip()).expanduser()
        real = (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
        if not real.name.lower().endswith(CSV_SUFFIXES):
            raise ConfigError(f"WebUI link config of {symbol}: data_source file {index} is not a CSV or Parquet "
                              f"file ({', '.join(CSV_SUFFIXES)})")
        if not any(real.is_relative_to(root) for root in roots):
            raise ConfigError(f"WebUI link config of {symbol}: data_source file {index} is outside the directories a "
                              f"WebUI link may read ({os.pathsep.join(map(str, roots))}; set TRADEFLOW_CSV_ROOTS)")


def pipeline_parameters(cfg: RunConfig, ctx: RunContext, *, force: bool) -> dict[str, str]:
    """``-P`` parameters of the ``pipeline`` entry point for one symbol."""
    return {
        "symbol": cfg.symbol,
        "mode": cfg.mode,
        "execution_id": ctx.run_id,
        "force": "true" if force else "false",
        "dag_id": ctx.dag_id,
        "task_id": ctx.task_id or RUN_SYMBOL_TASK,
        "config": cfg.to_json(),
    }


def run_symbol(target: Mapping[str, Any], parent: Mapping[str, str] | None, ctx: RunContext, *,
               mode: str | None = None) -> dict[str, Any]:
    """One symbol's ``pipeline`` run, child of the DAG-run parent. Returns a small dict (XCom);
    raises on failure (Airflow retries it; a bad config fails at once, without retries).
    ``mode`` overrides the config's (the per-stage task groups of ``dag_builder``)."""
    from mlflow.tracking import MlflowClient

    from tradeflow.runs.tracking import configure_tracking

    symbol = target["symbol"]
    if not parent:
        fail_now(f"{symbol}: the DAG-run parent run does not exist (see task open_dag_run)")
    configure_tracking()
    client = MlflowClient()
    force = parse_bool(ctx.get("force", False), "force")
    try:
        cfg = symbol_config(target, ctx)
    except ConfigError as exc:
        reason = f"{symbol}: {exc}"
        record_failed_symbol_run(client, parent, symbol, reason, ctx)
        fail_now(reason)
    if mode is not None and cfg.mode != mode:
        cfg = cfg.override({"mode": mode})
    for note in cfg.adjustments:
        log.warning("%s: %s", symbol, note)
    params = pipeline_parameters(cfg, ctx, force=force)
    log.info("%s: pipeline mode=%s execution_id=%s force=%s try=%d config=%s", symbol, cfg.mode, ctx.run_id,
             force, ctx.try_number, params["config"])

    if ctx.try_number > 1:  # an earlier try whose worker died left its pipeline run RUNNING: close it
        from tradeflow.pipeline.run import close_dead_attempts

        close_dead_attempts(client, parent["experiment_id"], symbol, ctx.run_id, dag_parent_id=parent["run_id"],
                            task_id=params["task_id"],
                            reason=f"Airflow started try {ctx.try_number} of {params['task_id']} for {symbol}; the "
                                   "earlier try ended without closing this run (its worker was killed or lost)")
    executor = get_executor(current().executor)
    result = executor.run(symbol, params, parent=parent, ctx=ctx)
    if result.run_id:
        client.set_tag(result.run_id, Tag.AIRFLOW_TRY, str(ctx.try_number))
    if not result.ok:
        message = (f"{symbol}: pipeline {result.status}" + (f" (run {result.run_id})" if result.run_id else "")
                   + f": {result.failure or 'no reason given'}")
        if result.run_id and (permanent := permanent_failure(client, result.run_id)):
            fail_now(f"{message} [not retried: {permanent}]")  # a retry cannot fix a config or a missing package
        raise StepError(message)
    log.info("%s: pipeline run %s FINISHED in %.1fs", symbol, result.run_id, result.seconds)
    return {"symbol": symbol, "run_id": result.run_id, "status": result.status, "executor": executor.kind,
            "try_number": ctx.try_number, "seconds": round(result.seconds, 1)}


def permanent_failure(client: Any, pipeline_run_id: str) -> str | None:
    """The reason a retry cannot help, when the pipeline run or one of its stage runs is tagged
    ``tradeflow.failure_permanent`` (a ``ConfigError``, an engine that is not installed); else None."""
    run = client.get_run(pipeline_run_id)
    runs = [run, *client.search_runs([run.info.experiment_id],
                                     f"tags.`mlflow.parentRunId` = '{pipeline_run_id}'", max_results=50)]
    for candidate in runs:
        if candidate.data.tags.get(Tag.FAILURE_PERMANENT) == "true":
            return candidate.data.tags.get(Tag.FAILURE) or "permanent failure"
    return None
