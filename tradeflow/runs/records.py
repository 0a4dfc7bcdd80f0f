"""The MLflow run contract in one place: tag names, what each step writes, and run look-ups.

- ``Tag``: every tag name tradeflow sets (``tradeflow.*``, ``review.*``, ``webui.*``) and the MLflow
  system tags it reads, in one namespace; per-stage names are functions of the stage.
- ``StepRecord``: a step declares the artifacts it writes (modelled on Qlib's workflow recorder
  classes); the writer logs to ``record.X.path`` and every reader asks the same declaration for
  ``record.X.uri(run_id)``, so a renamed file cannot leave a reader behind.
- ``children_of``, ``find_by_tags``, ``mark_failed``: the run look-ups and the "end FAILED with a
  reason" that the pipeline, the CLI, the project runner and the Airflow side all need.

Imports nothing heavy at module level (the Airflow DAG files parse through this module).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tradeflow.runs.filters import filter_value

#: MLflow keeps at most this many characters of a tag value.
MAX_TAG_CHARS = 5000


class Tag:
    """Every tag name tradeflow writes or reads (namespaced, so never an ``mlflow.*`` collision)."""

    # MLflow's own tags that tradeflow reads or writes
    PARENT_RUN_ID = "mlflow.parentRunId"
    ENTRY_POINT = "mlflow.project.entryPoint"
    RUN_NAME = "mlflow.runName"
    NOTE = "mlflow.note.content"
    GIT_COMMIT = "mlflow.source.git.commit"
    EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment's tag: which page the MLflow 3 UI opens

    # every stage run
    SYMBOL = "tradeflow.symbol"
    STAGE = "tradeflow.stage"
    CODE_VERSION = "tradeflow.code_version"
    FAILURE = "tradeflow.failure_reason"
    FAILURE_PERMANENT = "tradeflow.failure_permanent"  # "true": a retry cannot help (config, not installed)
    EXECUTION_ID = "tradeflow.execution_id"
    CONFIG_ADJUSTMENTS = "tradeflow.config_adjustments"
    WARNING = "tradeflow.warning"
    MOVED_TO = "tradeflow.moved_to"  # on a run `mlflow run` started in Default: where it went
    MOVED_FROM = "tradeflow.moved_from"  # on the run that replaced it
    REPRODUCTION_OF = "tradeflow.reproduction_of"
    #: project-runner backend config key carrying tags for the submitted run (not a run tag itself)
    PROJECT_RUN_TAGS = "tradeflow.tags"

    # data
    DATA_DIGEST = "tradeflow.data_digest"
    DATA_SOURCE = "tradeflow.data_source"
    SYNTHETIC = "tradeflow.synthetic_data"
    DATA_NOTES = "tradeflow.data_notes"
    #: the keys of ``MarketData.tags()``
    MARKET_DIGEST = "tradeflow.digest"
    MARKET_SYNTHETIC = "tradeflow.synthetic"
    MARKET_ROWS = "tradeflow.rows"

    # train_backtest and the model
    MODEL_NAME = "tradeflow.model_name"
    MODEL_VERSION = "tradeflow.model_version"
    SERVING_MODEL = "tradeflow.serving_model"
    REGISTRY = "tradeflow.registry"
    MODEL_ENV = "tradeflow.model_env"
    GATE = "tradeflow.gate"  # train run: "passed" | "failed"; inference run also "unknown" (model older than the gate)
    GATE_REASON = "tradeflow.gate_reason"
    ALIAS_DECISION = "tradeflow.alias_decision"
    #: which implementation trained the model: verified upstream, a test double, or builtin (tradeflow.engines.provenance)
    ENGINE_IMPLEMENTATION = "tradeflow.engine_implementation"

    # inference
    MODEL_SUGGESTION = "tradeflow.model_suggestion"
    FINAGENT_UPSTREAM_RATING = "finagent.upstream_rating"
    FINAGENT_CALIBRATED_RATING = "finagent.calibrated_rating"

    # review
    REVIEW_ACTION = "review.action"
    REVIEW_MODEL_USED = "review.model_used"
    REVIEW_FALLBACK = "review.fallback"
    REVIEW_FALLBACK_REASON = "review.fallback_reason"
    REVIEW_CONTRADICTS_MODEL = "review.contradicts_model"
    REVIEW_GUARDRAILS = "review.guardrails"
    REVIEW_TRACE_ID = "review.trace_id"

    # persist
    WEBUI_PERSIST = "webui.persist"  # "done" | "skipped"
    WEBUI_URL = "webui.url"

    # the pipeline (symbol-level parent) run
    MODE = "tradeflow.mode"
    FORCE = "tradeflow.force"
    CACHE_KEY = "tradeflow.cache_key"
    FAILED_STAGE = "tradeflow.failed_stage"
    DECISION_ACTION = "tradeflow.decision.action"

    # reproduce
    REPRODUCE_WARNING = "reproduce.warning"
    REPRODUCE_MATCH = "reproduce.match"
    REPRODUCE_RUN_ID = "reproduce.reproduced_run_id"

    # evaluation
    UNIVERSE_SIZE = "tradeflow.universe_size"
    FAILED_SYMBOLS = "tradeflow.failed_symbols"

    # the DAG-run parent run (Airflow side)
    RUN_LEVEL = "tradeflow.run_level"  # "dag_run" on the parent
    DAG_ID = "tradeflow.dag_id"
    AIRFLOW_RUN_ID = "tradeflow.airflow_run_id"
    SYMBOL_COUNT = "tradeflow.symbol_count"
    SYMBOLS = "tradeflow.symbols"
    SUCCEEDED_SYMBOLS = "tradeflow.succeeded_symbols"
    EXECUTOR = "tradeflow.executor"
    AIRFLOW_TRY = "tradeflow.airflow_try_number"
    DAG_CONF = "tradeflow.dag_conf"
    DATABRICKS_RUN = "tradeflow.databricks_run_id"
    DATABRICKS_URL = "tradeflow.databricks_run_page_url"

    # the IBKR workflows' run (one per DAG run, ``tradeflow.ibkr.mlflow_run``)
    WORKFLOW = "tradeflow.workflow"  # "trading" | "market_data" | "monitoring"
    STRATEGY = "tradeflow.strategy"
    #: the gateway session as the auth sensor last classified it: "ready" or "<state>: <reason>"
    IBKR_SESSION = "tradeflow.ibkr.session"

    #: on the pipeline run: how its stages' processes started ("forked" from the warm server, or
    #: "fresh: <why>"; ``tradeflow.runs.projects.warm_stage_processes``)
    STAGE_PROCESSES = "tradeflow.stage_processes"
    #: on the pipeline run: how its own process started ("forked" from the shared warm process,
    #: "fresh", or "fresh: <why>" when one was there and not used; ``runs.forkserver.process_start``)
    PIPELINE_PROCESS = "tradeflow.pipeline_process"

    # per-stage and per-kind names: templates, ``Tag.STAGE_RUN_ID.format(stage=...)``
    #: on the pipeline run: the run id a stage ran (or reused) as, whether it was reused, how its
    #: cache lease went ("cached" | "adopted" | "held")
    STAGE_RUN_ID = "tradeflow.stage.{stage}.run_id"
    STAGE_REUSED = "tradeflow.stage.{stage}.reused"
    STAGE_LEASE = "tradeflow.stage.{stage}.lease"
    #: the stage-cache lease claim (see ``tradeflow.pipeline.cache.StageLease``)
    LEASE = "tradeflow.lease.{stage}"
    LEASE_CLAIMED_AT = "tradeflow.lease.{stage}.claimed_at"
    LEASE_HEARTBEAT = "tradeflow.lease.{stage}.heartbeat"
    #: set by the claimer that decided it holds (the uncontended fast path, or first in order)
    LEASE_HELD = "tradeflow.lease.{stage}.held"
    #: on the persist run: the WebUI id of the ``signal``/``llm``/``chart`` artifact written
    WEBUI_ARTIFACT_ID = "webui.{kind}_id"
    #: on an IBKR workflow run: a task that failed and why (deleted when a retry succeeds)
    FAILED_TASK = "tradeflow.failed.{task}"


# --- what each step writes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One file (or folder) a step logs, addressed by its path under the run's artifact root."""

    path: str
    description: str

    def uri(self, run_id: str) -> str:
        """``runs:/<run_id>/<path>``: what readers pass on (MLflow resolves it in any store)."""
        return f"runs:/{run_id}/{self.path}"

    def under(self, artifact_uri: str) -> str:
        """The file's address under a run's ``artifact_uri`` (a location outside MLflow can open)."""
        return f"{artifact_uri.rstrip('/')}/{self.path}"

    def load_text(self, run_id: str) -> str:
        import mlflow

        return mlflow.artifacts.load_text(self.uri(run_id))

    def load_json(self, run_id: str) -> Any:
        return json.loads(self.load_text(run_id))


