"""The pipeline's stages, declared once: what each is called, which modes run it, whether its cache
key is leased, the parameters it gets, and what it hands to the stages after it.

    train_backtest -> inference -> review -> persist

Only run ids and artifact URIs pass between stages (``Handoff``); each stage reads what an earlier
one wrote through that stage's ``StepRecord`` declaration. ``run.run_pipeline`` walks this table;
nothing else in the package names a stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tradeflow.config import RunConfig
from tradeflow.names import MODES
from tradeflow.runs.records import InferenceRecord, PersistRecord, ReviewRecord, StepRecord, Tag, TrainRecord


@dataclass
class Handoff:
    """What later stages need from earlier ones: ids and URIs only (and the decision, for the
    parent run's name and summary)."""

    model_uri: str | None = None
    evidence_uri: str | None = None
    review_run_id: str | None = None
    decision: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Invocation:
    """What every stage's parameters may draw on besides the config and the hand-off."""

    config_json: str
    execution_id: str
    dag_id: str
    task_id: str


@dataclass(frozen=True)
class Stage:
    """One stage: an MLproject entry point run as a child of the pipeline run."""

    name: str
    record: type[StepRecord]
    modes: tuple[str, ...]
    #: concurrent cold pipelines run it once (``cache.StageLease``); persist is per execution and
    #: idempotent on the WebUI side, so it is not leased
    leased: bool
    #: the ``Handoff`` fields its parameters read (filled by earlier stages, or before the first)
    reads: tuple[str, ...]
    params: Callable[[RunConfig, Handoff, Invocation], dict[str, str]]
    #: read what the next stages need from this stage's finished run (its tags and artifacts)
    collect: Callable[[str, Mapping[str, str], Handoff], None]
    #: what else makes two runs of it the same, beyond params, code and data
    cache_extra: Callable[[], dict[str, str]] | None = None


def _collect_train(run_id: str, tags: Mapping[str, str], handoff: Handoff) -> None:
    name, version = tags.get(Tag.MODEL_NAME), tags.get(Tag.MODEL_VERSION)
    handoff.model_uri = f"models:/{name}/{version}" if name and version else TrainRecord.MODEL.uri(run_id)
    # the do-no-harm gate kept the alias on a better version: serve that one (labelled in its evidence)
    handoff.model_uri = tags.get(Tag.SERVING_MODEL) or handoff.model_uri


def _collect_inference(run_id: str, tags: Mapping[str, str], handoff: Handoff) -> None:
    handoff.evidence_uri = InferenceRecord.evidence.uri(run_id)


def _collect_review(run_id: str, tags: Mapping[str, str], handoff: Handoff) -> None:
    handoff.review_run_id = run_id
    decision = ReviewRecord.decision.load_json(run_id)
    handoff.decision = {"action": decision["decision"]["action"], "confidence": decision["decision"]["confidence"],
                        "fallback_reason": decision.get("fallback_reason"), "review_run_id": run_id}


def _collect_nothing(run_id: str, tags: Mapping[str, str], handoff: Handoff) -> None:
    return None


STAGES: tuple[Stage, ...] = (
    Stage("train_backtest", TrainRecord, modes=("both", "train_backtest"), leased=True, reads=(),
          params=lambda cfg, h, inv: {"symbol": cfg.symbol, "config": inv.config_json},
          collect=_collect_train),
    Stage("inference", InferenceRecord, modes=("both", "inference"), leased=True, reads=("model_uri",),
          params=lambda cfg, h, inv: {"symbol": cfg.symbol, "model_uri": h.model_uri or "", "config": inv.config_json},
          collect=_collect_inference),
    Stage("review", ReviewRecord, modes=("both", "inference"), leased=True, reads=("evidence_uri",),
          params=lambda cfg, h, inv: {"evidence_uri": h.evidence_uri or "", "config": inv.config_json},
          collect=_collect_review),
    Stage("persist", PersistRecord, modes=("both", "inference"), leased=False, reads=("review_run_id",),
          params=lambda cfg, h, inv: {"review_run_id": h.review_run_id or "", "execution_id": inv.execution_id,
                                      "dag_id": inv.dag_id, "task_id": inv.task_id},
          collect=_collect_nothing,
          # a different WebUI backend (or chart store, or MLflow UI address) is a different persist,
          # even for the same review; unset ones leave the key as it was
          cache_extra=lambda: {"backend": os.environ.get("BACKEND_API_URL", ""), **_persist_targets()}),
)

#: what the warm stage process imports before forking a stage (``runs.projects.warm_stage_processes``):
#: the heavy libraries and the entry points of the pipeline and its first stages; never a tracking
#: store or a model
WARM_MODULES: tuple[str, ...] = (
    "mlflow", "torch", "stable_baselines3", "mlflow.pyfunc", "matplotlib.pyplot", "pyarrow.parquet", "git",
    # the SQL stores' modules (their ORM classes: ~1.5 s), not a store: each stage opens its own
    "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
    "sklearn.linear_model",  # train_backtest's reviewer fit (with scipy.stats: ~0.9 s)
    "tradeflow.runs.warm_caches",  # caches each stage would fill itself (log_model's distribution map: ~0.5 s)
    "entrypoints.pipeline", "entrypoints.train_backtest", "entrypoints.inference")
#: what it imports after it is ready, between forks, while train_backtest runs (the first stage
#: does not wait for them: autogen & co., ~0.4 s quiet)
WARM_LATER: tuple[str, ...] = ("review_agents.review", "review_agents.team", "entrypoints.review", "entrypoints.persist")


def _persist_targets() -> dict[str, str]:
    from tradeflow.settings import current

    settings = current()
    chosen = {"chart_dir": settings.webui_chart_dir, "chart_bucket": settings.webui_chart_bucket,
              "chart_endpoint": os.environ.get("MLFLOW_S3_ENDPOINT_URL") if settings.webui_chart_bucket else None,
              "mlflow_ui": settings.mlflow_ui_url}
    return {k: v for k, v in chosen.items() if v}


#: mode -> the stages it runs, in order (``names.MODES``, the DAG's task groups)
STAGES_BY_MODE: dict[str, tuple[Stage, ...]] = {mode: tuple(s for s in STAGES if mode in s.modes) for mode in MODES}


def stage_named(name: str) -> Stage:
    """The stage of that name (``KeyError`` for a name the table does not hold)."""
    return {stage.name: stage for stage in STAGES}[name]


__all__ = ["Handoff", "Invocation", "STAGES", "STAGES_BY_MODE", "Stage", "WARM_LATER", "WARM_MODULES", "stage_named"]
