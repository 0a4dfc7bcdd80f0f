"""Everything behind the Airflow DAG ``trademaster_autogen_pipeline_workflow`` (the DAG file is thin).

One DAG run = one batch of symbols::

    resolve_targets -> open_dag_run -> run_symbol[symbol] (dynamic mapping) -> finalize (all_done)

- ``resolve_targets``: ``conf.symbol`` -> that symbol only (its WebUI link config when
  ``BACKEND_API_URL`` is set); otherwise the WebUI's assigned symbols (enabled, ACTIVE link to
  this DAG, priority desc then symbol, at most ``max_symbols``). An empty list is a valid answer.
- ``open_dag_run``: one MLflow run for the whole DAG run (the parent of every symbol's pipeline
  run), RUNNING until ``finalize``. An empty batch skips it and everything downstream but
  ``finalize``, which ends the DAG run successfully with a message.
- ``run_symbol``: config layering (defaults < TRADEFLOW_* env < WebUI link config <
  ``dag_run.conf``) through ``resolve_config``, then the ``pipeline`` entry point as a child of the
  DAG-run parent, locally (``run_entry_point``) or on Databricks (``TRADEFLOW_EXECUTOR``). Raises on
  failure so that Airflow retries; a retry reuses ``execution_id`` = the Airflow run id.
- ``finalize``: failures from the Airflow task states, the mapped XComs *and* the MLflow children
  of the parent run; closes the parent FINISHED/FAILED and fails the DAG run naming the symbols.

Import cost matters: the DAG file imports this module at parse time, so only the standard
library and ``tradeflow.config`` (pydantic, which Airflow has loaded already) are imported at
module level. mlflow, requests, the Databricks provider and the WebUI client load inside tasks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tradeflow.config import MAX_SYMBOLS, ConfigError, normalise_layer, resolve_config
from tradeflow.filters import filter_value

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DAG_ID = "trademaster_autogen_pipeline_workflow"  # == tradeflow.webui.DAG_ID (asserted in tests)
FINAGENT_DAG_ID = "finagent_autogen_pipeline_workflow"
#: per-DAG config layer (above the TRADEFLOW_* env, below the WebUI link config and dag_run.conf);
#: its keys are also required of the final config: a DAG runs its own engine, whatever conf says
PIPELINE_LAYERS: dict[str, dict[str, Any]] = {FINAGENT_DAG_ID: {"engine": "finagent"}}
RUN_SYMBOL_TASK = "run_symbol"
RESOLVE_TASK = "resolve_targets"
MODES = ("both", "train_backtest", "inference")
#: ``conf.symbol`` as the trigger form accepts it (normalised to upper case before use).
SYMBOL_PATTERN = r"^[A-Za-z0-9.^-]{1,20}$"
EXECUTORS = ("local", "databricks")

# Tags of the DAG-run parent run (the symbol runs carry tradeflow.symbol / execution_id too).
TAG_RUN_LEVEL = "tradeflow.run_level"  # "dag_run" on the parent
TAG_DAG_ID = "tradeflow.dag_id"
TAG_AIRFLOW_RUN_ID = "tradeflow.airflow_run_id"
TAG_SYMBOL_COUNT = "tradeflow.symbol_count"
TAG_SYMBOLS = "tradeflow.symbols"
TAG_FAILED_SYMBOLS = "tradeflow.failed_symbols"
TAG_EXECUTOR = "tradeflow.executor"
TAG_AIRFLOW_TRY = "tradeflow.airflow_try_number"
TAG_DATABRICKS_RUN = "tradeflow.databricks_run_id"
TAG_DATABRICKS_URL = "tradeflow.databricks_run_page_url"

DATABRICKS_SPEC = PROJECT_ROOT / "deploy" / "databricks" / "pipeline_run_submit.json"
DATABRICKS_RUNNER = "deploy/databricks/run_pipeline.py"  # relative to the repository root


class OrchestrationError(RuntimeError):
    """A problem the operator must fix (no retry helps); ``str(err)`` is one line."""


# --- DAG-level settings (parse time: environment only, no I/O) ---------------------------------


def _env_number(environ: Mapping[str, str], name: str, default: float, low: float, high: float,
                cast: type = int) -> Any:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise OrchestrationError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise OrchestrationError(f"{name}={raw!r} is outside {low:g}..{high:g}")
    return value


@dataclass(frozen=True)
class DagSettings:
    """Structural settings read from the environment when the DAG file is parsed."""

    schedule: str | None = None
    parallel_symbols: int = 2
    pool: str | None = None
    retries: int = 2
    retry_delay_s: float = 60.0
    max_retry_delay_s: float = 1800.0
    symbol_timeout_min: float = 180.0
    max_active_runs: int = 1
    default_max_symbols: int = MAX_SYMBOLS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DagSettings:
        env = os.environ if environ is None else environ
        schedule = (env.get("TRADEFLOW_DAG_SCHEDULE") or "").strip()
        return cls(
            schedule=None if schedule.lower() in ("", "none", "null") else schedule,
            parallel_symbols=_env_number(env, "TRADEFLOW_PARALLEL_SYMBOLS", 2, 1, MAX_SYMBOLS),
            pool=(env.get("TRADEFLOW_POOL") or "").strip() or None,
            retries=_env_number(env, "TRADEFLOW_TASK_RETRIES", 2, 0, 10),
            retry_delay_s=_env_number(env, "TRADEFLOW_RETRY_DELAY_S", 60, 0, 3600, float),
            max_retry_delay_s=_env_number(env, "TRADEFLOW_MAX_RETRY_DELAY_S", 1800, 0, 86400, float),
            symbol_timeout_min=_env_number(env, "TRADEFLOW_SYMBOL_TIMEOUT_MIN", 180, 1, 24 * 60, float),
            max_active_runs=_env_number(env, "TRADEFLOW_DAG_MAX_ACTIVE_RUNS", 1, 1, 16),
            default_max_symbols=_env_number(env, "TRADEFLOW_DAG_MAX_SYMBOLS", MAX_SYMBOLS, 1, MAX_SYMBOLS),
        )

    def default_args(self) -> dict[str, Any]:
        """Every task: retries with exponential backoff (delay x2 per try, capped), a timeout."""
        return {
            "owner": "tradeflow",
            "retries": self.retries,
            "retry_delay": timedelta(seconds=self.retry_delay_s),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(seconds=self.max_retry_delay_s),
            "execution_timeout": timedelta(minutes=10),
        }

    def symbol_task_args(self) -> dict[str, Any]:
        """The mapped per-symbol task: at most ``parallel_symbols`` at once per DAG run."""
        args: dict[str, Any] = {
            "max_active_tis_per_dagrun": self.parallel_symbols,
            "execution_timeout": timedelta(minutes=self.symbol_timeout_min),
            "map_index_template": "{{ tradeflow_symbol }}",
        }
        if self.pool:
            args["pool"] = self.pool
        return args

    def params(self) -> dict[str, Any]:
        """Trigger params, validated by Airflow (JSON schema) before the run is created."""
        from airflow.sdk import Param

        return {
            "mode": Param("both", type="string", enum=list(MODES), title="Mode",
                          description="both = train+backtest, then inference, review, persist; "
                                      "train_backtest; inference (needs a registered model)"),
            "symbol": Param(None, type=["null", "string"], pattern=SYMBOL_PATTERN, title="Symbol",
                            description="run only this symbol; empty = the WebUI's assigned symbols"),
            "max_symbols": Param(self.default_max_symbols, type="integer", minimum=1, maximum=MAX_SYMBOLS,
                                 title="Max symbols", description=f"batch cap (hard cap {MAX_SYMBOLS})"),
            "config": Param({}, type="object", title="Config overrides",
                            description='per-run config layer, e.g. {"trademaster": {"epochs": 5}}'),
            "force": Param(False, type="boolean", title="Force",
                           description="re-run every stage even if a cached run exists"),
            "conid": Param(None, type=["null", "integer", "string"], title="IBKR conid",
                           description="sent by the WebUI auto-trigger"),
            "workflow_symbol_id": Param(None, type=["null", "integer"], title="WebUI workflow symbol id",
                                        description="sent by the WebUI auto-trigger"),
        }


# --- run-time context --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """What the tasks need from Airflow's context; built directly in unit tests."""

    dag_id: str
    run_id: str
    conf: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    task_id: str = ""
    map_index: int = -1
    try_number: int = 1

    @classmethod
    def from_airflow(cls, context: Mapping[str, Any]) -> RunContext:
        ti = context["ti"]
        dag_run = context["dag_run"]
        return cls(
            dag_id=dag_run.dag_id,
            run_id=context["run_id"],
            conf=dict(dag_run.conf or {}),
            params=dict(context.get("params") or {}),
            task_id=ti.task_id,
            map_index=-1 if getattr(ti, "map_index", None) is None else ti.map_index,
            try_number=getattr(ti, "try_number", 1) or 1,
        )

    def get(self, key: str, default: Any = None) -> Any:
        """``dag_run.conf`` first (what the caller sent), then the validated params."""
        if key in self.conf and self.conf[key] is not None:
            return self.conf[key]
        return self.params.get(key, default)


