"""Step 2: the trained model's action on the latest bars, packed as evidence for the review.

Never acts with an untrained network: the model must resolve in the registry (or as a run's
model) before any data is loaded. ``compute_inference`` acts and builds the evidence without
MLflow (model, bars, training context and gate come in as values); ``record_inference`` writes the
``InferenceOutcome`` through ``InferenceRecord``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tradeflow.config import RunConfig
from tradeflow.model import ModelNotFound, ResolvedModel
from tradeflow.runs.records import InferenceRecord, Tag, TrainRecord
from tradeflow.runs.tracking import code_version, log_own_params, stage_run

log = logging.getLogger(__name__)

STAGE = "inference"
RECORD = InferenceRecord
ARTIFACTS = RECORD.described()
CHART_BARS = 120  # bars on plots/price.png (and in its market_data_snapshot)


def gate_block(cfg: RunConfig, resolved: ResolvedModel, client: MlflowClient | None = None) -> dict[str, Any]:
    """The evidence's ``model.gate``: did the served model pass the do-no-harm gate, and why.

    Read from the version's tags (or the training run's, for a ``runs:/`` model); a model trained
    before the gate existed is ``passed: null`` ("not checked"), which caps nothing.
    """
    client = client or MlflowClient()
    tags: dict[str, str] = {}
    try:
        if resolved.registered_name and resolved.version:
            tags = dict(client.get_model_version(resolved.registered_name, resolved.version).tags)
        if Tag.GATE not in tags:
            tags = dict(client.get_run(resolved.training_run_id).data.tags)
    except MlflowException:
        tags = {}
    status = tags.get(Tag.GATE)
    passed = None if status is None else status == "passed"
    reason = tags.get(Tag.GATE_REASON, "trained before the do-no-harm gate existed" if status is None else "")
    if resolved.gate_note:
        reason = f"{resolved.gate_note}: {reason}" if reason else resolved.gate_note
    return {"passed": passed, "enforced": bool(cfg.do_no_harm_gate), "reason": reason, "source": "validation split"}


def training_context(run_id: str, client: MlflowClient | None = None) -> dict[str, Any]:
    """The training run's metrics and resolved config (data source, window, bar size)."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    try:
        config = TrainRecord.config.load_json(run_id)
    except Exception:  # a model logged by something other than train_backtest
        config = {}
    try:
        reviewer = TrainRecord.reviewer.load_json(run_id)
    except Exception:  # a train run from before the reviewer existed: the review serves the gate's rule
        reviewer = None
    return {"run_id": run_id, "metrics": dict(run.data.metrics), "config": config, "experiment_id": run.info.experiment_id,
            "reviewer": reviewer}


def inference_layer(training_config: dict[str, Any]) -> dict[str, Any]:
    """Inference reads the same source, bar size and lookback the model was trained on unless told otherwise."""
    keys = ("data_source", "bar_size", "backtest_lookback_days")
    return {k: training_config[k] for k in keys if training_config.get(k) not in (None, "")}


@dataclass(frozen=True, eq=False)
class InferenceOutcome:
    """The model's action on the latest window and the evidence for the review, unrecorded."""

    prediction: dict[str, Any]  # the model's output row: action, suggestion, score_<a>
    action: int  # target position
    #: score per action the model scored (an action it gives no score for is absent, not NaN)
    scores: dict[str, float]
    as_of: str  # date of the latest bar acted on
    window_start: str
    evidence: dict[str, Any]  # evidence.json (with the finagent/prompts sections for engine=finagent)
    snapshot: dict[str, Any]  # plots/price_bars.json
    warning: str | None = None  # the model was trained on another symbol
    finagent: dict[str, Any] | None = None  # engine=finagent: its evidence section; the prompt in ``prompts``

    @property
    def suggestion(self) -> str:
        return str(self.prediction["suggestion"])


