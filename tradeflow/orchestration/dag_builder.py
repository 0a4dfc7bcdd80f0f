"""One builder for every per-symbol pipeline DAG, so a new pipeline is a small DAG file.

Two shapes, both wired from this package's task functions (the tasks' logic lives there):

* ``staged=False`` (``trademaster_autogen_pipeline_workflow``)::

      resolve_targets -> open_dag_run -> run_symbol[symbol] -> finalize

  one mapped task runs the whole ``pipeline`` entry point in ``conf.mode``.

* ``staged=True`` (``finagent_autogen_pipeline_workflow``): the stages are TaskGroups chosen by
  ``conf.mode`` through a branch::

      resolve_targets -> open_dag_run -> choose_mode -> train_backtest.run_symbol[symbol]
                                                   \\-> inference.run_symbol[symbol] -> finalize

  ``both`` runs the two groups in order, ``train_backtest`` / ``inference`` only theirs (the
  other is skipped by the branch). Each mapped task is the ``pipeline`` entry point in that
  group's mode, a child run of the DAG-run parent; in ``both`` a symbol whose training failed in
  this DAG run skips inference (no signal from a stale model); the others go on.

XCom carries ids only (targets, run ids, statuses). Parse cost: this module imports Airflow's
authoring names through ``tradeflow.airflow_compat`` (``airflow.sdk`` on 3.x, their homes on 2.10;
loaded by Airflow anyway, inside ``build_pipeline_dag``) and this package only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tradeflow.runs.records import Tag
from tradeflow import orchestration as orch

TRAIN_GROUP = "train_backtest"
INFERENCE_GROUP = "inference"
CHOOSE_MODE_TASK = "choose_mode"
#: which groups each conf.mode runs
GROUPS_BY_MODE: dict[str, tuple[str, ...]] = {
    "both": (TRAIN_GROUP, INFERENCE_GROUP),
    "train_backtest": (TRAIN_GROUP,),
    "inference": (INFERENCE_GROUP,),
}
_BAD_STATES = ("failed", "upstream_failed", "removed")


@dataclass(frozen=True)
class PipelineDag:
    """What distinguishes one pipeline DAG from another."""

    dag_id: str
    doc_md: str
    tags: tuple[str, ...]
    staged: bool = False


def chosen_groups(ctx: orch.RunContext) -> tuple[str, ...]:
    """The TaskGroups ``conf.mode`` selects (the trigger form's default mode is ``both``)."""
    mode = str(ctx.get("mode") or "both")
    if mode not in GROUPS_BY_MODE:
        orch.fail_now(f"conf.mode {mode!r} is not one of {', '.join(GROUPS_BY_MODE)}")
    return GROUPS_BY_MODE[mode]


def combined_states(states_by_task: Mapping[str, Mapping[int, str] | None]) -> dict[int, str] | None:
    """Per map index, one state over the stage groups that ran: the first bad state, else
    ``success`` if any stage succeeded, else what there is (``skipped``). None when unknown."""
    known = [states for states in states_by_task.values() if states is not None]
    if not known:
        return None
    out: dict[int, str] = {}
    for index in sorted({i for states in known for i in states}):
        seen = [states[index] for states in known if index in states]
        bad = next((s for s in seen if s in _BAD_STATES), None)
        out[index] = bad or ("success" if "success" in seen else seen[0])
    return out


def training_failed_here(symbol: str, parent: Mapping[str, str]) -> str | None:
    """In mode ``both``: why this symbol's training run under this DAG run's parent did not finish, if so."""
    from mlflow.tracking import MlflowClient

    from tradeflow.runs.tracking import configure_tracking

    configure_tracking()
    run = orch.symbol_runs(MlflowClient(), parent).get(symbol)
    if run is None or run.info.status == "FINISHED":
        return None
    return run.data.tags.get(Tag.FAILURE) or f"training run {run.info.run_id} {run.info.status}"


def build_pipeline_dag(spec: PipelineDag, settings: orch.DagSettings | None = None) -> Any:
    """The DAG object for ``spec`` (call at module level of the DAG file)."""
    from tradeflow.airflow_compat import DAG_DATES, TaskGroup, dag, get_current_context, task

    settings = settings or orch.DagSettings.from_env()

    def context() -> orch.RunContext:
        return orch.RunContext.from_airflow(get_current_context())

    @task(task_id=orch.RESOLVE_TASK)
    def resolve_targets() -> list[dict]:
        return orch.resolve_targets(context())

    @task
    def open_dag_run(targets: list[dict]) -> dict:
        return orch.open_dag_run(targets, context())

    def symbol_task(mode: str | None):
        @task(task_id=orch.RUN_SYMBOL_TASK, **settings.symbol_task_args())
        def run_symbol(target: dict, parent: dict) -> dict:
            airflow_context = get_current_context()
            airflow_context["tradeflow_symbol"] = target["symbol"]  # label of the mapped task in the UI
            ctx = orch.RunContext.from_airflow(airflow_context)
            groups = chosen_groups(ctx) if mode is not None else ()
            if mode == "inference" and INFERENCE_GROUP not in groups:
                orch.skip(f"conf.mode runs {', '.join(groups)} only")
            if mode == "inference" and parent and TRAIN_GROUP in groups:
                reason = training_failed_here(target["symbol"], parent)
                if reason:
                    orch.skip(f"{target['symbol']}: no inference, its training failed in this DAG run: {reason}")
            return orch.run_symbol(target, parent, ctx, mode=mode)

        return run_symbol

    @task(trigger_rule="all_done")
    def finalize(targets: list[dict] | None, parent: dict | None, results: Sequence[dict] | None,
                 inference_results: Sequence[dict] | None = None) -> dict:
        airflow_context = get_current_context()
        ctx = orch.RunContext.from_airflow(airflow_context)
        ti = airflow_context["ti"]
        if spec.staged:
            task_ids = [f"{group}.{orch.RUN_SYMBOL_TASK}" for group in GROUPS_BY_MODE["both"]]
            states = combined_states({t: orch.mapped_task_states(ti, ctx, task_id=t) for t in task_ids})
        else:
            states = orch.mapped_task_states(ti, ctx)
        merged = [r for group in (results, inference_results) for r in list(group or []) if r]  # later wins
        return orch.finalize(targets, parent, merged, ctx, task_states=states)

    @dag(
        dag_id=spec.dag_id,
        schedule=settings.schedule,
        catchup=False,
        doc_md=spec.doc_md,
        params=settings.params(),
        default_args=settings.default_args(),
        max_active_runs=settings.max_active_runs,
        tags=list(spec.tags),
        **DAG_DATES,
    )
    def pipeline():
        targets = resolve_targets()
        parent = open_dag_run(targets)
        if not spec.staged:
            results = symbol_task(None).partial(parent=parent).expand(target=targets)
            finalize(targets, parent, results)
            return

        @task.branch(task_id=CHOOSE_MODE_TASK)
        def choose_mode(parent: dict) -> list[str]:
            return [f"{group}.{orch.RUN_SYMBOL_TASK}" for group in chosen_groups(context())]

        branch = choose_mode(parent)
        with TaskGroup(TRAIN_GROUP, tooltip="train + backtest + register, per symbol") as train_group:
            trained = symbol_task("train_backtest").partial(parent=parent).expand(target=targets)
        # after training in mode both (all_done: one symbol's failed training must not stop the
        # others' inference; that symbol's own task skips itself), alone in mode inference
        with TaskGroup(INFERENCE_GROUP, tooltip="inference + review + persist, per symbol") as inference_group:
            inferred = symbol_task("inference").override(trigger_rule="all_done") \
                .partial(parent=parent).expand(target=targets)
        branch >> [train_group, inference_group]
        train_group >> inference_group
        finalize(targets, parent, trained, inferred)

    return pipeline()