def _fail_now(message: str) -> None:
    """Fail the task without retries (a retry cannot fix it)."""
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # pragma: no cover - outside Airflow
        raise OrchestrationError(message) from None
    raise AirflowFailException(message)


def _skip(message: str) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    raise AirflowSkipException(message)


def conf_layer(ctx: RunContext) -> dict[str, Any]:
    """The ``dag_run.conf`` config layer: its ``config`` object, then ``mode`` on top.

    Only what the trigger actually sent counts (``dag_run.conf``), not the param defaults, so a
    WebUI link config's ``mode`` is not overridden by the form's default.
    """
    layer: dict[str, Any] = {}
    config = ctx.conf.get("config")
    if config:
        layer = normalise_layer(config, origin="dag_run.conf.config")
    if ctx.conf.get("mode"):
        layer["mode"] = ctx.conf["mode"]
    return layer


# --- tasks -------------------------------------------------------------------------------------


def resolve_targets(ctx: RunContext, *, environ: Mapping[str, str] | None = None,
                    now: datetime | None = None) -> list[dict[str, Any]]:
    """The symbols of this DAG run, as small dicts (XCom): symbol, link_config, conid,
    workflow_symbol_id, priority. Raises ``WebUIError`` when the backend cannot be reached.

    - A WebUI auto-trigger (``workflow_symbol_id`` in conf) runs only if that symbol is enabled and
      its link to this DAG active; else the batch is empty and the log says why (the service fires
      the trigger even for a disabled symbol or an inactive link).
    - A person's ``conf.symbol`` always runs; a disabled symbol or inactive link is said, not obeyed.
    - A scheduled batch skips, and names, each symbol outside its link's session (timezone,
      session_start/end, allow_weekend); ``force`` runs them all. ``now`` is for tests.
    """
    from tradeflow.sessions import Session, SessionError
    from tradeflow.webui import WebUIClient

    env = os.environ if environ is None else environ
    client = WebUIClient.from_env(env)
    raw_symbol = ctx.get("symbol")
    if raw_symbol is not None and not isinstance(raw_symbol, str):
        _fail_now(f"conf.symbol must be a string, got {type(raw_symbol).__name__}")
    symbol = (raw_symbol or "").strip().upper()
    if symbol:
        if not re.fullmatch(SYMBOL_PATTERN, symbol) or not re.search(r"[A-Z0-9]", symbol):
            _fail_now(f"conf.symbol {symbol!r} does not match {SYMBOL_PATTERN} with at least one letter or digit")
        return _single_target(ctx, symbol, client)

    if client is None:
        _fail_now("no conf.symbol and BACKEND_API_URL is not set: there is no list of assigned symbols. "
                  'Trigger with {"symbol": "AAPL"} or configure the WebUI backend.')
    max_symbols = _conf_int(ctx, "max_symbols", MAX_SYMBOLS)
    max_symbols = max(1, min(max_symbols, MAX_SYMBOLS))
    with client:
        assigned = client.assigned_symbols(ctx.dag_id, max_symbols=max_symbols)
    force = _as_bool(ctx.get("force", False))
    scheduled = ctx.run_id.startswith("scheduled__")
    moment = now or datetime.now(UTC)
    targets = []
    for row in assigned:
        name = str(row["symbol"]).strip().upper()
        try:
            why = Session.from_link(row, where=f"WebUI link of {name}").outside(moment)
        except SessionError as exc:
            log.error("%s skipped: %s", name, exc)
            continue
        if why and scheduled and not force:
            log.warning("%s skipped: %s (scheduled run; trigger with force=true to run it anyway)", name, why)
            continue
        if why:
            log.info("%s runs although %s (%s)", name, why, "force" if force else "manual run")
        targets.append({"symbol": name, "link_config": row.get("config") or {},
                        "conid": row.get("conid"), "workflow_symbol_id": row.get("workflow_symbol_id"),
                        "priority": row.get("priority")})
    if not targets:
        log.warning("empty batch: no enabled symbol has an active link to %s in the WebUI (Workflow Symbols)"
                    "%s; nothing to run", ctx.dag_id, " inside its session" if assigned else "")
    else:
        log.info("batch of %d symbol(s) (max_symbols=%d): %s", len(targets), max_symbols,
                 ", ".join(t["symbol"] for t in targets))
    return targets