def compute_inference(cfg: RunConfig, *, model: Any, market: Any, resolved: ResolvedModel,
                      training: dict[str, Any], gate: dict[str, Any]) -> InferenceOutcome:
    """Act with the loaded ``model`` on ``market``'s latest window and build the evidence.
    ``gate`` is ``gate_block``'s answer and ``training`` ``training_context``'s (read beforehand)."""
    from tradeflow.backtest import periods_per_year_for
    from tradeflow.evidence import build_evidence
    from tradeflow.features import compute_features, latest_window

    meta = _agent_meta(model)
    features = compute_features(market.bars)
    window = latest_window(features, int(meta["window"]), symbol=cfg.symbol)
    prediction = model.predict(window[list(meta["feature_columns"])]).iloc[0].to_dict()
    action = int(prediction["action"])
    # an action the model gives no score for (FinAgent's rule without shorts: no -1) comes back
    # as NaN from the DataFrame: it is absent, not a number (JSON and the review refuse NaN)
    scores = {k.removeprefix("score_"): float(v) for k, v in prediction.items()
              if k.startswith("score_") and math.isfinite(float(v))}
    evidence = build_evidence(
        symbol=cfg.symbol, bars=market.bars, bar_size=cfg.bar_size,
        periods_per_year=periods_per_year_for(market.bars["date"]),
        model={"uri": resolved.uri, "version": resolved.version, "engine": meta.get("engine"),
               "algorithm": meta.get("algorithm"), "suggestion": prediction["suggestion"],
               "target_position": action, "scores": scores, "gate": gate},
        training_run=training,
        data={"source": market.source, "digest": market.digest, "rows": market.rows, "synthetic": market.synthetic},
    )
    # the reviewer fitted with the model decides what is served (decision_rule); a train run from before
    # reviewer.json existed gets one fitted here on the market rules alone (the agent has no record to be
    # a candidate), from the bars inference reads, so its confidence is a calibrated probability too
    from tradeflow.decision_rules import INFERENCE_FITTED, fitted_reviewer, reviewer_at

    close = features["close"].to_numpy(float)
    ppy = periods_per_year_for(market.bars["date"])
    fitted = training.get("reviewer") or {
        **fitted_reviewer(close, agent_exposure=None, step=21, horizon=21, fee=cfg.trademaster.transaction_cost_pct,
                          periods_per_year=ppy, agent_allowed=False, seed=cfg.seed),
        "fitted_at": INFERENCE_FITTED}
    evidence["reviewer"] = reviewer_at(fitted, close, model_suggestion=prediction["suggestion"], periods_per_year=ppy)
    finagent = None
    if meta.get("engine") == "finagent":
        finagent = _add_finagent_evidence(model, window, evidence)
    return InferenceOutcome(
        prediction=prediction, action=action, scores=scores, as_of=str(window["date"].iloc[-1].date()),
        window_start=str(window["date"].iloc[0].date()), evidence=evidence,
        snapshot=market_data_snapshot(cfg.symbol, cfg.bar_size, market.bars),
        warning=symbol_warning(meta, cfg.symbol), finagent=finagent)


def symbol_warning(meta: dict[str, Any], symbol: str) -> str | None:
    """Set when the model was trained on another symbol than it is applied to."""
    if meta.get("symbol") and meta["symbol"] != symbol:
        return f"model trained on {meta['symbol']}, applied to {symbol}"
    return None


