"""The symbol-level parent run: chains the stage entry points as child runs, with a stage cache.

    parent (pipeline) -> train_backtest -> inference -> review -> persist

The stages, their parameters and what each hands on are declared once in ``stages.STAGES``; this
module walks them. Only run ids and artifact URIs pass between stages. A stage whose FINISHED run exists with the same
cache key (entry point, params, code version, data digest) is reused instead of re-run, unless
``force``. The parent ends FAILED when a stage fails, naming the stage and its reason; finished
children stay FINISHED.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict

import mlflow
from mlflow.tracking import MlflowClient

from tradeflow.config import RunConfig
from tradeflow.errors import StepError
from tradeflow.runs import forkserver
from tradeflow.runs.projects import StageOutcome, run_entry_point, warm_stage_processes
from tradeflow.pipeline.cache import StageLease, cache_key, find_cached
from tradeflow.pipeline.stages import STAGES_BY_MODE, WARM_LATER, WARM_MODULES, Handoff, Invocation, Stage
from tradeflow.runs.records import (
    PipelineRecord,
    Tag,
    children_of,
    find_by_tags,
    mark_failed,
)
from tradeflow.runs.tracking import code_version, log_resolved_config, stage_run

log = logging.getLogger(__name__)
ARTIFACTS = PipelineRecord.described()


class StageFailed(StepError):
    """A child stage ended FAILED; the message names the stage, its run and its reason."""


def stage_config_json(cfg: RunConfig) -> str:
    """The config handed to stages: everything but the pipeline-only ``mode`` (so a training run
    made in mode ``train_backtest`` is reused by mode ``both``)."""
    layer = cfg.to_layer()
    layer.pop("mode", None)
    return json.dumps(layer, sort_keys=True, separators=(",", ":"))


def close_abandoned_runs(client: MlflowClient, experiment_id: str, symbol: str, execution_id: str,
                         current_parent_id: str) -> list[str]:
    """Mark FAILED the stage runs an earlier, killed attempt of this execution left RUNNING.

    A SIGKILLed worker takes the pipeline and its stage process with it; the caller closes the
    pipeline run it submitted, but nobody is left to close the stage run. The next attempt of the
    same execution does it here (only under earlier pipeline runs that have already ended).
    """
    earlier = find_by_tags(client, experiment_id,
                           {Tag.EXECUTION_ID: execution_id, Tag.SYMBOL: symbol, Tag.STAGE: "pipeline"})
    closed = []
    for parent in earlier:
        if parent.info.run_id == current_parent_id or parent.info.status == "RUNNING":
            continue
        for child in children_of(client, experiment_id, parent.info.run_id, status="RUNNING"):
            mark_failed(client, child.info.run_id,
                        f"abandoned: its pipeline attempt {parent.info.run_id} ended ({parent.info.status}) "
                        "while this stage was running (worker killed?)")
            closed.append(child.info.run_id)
    if closed:
        log.warning("%s: closed %d stage run(s) left RUNNING by a killed attempt: %s", symbol, len(closed), ", ".join(closed))
    return closed


def close_dead_attempts(client: MlflowClient, experiment_id: str, symbol: str, execution_id: str, *,
                        dag_parent_id: str, task_id: str, reason: str) -> list[str]:
    """Mark FAILED the pipeline runs of this execution, symbol and task still RUNNING when the
    orchestrator retries it, and their RUNNING stage runs.

    When a whole worker dies (SIGKILL of its process tree, the machine lost), nobody closes the
    pipeline run either: ``close_abandoned_runs`` skips a RUNNING pipeline, and its lease claim only
    stops counting once its heartbeat is ``stale_s`` old. The caller knows better: Airflow starts
    try N only after try N-1 has ended or stopped heartbeating, so a pipeline run of that try still
    RUNNING is dead. Closing it also hands its stage lease over at once (claims count while RUNNING).
    """
    stale = [run for run in find_by_tags(client, experiment_id,
                                         {Tag.EXECUTION_ID: execution_id, Tag.SYMBOL: symbol, Tag.STAGE: "pipeline",
                                          Tag.PARENT_RUN_ID: dag_parent_id}, status="RUNNING")
             if run.data.params.get("task_id", task_id) == task_id]
    for run in stale:
        mark_failed(client, run.info.run_id, f"abandoned: {reason}")
    if stale:
        log.warning("%s: closed %d pipeline run(s) of an earlier try left RUNNING (%s): %s", symbol, len(stale),
                    reason, ", ".join(r.info.run_id for r in stale))
        close_abandoned_runs(client, experiment_id, symbol, execution_id, current_parent_id="")
    return [r.info.run_id for r in stale]


def run_pipeline(cfg: RunConfig, *, execution_id: str | None = None, force: bool = False,
                 dag_id: str = "", task_id: str = "") -> dict:
    """Run the stages of ``cfg.mode`` under one parent run; return the summary."""
    from tradeflow.data import load_market_data
    from tradeflow.model import resolve_model
    from tradeflow.names import DAG_ID

    client = MlflowClient()
    # the warm server imports while this process creates its run and loads the data
    with warm_stage_processes(list(WARM_MODULES), later=list(WARM_LATER)), \
            stage_run("pipeline", experiment_name=cfg.experiment_name, tags={Tag.SYMBOL: cfg.symbol}) as parent:
        parent_id = parent.info.run_id
        execution_id = execution_id or parent_id
        mlflow.set_tags({Tag.EXECUTION_ID: execution_id, Tag.MODE: cfg.mode, Tag.FORCE: str(force).lower(),
                         Tag.PIPELINE_PROCESS: forkserver.process_start})
        close_abandoned_runs(client, parent.info.experiment_id, cfg.symbol, execution_id, parent_id)
        own_params = _own_params(cfg, execution_id=execution_id, force=force, dag_id=dag_id, task_id=task_id)
        log_resolved_config(cfg, own_params, PipelineRecord.config.path)

        # Cheap checks before any child run: the data loads and validates, a model exists.
        market = load_market_data(cfg)
        mlflow.set_tag(Tag.DATA_DIGEST, market.digest)
        state = Handoff()
        if "model_uri" in STAGES_BY_MODE[cfg.mode][0].reads:  # no stage of this mode trains: the registry's serves
            state.model_uri = resolve_model(cfg, None, client).uri

        code = code_version()
        config_json = stage_config_json(cfg)
        outcomes: list[StageOutcome] = []

        def describe(failed: str | None = None) -> None:
            from tradeflow.runs.notes import describe_pipeline

            try:
                describe_pipeline(cfg, parent, outcomes, market=market, model_uri=state.model_uri,
                                  review_run_id=state.review_run_id, own_params=own_params, commit=code,
                                  failed=failed, client=client)
            except Exception as exc:  # noqa: BLE001 - the description never fails the pipeline
                log.warning("could not describe the pipeline run: %s", exc)

        invocation = Invocation(config_json, execution_id=execution_id, dag_id=dag_id or DAG_ID,
                                task_id=task_id or "pipeline")
        for stage in STAGES_BY_MODE[cfg.mode]:
            params = stage.params(cfg, state, invocation)
            key = cache_key(stage.name, params, code=code, data_digest=market.digest,
                            extra=stage.cache_extra() if stage.cache_extra else None)
            outcome = _run_or_reuse(client, stage, params, key, parent, force=force)
            outcomes.append(outcome)
            mlflow.set_tags({Tag.STAGE_RUN_ID.format(stage=stage.name): outcome.run_id,
                             Tag.STAGE_REUSED.format(stage=stage.name): str(outcome.reused).lower()})
            mlflow.log_metric(f"stage_{stage.name}_seconds", outcome.seconds)
            if not outcome.ok:
                mlflow.set_tag(Tag.FAILED_STAGE, stage.name)
                _write_summary(cfg, execution_id, outcomes, state)
                describe(f"stage {stage.name} failed (run {outcome.run_id}): {outcome.failure}")
                raise StageFailed(f"{cfg.symbol}: stage {stage.name} failed (run {outcome.run_id}): {outcome.failure}")
            stage.collect(outcome.run_id, client.get_run(outcome.run_id).data.tags, state)

        summary = _write_summary(cfg, execution_id, outcomes, state)
        if state.decision:
            mlflow.set_tags({Tag.DECISION_ACTION: state.decision["action"]})
            mlflow.log_metric("decision_confidence", float(state.decision["confidence"]))
        describe()
        reused = sum(o.reused for o in outcomes)
        print(f"{cfg.symbol}: pipeline {cfg.mode} finished: " + ", ".join(
            f"{o.entry_point} {o.run_id[:8]}{' (cached)' if o.reused else ''}" for o in outcomes)
            + (f"; decision {state.decision['action']} {state.decision['confidence']:.2f}" if state.decision else "")
            + (f"; {reused} stage(s) reused" if reused else ""), flush=True)
        return summary




def _own_params(cfg: RunConfig, *, execution_id: str, force: bool, dag_id: str, task_id: str) -> dict[str, str]:
    """The pipeline's MLproject parameters as resolved (``mode`` '' -> ``both`` ...)."""
    from tradeflow.runs.notes import resolved_params

    return resolved_params("pipeline", cfg, execution_id=execution_id, force=force, dag_id=dag_id, task_id=task_id)