def _conf_int(ctx: RunContext, key: str, default: int) -> int:
    value = ctx.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        _fail_now(f"conf.{key} must be an integer, got {value!r}")
    return value


def _single_target(ctx: RunContext, symbol: str, client: Any) -> list[dict[str, Any]]:
    """``conf.symbol``: a WebUI auto-trigger is checked against the WebUI; a person's run is not."""
    symbol_id = ctx.get("workflow_symbol_id")
    if symbol_id is not None and (isinstance(symbol_id, bool) or not isinstance(symbol_id, int)):
        _fail_now(f"conf.workflow_symbol_id must be an integer, got {symbol_id!r}")
    triggered = symbol_id is not None
    row = None
    if client is not None:
        with client:
            row = client.get_workflow_symbol(symbol)
    elif triggered:
        _fail_now(f"conf.workflow_symbol_id={symbol_id} says the WebUI triggered this run, but BACKEND_API_URL is "
                  f"not set: cannot check that {symbol} is enabled there")
    else:
        log.info("BACKEND_API_URL is not set: %s runs without a WebUI link config", symbol)
    links = [link for link in (row or {}).get("workflows") or [] if link.get("dag_id") == ctx.dag_id]
    link = next((link for link in links if link.get("is_active") is True), links[0] if links else None)
    problems = []
    if client is not None and row is None:
        problems.append(f"{symbol} is not configured in the WebUI")
    elif row is not None:
        if triggered and row.get("id") != symbol_id:
            _fail_now(f"conf.workflow_symbol_id={symbol_id} is not {symbol}'s id in the WebUI ({row.get('id')})")
        if row.get("enabled") is not True:
            problems.append(f"{symbol} is disabled in the WebUI")
        if link is None:
            problems.append(f"{symbol} has no link to {ctx.dag_id} in the WebUI")
        elif link.get("is_active") is not True:
            problems.append(f"{symbol}'s link to {ctx.dag_id} is inactive in the WebUI")
    if problems and triggered:
        log.warning("WebUI auto-trigger for %s not run: %s. Nothing to do (the service triggers even disabled "
                    "symbols and inactive links).", symbol, "; ".join(problems))
        return []
    if problems:
        log.warning("%s; running it anyway because conf.symbol asked for it", "; ".join(problems))
    link_config = None if link is None else (link.get("config") if link.get("config") is not None else {})
    if client is not None and link is None:
        log.info("%s has no link to %s in the WebUI: running it with defaults < env < conf", symbol, ctx.dag_id)
    log.info("single-symbol run: %s", symbol)
    return [{"symbol": symbol, "link_config": link_config, "conid": ctx.get("conid"),
             "workflow_symbol_id": symbol_id, "priority": None}]