class StepRecord:
    """A step's declaration: its stage name and the artifacts it writes (class attributes)."""

    stage: ClassVar[str]

    @classmethod
    def artifacts(cls) -> dict[str, Artifact]:
        """Attribute name -> artifact, in declaration order."""
        return {name: value for name, value in vars(cls).items() if isinstance(value, Artifact)}

    @classmethod
    def described(cls) -> dict[str, str]:
        """Path -> description (the steps' ``ARTIFACTS``, for docs and tests)."""
        return {a.path: a.description for a in cls.artifacts().values()}


class TrainRecord(StepRecord):
    stage = "train_backtest"
    config = Artifact("config/resolved_config.json", "the resolved RunConfig (input to `-P config=` for a re-run)")
    splits = Artifact("data/splits.json", "rows and date bounds of train/valid/test")
    test_backtest = Artifact("backtest/test_backtest.csv",
                             "per-bar test backtest: date, price, action, position, equity, benchmark")
    valid_backtest = Artifact("backtest/valid_backtest.csv", "per-bar validation backtest of the selected checkpoint")
    learning_curve = Artifact("backtest/learning_curve.csv", "per-epoch training and validation results")
    equity_plot = Artifact("plots/equity.png", "equity vs buy-and-hold on the test split")
    drawdown_plot = Artifact("plots/drawdown.png", "drawdown of the strategy on the test split")
    trades_plot = Artifact("plots/trades.png", "trades marked on the price")
    summary = Artifact("summary.json", "headline metrics, model URI and version")
    metrics = Artifact("metrics.json", "every metric, grouped by split (the headline ones first)")
    reviewer = Artifact("reviewer/reviewer.json", "the fitted reviewer served with this model: the decision rule "
                        "chosen on this data, its edge over buy-and-hold, the meta-labeller (tradeflow.decision_rules)")
    #: the pyfunc model (not in ``ARTIFACTS``: the model flavour writes it)
    MODEL = Artifact("model", "the agent as an MLflow pyfunc model")

    @classmethod
    def described(cls) -> dict[str, str]:
        return {a.path: a.description for name, a in cls.artifacts().items() if name != "MODEL"}