def inference_step(cfg: RunConfig, resolved: ResolvedModel, training: dict[str, Any]) -> dict:
    """Open the run, load the model and the bars, ``compute_inference``, ``record_inference``."""
    from tradeflow.data import load_market_data
    from tradeflow.model import load_logged_model

    tags = {Tag.SYMBOL: cfg.symbol, Tag.DATA_SOURCE: cfg.data_source}
    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags=tags) as run:
        from tradeflow.runs import notes as run_notes

        own_params = run_notes.resolved_params(STAGE, cfg, model_uri=resolved.uri)
        log_own_params(own_params)
        mlflow.log_params({
            "inference.model_uri": resolved.uri, "inference.model_version": resolved.version or "",
            "inference.training_run_id": resolved.training_run_id,
            **{k: v for k, v in cfg.flat_params().items() if k.startswith(("cfg.symbol", "cfg.data_", "cfg.bar_size", "cfg.end_date", "cfg.backtest_lookback_days"))},
        })
        model = load_logged_model(resolved.uri)
        if warning := symbol_warning(_agent_meta(model), cfg.symbol):  # before the bars: says so if they fail
            mlflow.set_tag(Tag.WARNING, warning)

        market = load_market_data(cfg)
        mlflow.set_tags({Tag.DATA_DIGEST: market.digest, Tag.SYNTHETIC: str(market.synthetic).lower()})
        market.log_mlflow_input("inference")
        gate = gate_block(cfg, resolved)
        outcome = compute_inference(cfg, model=model, market=market, resolved=resolved, training=training, gate=gate)
        return record_inference(run, cfg, outcome, market=market, resolved=resolved, training=training,
                                own_params=own_params)


def record_inference(run: Any, cfg: RunConfig, outcome: InferenceOutcome, *, market: Any, resolved: ResolvedModel,
                     training: dict[str, Any], own_params: dict) -> dict:
    """Log the outcome through ``InferenceRecord`` (prediction, evidence, chart, snapshot) and describe the run."""
    from tradeflow.runs import notes as run_notes

    prediction, action, scores, as_of = outcome.prediction, outcome.action, outcome.scores, outcome.as_of
    mlflow.log_params({"data.rows": market.rows, "data.start": str(market.start.date()),
                       "data.as_of": as_of, "data.window_start": outcome.window_start})
    mlflow.log_metrics({"model_action": float(action), **{f"score_{k}": v for k, v in scores.items()}})
    mlflow.set_tag(Tag.MODEL_SUGGESTION, outcome.suggestion)
    mlflow.log_dict({"model_uri": resolved.uri, "as_of": as_of, **prediction}, RECORD.prediction.path)

    gate = outcome.evidence["model"]["gate"]
    mlflow.set_tags({Tag.GATE: {True: "passed", False: "failed", None: "unknown"}[gate["passed"]],
                     Tag.GATE_REASON: gate["reason"][:5000]})
    if gate["passed"] is False:
        print(f"{cfg.symbol}: the served model FAILED the do-no-harm gate ({gate['reason']}); "
              "its calls are not served: the review serves the benchmark's position (no demonstrated edge: hold)"
              + ("" if gate["enforced"] else " (gate disabled: served as usual)"),
              flush=True)
    if outcome.finagent is not None:
        mlflow.log_dict(outcome.finagent["analysis"], RECORD.finagent_analysis.path)
        mlflow.log_text(outcome.evidence["prompts"]["forecaster"]["text"], RECORD.finagent_prompt.path)
        mlflow.set_tags({Tag.FINAGENT_UPSTREAM_RATING: str(outcome.finagent["upstream_rating"]),
                         Tag.FINAGENT_CALIBRATED_RATING: outcome.finagent["calibrated"]["rating"]})
    mlflow.log_dict(outcome.evidence, RECORD.evidence.path)
    figure = price_chart(market.bars, outcome.evidence)
    mlflow.log_figure(figure, RECORD.price_plot.path)
    _pyplot().close(figure)
    mlflow.log_dict(outcome.snapshot, RECORD.price_bars.path)
    evidence_uri = RECORD.evidence.uri(run.info.run_id)
    run_notes.set_name_and_note(run.info.run_id, run_notes.inference_name(cfg.symbol, as_of, outcome.suggestion), "\n".join([
        f"## {cfg.symbol} · inference as of {as_of} → model suggests **{prediction['suggestion']}** (target position {action})",
        "",
        run_notes.data_line(market.source, market.synthetic, start=str(market.start.date()), end=as_of,
                            rows=market.rows, digest=market.digest),
        "",
        f"**Model**: `{resolved.uri}` (training run {run_notes.run_link(training.get('experiment_id') or run.info.experiment_id, resolved.training_run_id)}); "
        f"scores: {', '.join(f'{k}: {v:.3f}' for k, v in scores.items())}.",
        "",
        "**Evidence** for the review: `evidence.json`; chart: `plots/price.png`.",
        "",
        run_notes.reproduce_block(STAGE, own_params, commit=code_version(), run_id=run.info.run_id,
                                  experiment_name=cfg.experiment_name),
    ]))
    print(f"{cfg.symbol} {as_of}: model {resolved.uri} suggests {prediction['suggestion']} "
          f"(target position {action}); evidence {evidence_uri}", flush=True)
    return {"run_id": run.info.run_id, "evidence_uri": evidence_uri, "suggestion": prediction["suggestion"]}