def _experiment_id(targets: Sequence[Mapping[str, Any]], ctx: RunContext) -> str:
    """The experiment of the DAG-run parent (and so of every symbol run): env < conf config.

    Also validates the ``dag_run.conf`` layer once, for the whole run: a bad conf fails fast."""
    from tradeflow.tracking import configure_tracking, ensure_experiment

    try:
        cfg = resolve_config({"symbol": targets[0]["symbol"]}, conf_layer(ctx), with_env=True)
    except ConfigError as exc:
        _fail_now(f"config of this DAG run (TRADEFLOW_* environment + dag_run.conf): {exc}")
    configure_tracking()
    return ensure_experiment(cfg.experiment_name)


def open_dag_run(targets: Sequence[Mapping[str, Any]] | None, ctx: RunContext) -> dict[str, str]:
    """Create (or, on a task retry, find) the MLflow run of this DAG run; RUNNING until finalize.

    Creating it also creates the tracking store before the fan-out (a new SQLite store must not
    be created by parallel processes)."""
    if not targets:
        _skip(f"empty batch: no symbols to run for {ctx.dag_id}; assign symbols in the WebUI "
              "(Workflow Symbols, active link to this DAG) or trigger with conf.symbol")
    from mlflow.tracking import MlflowClient

    from tradeflow.tracking import TAG_EXECUTION_ID

    experiment_id = _experiment_id(targets, ctx)
    client = MlflowClient()
    existing = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`{TAG_RUN_LEVEL}` = 'dag_run' and tags.`{TAG_DAG_ID}` = {filter_value(ctx.dag_id)}"
                       f" and tags.`{TAG_AIRFLOW_RUN_ID}` = {filter_value(ctx.run_id)}"),
        max_results=1,
    )
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
                TAG_RUN_LEVEL: "dag_run",
                TAG_DAG_ID: ctx.dag_id,
                TAG_AIRFLOW_RUN_ID: ctx.run_id,
                TAG_EXECUTION_ID: ctx.run_id,
                TAG_SYMBOL_COUNT: str(len(symbols)),
                TAG_SYMBOLS: ",".join(symbols)[:5000],
                TAG_EXECUTOR: executor_kind(),
                "tradeflow.dag_conf": json.dumps(dict(ctx.conf), sort_keys=True, default=str)[:5000],
            },
        )
        run_id = run.info.run_id
        log.info("DAG-run parent run %s in experiment %s: %d symbol(s)", run_id, experiment_id, len(symbols))
    return {"run_id": run_id, "experiment_id": experiment_id}