class InferenceRecord(StepRecord):
    stage = "inference"
    evidence = Artifact("evidence.json",
                        "what the review team sees: latest bars, indicators, backtest metrics, model suggestion")
    prediction = Artifact("prediction.json", "the model's raw output for the latest window")
    price_plot = Artifact("plots/price.png", "latest prices with SMA 20/50, support/resistance and the suggestion")
    price_bars = Artifact("plots/price_bars.json", "the bars plots/price.png shows, as the WebUI's market_data_snapshot")
    finagent_analysis = Artifact("finagent/analysis.json",
                                 "engine=finagent only: upstream FinAgent's technical analysis of the window")
    finagent_prompt = Artifact("finagent/forecaster_prompt.md",
                               "engine=finagent only: upstream's forecaster prompt for that analysis")


class ReviewRecord(StepRecord):
    stage = "review"
    conversation = Artifact("autogen_conversation.jsonl",
                            "one line per message: agent, type, content, tokens (null: none reported), timestamp")
    transcript = Artifact("transcript.md", "the conversation, readable: one section per message, JSON pretty-printed")
    transcript_html = Artifact("transcript.html", "the same as a page the MLflow artifact viewer renders")
    decision = Artifact("decision.json", "the validated TradeDecision, guardrail notes and fallback reason")
    signal_data = Artifact("signal_data.json", "the WebUI signal_data payload (TradingSignal rules checked)")
    evidence = Artifact("evidence.json", "a copy of the evidence reviewed (so the run stands alone)")