def _run_or_reuse(client: MlflowClient, stage: Stage, params: dict[str, str], key: str, parent, *, force: bool) -> StageOutcome:
    experiment_id, name = parent.info.experiment_id, stage.name
    lease: StageLease | None = None
    if not force:
        cached = find_cached(client, experiment_id, key)
        if cached:
            log.info("stage %s: reusing FINISHED run %s (same params, code and data)", name, cached)
            mlflow.set_tag(Tag.STAGE_LEASE.format(stage=name), "cached")
            return StageOutcome(name, cached, "FINISHED", 0.0, reused=True, params=params)
        if stage.leased:
            lease = StageLease(client, parent, name, key)
            started = time.monotonic()
            adopted = lease.acquire_or_adopt()
            if adopted:
                mlflow.set_tag(Tag.STAGE_LEASE.format(stage=name), "adopted")
                return StageOutcome(name, adopted, "FINISHED", time.monotonic() - started, reused=True, params=params)
            mlflow.set_tag(Tag.STAGE_LEASE.format(stage=name), "held")
    symbol = client.get_run(parent.info.run_id).data.tags.get(Tag.SYMBOL, "")
    try:
        with lease.heartbeat() if lease else _nothing():
            outcome = run_entry_point(name, params, experiment_id=experiment_id, parent_run_id=parent.info.run_id,
                                      run_name=f"{symbol} · {name}" if symbol else name)
        if outcome.ok:
            client.set_tag(outcome.run_id, Tag.CACHE_KEY, key)
        return outcome
    finally:
        if lease:
            lease.release()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None




def _write_summary(cfg: RunConfig, execution_id: str, outcomes: list[StageOutcome], state: Handoff) -> dict:
    summary = {
        "symbol": cfg.symbol, "mode": cfg.mode, "execution_id": execution_id,
        "stages": [{k: v for k, v in asdict(o).items() if k != "params"} for o in outcomes],
        "decision": state.decision or None, "model_uri": state.model_uri,
    }
    mlflow.log_dict(summary, PipelineRecord.summary.path)
    return summary


__all__ = ["run_pipeline", "StageFailed", "STAGES_BY_MODE",]