def symbol_config(target: Mapping[str, Any], ctx: RunContext):
    """defaults < TRADEFLOW_* env < WebUI link config < dag_run.conf, for one symbol."""
    symbol = target["symbol"]
    link = normalise_layer(target.get("link_config") or {}, origin=f"WebUI link config of {symbol}")
    # The link may not move the symbol elsewhere; the DAG decides which symbol runs.
    link.pop("symbol", None)
    check_link_files(link, symbol)
    pinned = PIPELINE_LAYERS.get(ctx.dag_id, {})
    cfg = resolve_config({"symbol": symbol}, pinned, link, conf_layer(ctx), with_env=True)
    for key, value in pinned.items():
        if getattr(cfg, key) != value:
            raise ConfigError(f"{ctx.dag_id} runs {key}={value}; the WebUI link config or dag_run.conf asked for "
                              f"{key}={getattr(cfg, key)} (use that pipeline's DAG instead)")
    return cfg


#: Files a WebUI link config may name as ``data_source=csv:...`` (anyone who can edit a link in the
#: WebUI could otherwise make the worker read any file it can): these roots, or TRADEFLOW_CSV_ROOTS.
CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".parquet", ".pq")


def csv_roots(environ: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if environ is None else environ
    raw = (env.get("TRADEFLOW_CSV_ROOTS") or "").strip()
    roots = [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()] if raw else [
        PROJECT_ROOT / "data", PROJECT_ROOT.parent / "shared" / "data"]
    return [root.resolve() for root in roots]


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


def pipeline_parameters(cfg, ctx: RunContext, *, force: bool) -> dict[str, str]:
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


def executor_kind(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    kind = (env.get("TRADEFLOW_EXECUTOR") or "local").strip().lower()
    if kind not in EXECUTORS:
        raise OrchestrationError(f"TRADEFLOW_EXECUTOR={kind!r}: use one of {', '.join(EXECUTORS)}")
    return kind


def run_symbol(target: Mapping[str, Any], parent: Mapping[str, str] | None, ctx: RunContext, *,
               mode: str | None = None) -> dict[str, Any]:
    """One symbol's ``pipeline`` run, child of the DAG-run parent. Returns a small dict (XCom);
    raises on failure (Airflow retries it; a bad config fails at once, without retries).
    ``mode`` overrides the config's (the per-stage task groups of ``tradeflow.dag_builder``)."""
    from mlflow.tracking import MlflowClient

    from tradeflow.tracking import configure_tracking

    symbol = target["symbol"]
    if not parent:
        _fail_now(f"{symbol}: the DAG-run parent run does not exist (see task open_dag_run)")
    configure_tracking()
    client = MlflowClient()
    force = _as_bool(ctx.get("force", False))
    try:
        cfg = symbol_config(target, ctx)
    except ConfigError as exc:
        reason = f"{symbol}: {exc}"
        _record_failed_symbol_run(client, parent, symbol, reason, ctx)
        _fail_now(reason)
    if mode is not None and cfg.mode != mode:
        cfg = cfg.override({"mode": mode})
    for note in cfg.adjustments:
        log.warning("%s: %s", symbol, note)
    params = pipeline_parameters(cfg, ctx, force=force)
    log.info("%s: pipeline mode=%s execution_id=%s force=%s try=%d config=%s", symbol, cfg.mode, ctx.run_id,
             force, ctx.try_number, params["config"])

    kind = executor_kind()
    if kind == "databricks":
        result = run_on_databricks(symbol, params, parent=parent, ctx=ctx)
    else:
        result = run_locally(symbol, params, parent=parent)
    run_id = result.get("run_id")
    if run_id:
        client.set_tag(run_id, TAG_AIRFLOW_TRY, str(ctx.try_number))
    if result["status"] != "FINISHED":
        raise RuntimeError(f"{symbol}: pipeline {result['status']}"
                           + (f" (run {run_id})" if run_id else "") + f": {result.get('failure') or 'no reason given'}")
    log.info("%s: pipeline run %s FINISHED in %.1fs", symbol, run_id, result.get("seconds", 0.0))
    return {"symbol": symbol, "run_id": run_id, "status": result["status"], "executor": kind,
            "try_number": ctx.try_number, "seconds": round(float(result.get("seconds", 0.0)), 1)}


def run_locally(symbol: str, params: dict[str, str], *, parent: Mapping[str, str]) -> dict[str, Any]:
    """The ``pipeline`` entry point on this worker through ``mlflow.projects.run``."""
    from tradeflow.projects import run_entry_point

    outcome = run_entry_point("pipeline", params, experiment_id=parent["experiment_id"],
                              parent_run_id=parent["run_id"], run_name=f"{symbol} pipeline")
    return {"run_id": outcome.run_id, "status": outcome.status, "failure": outcome.failure,
            "seconds": outcome.seconds}


def _record_failed_symbol_run(client, parent: Mapping[str, str], symbol: str, reason: str, ctx: RunContext) -> str:
    """A FAILED symbol-level run under the parent for a symbol that never reached its pipeline
    (bad link config), so the MLflow tree shows every symbol of the batch."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from tradeflow.tracking import TAG_EXECUTION_ID, TAG_FAILURE, TAG_STAGE, TAG_SYMBOL

    run = client.create_run(parent["experiment_id"], run_name=f"{symbol} pipeline", tags={
        MLFLOW_PARENT_RUN_ID: parent["run_id"], TAG_SYMBOL: symbol, TAG_STAGE: "pipeline",
        TAG_EXECUTION_ID: ctx.run_id, TAG_FAILURE: reason[:5000], TAG_AIRFLOW_TRY: str(ctx.try_number)})
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def symbol_runs(client, parent: Mapping[str, str]) -> dict[str, Any]:
    """The latest child run of the parent per symbol (``tradeflow.symbol`` tag, else the
    ``symbol`` param that ``mlflow.projects.run`` logged)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from tradeflow.tracking import TAG_SYMBOL

    children = client.search_runs(
        [parent["experiment_id"]],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent['run_id']}'",
        order_by=["attributes.start_time DESC"],
        max_results=5000,
    )
    latest: dict[str, Any] = {}
    for run in children:
        symbol = run.data.tags.get(TAG_SYMBOL) or run.data.params.get("symbol")
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
        _fail_now(f"no targets: task {RESOLVE_TASK} failed (WebUI backend unreachable? see its log)")
    if not targets:
        message = (f"empty batch: no enabled symbol with an active link to {ctx.dag_id} in the WebUI; "
                   "nothing ran (not an error)")
        log.warning(message)
        return {"symbols": 0, "failed": [], "message": message}
    if not parent:
        _fail_now("the DAG-run parent run was not created (task open_dag_run failed; see its log); "
                  f"no symbol ran: {', '.join(t['symbol'] for t in targets)}")

    from mlflow.tracking import MlflowClient

    from tradeflow.tracking import TAG_FAILURE, configure_tracking

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
            reason = run.data.tags.get(TAG_FAILURE) or f"pipeline run {run.info.run_id} {run.info.status}"
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
    client.set_tag(parent["run_id"], "tradeflow.succeeded_symbols", ",".join(ok)[:5000])
    if failed:
        summary = f"{len(failed)} of {len(targets)} symbol(s) failed: " + "; ".join(
            f"{symbol}: {reason}" for symbol, reason in failed.items())
        client.set_tag(parent["run_id"], TAG_FAILED_SYMBOLS, ",".join(failed)[:5000])
        client.set_tag(parent["run_id"], TAG_FAILURE, summary[:5000])
        client.set_terminated(parent["run_id"], "FAILED")
        _fail_now(summary[:2000])
    client.set_tag(parent["run_id"], TAG_FAILED_SYMBOLS, "")
    client.set_terminated(parent["run_id"], "FINISHED")
    log.info("all %d symbol(s) finished: %s", len(ok), ", ".join(ok))
    return {"symbols": len(targets), "failed": [], "succeeded": ok}


def mapped_task_states(ti: Any, ctx: RunContext, task_id: str = RUN_SYMBOL_TASK) -> dict[int, str] | None:
    """``{map_index: state}`` of the mapped task in this DAG run via the Task SDK, or None."""
    try:
        states = ti.get_task_states(dag_id=ctx.dag_id, task_ids=[task_id], run_ids=[ctx.run_id])
    except Exception as exc:  # older SDK / no API: fall back to XComs + MLflow
        log.warning("could not read task states of %s (%s); relying on XComs and MLflow", task_id, exc)
        return None
    out: dict[int, str] = {}
    for key, state in (states.get(ctx.run_id) or {}).items():
        prefix, _, index = key.rpartition("_")
        if prefix == task_id and index.isdigit():
            out[int(index)] = str(state)
    return out


# --- Databricks ------------------------------------------------------------------------------


def git_source(project_root: Path = PROJECT_ROOT, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``git_source`` of the Databricks run: the CURRENT commit of this checkout.

    ``TRADEFLOW_GIT_URL`` / ``TRADEFLOW_GIT_COMMIT`` / ``TRADEFLOW_GIT_PROVIDER`` override what
    git says. Databricks checks the commit out of the remote: it must be pushed, and uncommitted
    changes are not part of it (warned)."""
    from tradeflow.tracking import code_version

    env = os.environ if environ is None else environ
    commit = (env.get("TRADEFLOW_GIT_COMMIT") or "").strip()
    if not commit:
        version = code_version(project_root)
        if version == "unknown":
            raise OrchestrationError(f"{project_root} is not a git checkout with a commit; "
                                     "set TRADEFLOW_GIT_COMMIT (Databricks runs a commit)")
        commit, _, dirty = version.partition("+")
        if dirty:
            log.warning("the checkout has uncommitted changes; Databricks runs commit %s without them", commit)
    url = (env.get("TRADEFLOW_GIT_URL") or "").strip()
    if not url:
        try:
            url = subprocess.run(["git", "-C", str(project_root), "remote", "get-url", "origin"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            raise OrchestrationError("no git remote 'origin'; set TRADEFLOW_GIT_URL to the https URL "
                                     "Databricks clones") from None
    if m := re.fullmatch(r"git@([^:]+):(.+)", url):  # scp-like ssh -> https (Databricks clones https)
        url = f"https://{m.group(1)}/{m.group(2)}"
    provider = (env.get("TRADEFLOW_GIT_PROVIDER") or "").strip() or _git_provider(url)
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
    env = os.environ if environ is None else environ
    spec_path = Path(env.get("TRADEFLOW_DATABRICKS_SPEC") or DATABRICKS_SPEC)
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
    if cluster_id := (env.get("TRADEFLOW_DATABRICKS_CLUSTER_ID") or "").strip():
        task.pop("new_cluster", None)
        task.pop("job_cluster_key", None)
        task["existing_cluster_id"] = cluster_id
    spec["git_source"] = git_source(project_root, env)
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


def run_on_databricks(symbol: str, params: Mapping[str, str], *, parent: Mapping[str, str], ctx: RunContext,
                      environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Submit the symbol's pipeline to Databricks (``DatabricksHook.submit_run``), wait for it
    and map its result state. Cancels the Databricks run if this task is interrupted."""
    from airflow.providers.databricks.hooks.databricks import DatabricksHook
    from mlflow.tracking import MlflowClient

    env = os.environ if environ is None else environ
    conn_id = (env.get("TRADEFLOW_DATABRICKS_CONN_ID") or "databricks_default").strip()
    poll_s = _env_number(env, "TRADEFLOW_DATABRICKS_POLL_S", 30, 0.01, 600, float)
    spec = databricks_run_spec(symbol, params, parent=parent, ctx=ctx, environ=env)
    hook = DatabricksHook(databricks_conn_id=conn_id, retry_limit=3, retry_delay=min(poll_s, 10.0))
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
    child = symbol_runs(MlflowClient(), parent).get(symbol)
    run_id = child.info.run_id if child is not None else None
    if run_id:
        MlflowClient().set_tag(run_id, TAG_DATABRICKS_RUN, str(db_run_id))
        if page_url:
            MlflowClient().set_tag(run_id, TAG_DATABRICKS_URL, page_url)
    if status == "FINISHED" and child is not None and child.info.status != "FINISHED":
        status, failure = "FAILED", f"Databricks run succeeded but MLflow run {run_id} is {child.info.status}"
    return {"run_id": run_id, "status": status, "failure": failure and f"{failure} ({page_url or db_run_id})",
            "seconds": time.perf_counter() - started, "databricks_run_id": db_run_id}


# --- the runner on the far side (Databricks) ---------------------------------------------------


def child_main(argv: Sequence[str] | None = None) -> int:
    """``python deploy/databricks/run_pipeline.py --entry-point pipeline --experiment-id E
    --parent-run-id P -P key=value ...``: run the entry point here as a child of P."""
    parser = argparse.ArgumentParser(description="run one MLproject entry point as a child of a parent run")
    parser.add_argument("--entry-point", default="pipeline")
    parser.add_argument("--experiment-id", required=True)
    parser.add_argument("--parent-run-id", required=True)
    parser.add_argument("-P", "--param", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-P {item!r}: expected KEY=VALUE")
        params[key] = value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tradeflow.projects import run_entry_point
    from tradeflow.tracking import configure_tracking

    configure_tracking()
    outcome = run_entry_point(args.entry_point, params, experiment_id=args.experiment_id,
                              parent_run_id=args.parent_run_id, project_uri=PROJECT_ROOT,
                              run_name=f"{params.get('symbol', '')} {args.entry_point}".strip())
    print(f"{args.entry_point} run {outcome.run_id} {outcome.status}"
          + (f": {outcome.failure}" if outcome.failure else ""), flush=True)
    return 0 if outcome.ok else 1


# --- helpers -----------------------------------------------------------------------------------


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "false", "0", "no", "none"):
        return False
    if text in ("true", "1", "yes"):
        return True
    raise OrchestrationError(f"force={value!r} is not true/false")


if __name__ == "__main__":
    sys.exit(child_main())