class PersistRecord(StepRecord):
    stage = "persist"
    webui_artifacts = Artifact("webui_artifacts.json", "ids of the WebUI artifacts written (or why none were)")


class PipelineRecord(StepRecord):
    stage = "pipeline"
    config = Artifact("config/resolved_config.json", "the resolved RunConfig")
    summary = Artifact("pipeline_summary.json", "stage runs (reused or not), durations, the final decision")

    @classmethod
    def described(cls) -> dict[str, str]:
        return {cls.summary.path: cls.summary.description}


class ReproduceRecord(StepRecord):
    stage = "reproduce"
    comparison = Artifact("comparison.json", "metric by metric: original, reproduced, match")


class EvaluateRecord(StepRecord):
    stage = "evaluate"
    summary = Artifact("summary.json", "the walk-forward's machine-readable summary")


RECORDS: dict[str, type[StepRecord]] = {r.stage: r for r in (
    TrainRecord, InferenceRecord, ReviewRecord, PersistRecord, PipelineRecord, ReproduceRecord, EvaluateRecord)}


# --- run look-ups and endings -------------------------------------------------------------------


def find_by_tags(client: Any, experiment_ids: str | Iterable[str], tags: Mapping[str, str], *,
                 status: str | None = None, order_by: Iterable[str] = ("attributes.start_time DESC",),
                 max_results: int = 1000) -> list[Any]:
    """Runs whose tags equal ``tags`` (values quoted safely), newest first unless ``order_by``."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    clauses = [f"tags.`{name}` = {filter_value(value)}" for name, value in tags.items()]
    if status:
        clauses.append(f"attributes.status = {filter_value(status)}")
    return client.search_runs(ids, filter_string=" and ".join(clauses), order_by=list(order_by),
                              max_results=max_results)


def children_of(client: Any, experiment_id: str, parent_run_id: str, *, status: str | None = None,
                max_results: int = 5000) -> list[Any]:
    """The runs nested under ``parent_run_id`` (``mlflow.parentRunId``), newest first."""
    return find_by_tags(client, experiment_id, {Tag.PARENT_RUN_ID: parent_run_id}, status=status,
                        max_results=max_results)


def mark_failed(client: Any, run_id: str, reason: str, *, extra_tags: Mapping[str, str] | None = None) -> None:
    """End a run FAILED with ``tradeflow.failure_reason`` = ``reason`` (cut to what MLflow keeps)."""
    from mlflow.entities import RunTag

    from tradeflow.redaction import redact

    tags = {**(extra_tags or {}), Tag.FAILURE: redact(reason)[:MAX_TAG_CHARS]}  # no secret in a reason
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, "FAILED")


__all__ = ["Artifact", "RECORDS", "StepRecord", "Tag", "TrainRecord", "InferenceRecord", "ReviewRecord",
           "PersistRecord", "PipelineRecord", "ReproduceRecord", "EvaluateRecord", "children_of",
           "find_by_tags", "mark_failed", "MAX_TAG_CHARS"]