def _add_finagent_evidence(model: Any, window: Any, evidence: dict[str, Any]) -> dict[str, Any]:
    """engine=finagent: upstream FinAgent's analysis JSON and forecaster prompt join the evidence
    (``finagent`` and ``prompts`` sections; the record half also logs them under ``finagent/``)."""
    from tradeflow.engines.finagent.agent import review_evidence

    section, prompts = review_evidence(model.unwrap_python_model().agent, window)
    evidence["finagent"] = section
    evidence["prompts"] = prompts
    return section


def _agent_meta(model: Any) -> dict[str, Any]:
    """The agent metadata ``TradingAgentModel.load_context`` read (engine, window, symbol...)."""
    meta = getattr(model.unwrap_python_model(), "meta", None)
    if meta is None:
        raise ModelNotFound("the model is not a tradeflow trading agent (no agent metadata)")
    return dict(meta)


def market_data_snapshot(symbol: str, bar_size: str, bars) -> dict[str, Any]:
    """The WebUI's ``metadata.market_data_snapshot``: the chart's bars, oldest first (it redraws
    the chart from these when it cannot read the image)."""
    from tradeflow.evidence import latest_bars

    shown = latest_bars(bars, CHART_BARS)
    return {"symbol": symbol, "timeframe": bar_size, "bar_count": len(shown), "bars": shown,
            "latest_price": shown[-1]["close"] if shown else None}


def _pyplot():
    """pyplot on the Agg backend, imported when a chart is drawn: ``resolve_model`` (imported by
    the pipeline process) must not pay ~1 s of matplotlib import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def price_chart(bars, evidence: dict):
    recent = bars.tail(CHART_BARS)
    close = bars["close"]
    figure, ax = _pyplot().subplots(figsize=(10, 4.5))
    ax.plot(recent["date"], recent["close"], label="close", color="black", linewidth=1.2)
    ax.plot(recent["date"], close.rolling(20).mean().tail(CHART_BARS), label="SMA 20", linewidth=1)
    ax.plot(recent["date"], close.rolling(50).mean().tail(CHART_BARS), label="SMA 50", linewidth=1)
    ind = evidence["indicators"]
    for level, style in (("support", "--"), ("resistance", ":")):
        if ind.get(level):
            ax.axhline(ind[level], linestyle=style, color="grey", linewidth=0.8, label=level)
    data = evidence.get("data", {})
    source = "SYNTHETIC prices (generated, not market data)" if data.get("synthetic") else f"data: {data.get('source', '?')}"
    if len(source) > 70:
        source = "data: ..." + source[-60:]
    ax.set_title(f"{evidence['symbol']} last {len(recent)} daily bars to {evidence['as_of']}: model suggests "
                 f"{evidence['model']['suggestion']}\n{source}", fontsize=10)
    ax.set_xlabel("date")
    ax.set_ylabel("close price (quote currency)")
    ax.legend(loc="best", fontsize=8)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure
