"""Step 2: the trained model's action on the latest bars, packed as evidence for the review.

Never acts with an untrained network: the model must resolve in the registry (or as a run's
model) before any data is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tradeflow.config import RunConfig  # noqa: E402
from tradeflow.tracking import TAG_DATA_DIGEST, TAG_DATA_SOURCE, TAG_SYMBOL, TAG_SYNTHETIC, stage_run  # noqa: E402

log = logging.getLogger(__name__)

STAGE = "inference"
ARTIFACTS = {
    "evidence.json": "what the review team sees: latest bars, indicators, backtest metrics, model suggestion",
    "prediction.json": "the model's raw output for the latest window",
    "plots/price.png": "latest prices with SMA 20/50, support/resistance and the suggestion",
    "finagent/analysis.json": "engine=finagent only: upstream FinAgent's technical analysis of the window",
    "finagent/forecaster_prompt.md": "engine=finagent only: upstream's forecaster prompt for that analysis",
}
TAG_SUGGESTION = "tradeflow.model_suggestion"


class ModelNotFound(LookupError):
    """No trained model to act with (one line, says what to run)."""


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    version: str | None
    training_run_id: str
    registered_name: str | None


def resolve_model(cfg: RunConfig, model_uri: str | None, client: MlflowClient | None = None) -> ResolvedModel:
    """Turn ``model_uri`` (or the symbol's registry alias) into a pinned model and its training run."""
    client = client or MlflowClient()
    hint = f"run train_backtest first: mlflow run . -e train_backtest -P symbol={cfg.symbol}"
    uri = model_uri or f"models:/{cfg.registered_model_name}@{cfg.model_alias}"
    try:
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").split("/", 1)[0]
            client.get_run(run_id)
            return ResolvedModel(uri, None, run_id, None)
        if not uri.startswith("models:/"):
            raise ModelNotFound(f"model_uri {uri!r} must be models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/model")
        ref = uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise ModelNotFound(f"model_uri {uri!r} names no version or alias (use models:/{ref}@{cfg.model_alias})")
        return ResolvedModel(f"models:/{name}/{version.version}", str(version.version), version.run_id, name)
    except MlflowException as exc:
        if model_uri:
            raise ModelNotFound(f"model {uri} not found for {cfg.symbol} ({exc.error_code}); {hint}") from None
        raise ModelNotFound(f"no registered model {uri.removeprefix('models:/')} for {cfg.symbol}; {hint}") from None


def training_context(run_id: str, client: MlflowClient | None = None) -> dict[str, Any]:
    """The training run's metrics and resolved config (data source, window, bar size)."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    try:
        config = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/config/resolved_config.json"))
    except Exception:  # a model logged by something other than train_backtest
        config = {}
    return {"run_id": run_id, "metrics": dict(run.data.metrics), "config": config, "experiment_id": run.info.experiment_id}


def inference_layer(training_config: dict[str, Any]) -> dict[str, Any]:
    """Inference reads the same source, bar size and lookback the model was trained on unless told otherwise."""
    keys = ("data_source", "bar_size", "backtest_lookback_days")
    return {k: training_config[k] for k in keys if training_config.get(k) not in (None, "")}


def inference_step(cfg: RunConfig, resolved: ResolvedModel, training: dict[str, Any]) -> dict:
    from tradeflow.backtest import periods_per_year_for
    from tradeflow.data import load_market_data
    from tradeflow.evidence import build_evidence
    from tradeflow.features import compute_features, latest_window

    tags = {TAG_SYMBOL: cfg.symbol, TAG_DATA_SOURCE: cfg.data_source}
    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags=tags) as run:
        mlflow.log_params({
            "inference.model_uri": resolved.uri, "inference.model_version": resolved.version or "",
            "inference.training_run_id": resolved.training_run_id,
            **{k: v for k, v in cfg.flat_params().items() if k.startswith(("cfg.symbol", "cfg.data_", "cfg.bar_size", "cfg.end_date", "cfg.backtest_lookback_days"))},
        })
        model = mlflow.pyfunc.load_model(resolved.uri)
        meta = _agent_meta(model)
        if meta.get("symbol") and meta["symbol"] != cfg.symbol:
            mlflow.set_tag("tradeflow.warning", f"model trained on {meta['symbol']}, applied to {cfg.symbol}")

        market = load_market_data(cfg)
        mlflow.set_tags({TAG_DATA_DIGEST: market.digest, TAG_SYNTHETIC: str(market.synthetic).lower()})
        market.log_mlflow_input("inference")
        features = compute_features(market.bars)
        window = latest_window(features, int(meta["window"]), symbol=cfg.symbol)
        prediction = model.predict(window[list(meta["feature_columns"])]).iloc[0].to_dict()
        action = int(prediction["action"])
        scores = {k.removeprefix("score_"): float(v) for k, v in prediction.items() if k.startswith("score_")}
        as_of = str(window["date"].iloc[-1].date())
        mlflow.log_params({"data.rows": market.rows, "data.start": str(market.start.date()),
                           "data.as_of": as_of, "data.window_start": str(window["date"].iloc[0].date())})
        mlflow.log_metrics({"model_action": float(action), **{f"score_{k}": v for k, v in scores.items()}})
        mlflow.set_tag(TAG_SUGGESTION, str(prediction["suggestion"]))
        mlflow.log_dict({"model_uri": resolved.uri, "as_of": as_of, **prediction}, "prediction.json")

        evidence = build_evidence(
            symbol=cfg.symbol, bars=market.bars, bar_size=cfg.bar_size,
            periods_per_year=periods_per_year_for(market.bars["date"]),
            model={"uri": resolved.uri, "version": resolved.version, "engine": meta.get("engine"),
                   "algorithm": meta.get("algorithm"), "suggestion": prediction["suggestion"],
                   "target_position": action, "scores": scores},
            training_run=training,
            data={"source": market.source, "digest": market.digest, "rows": market.rows, "synthetic": market.synthetic},
        )
        if meta.get("engine") == "finagent":
            _add_finagent_evidence(model, window, evidence)
        mlflow.log_dict(evidence, "evidence.json")
        figure = price_chart(market.bars, evidence)
        mlflow.log_figure(figure, "plots/price.png")
        plt.close(figure)
        evidence_uri = f"runs:/{run.info.run_id}/evidence.json"
        print(f"{cfg.symbol} {as_of}: model {resolved.uri} suggests {prediction['suggestion']} "
              f"(target position {action}); evidence {evidence_uri}", flush=True)
        return {"run_id": run.info.run_id, "evidence_uri": evidence_uri, "suggestion": prediction["suggestion"]}


def _add_finagent_evidence(model: Any, window: Any, evidence: dict[str, Any]) -> None:
    """engine=finagent: upstream FinAgent's analysis JSON and forecaster prompt join the evidence
    (``finagent`` and ``prompts`` sections; also logged under ``finagent/``)."""
    from tradeflow.engines.finagent import review_evidence

    section, prompts = review_evidence(model.unwrap_python_model().agent, window)
    evidence["finagent"] = section
    evidence["prompts"] = prompts
    mlflow.log_dict(section["analysis"], "finagent/analysis.json")
    mlflow.log_text(prompts["forecaster"]["text"], "finagent/forecaster_prompt.md")
    mlflow.set_tags({"finagent.upstream_rating": str(section["upstream_rating"]),
                     "finagent.calibrated_rating": section["calibrated"]["rating"]})


def _agent_meta(model: Any) -> dict[str, Any]:
    """The agent metadata ``TradingAgentModel.load_context`` read (engine, window, symbol...)."""
    meta = getattr(model.unwrap_python_model(), "meta", None)
    if meta is None:
        raise ModelNotFound("the model is not a tradeflow trading agent (no agent metadata)")
    return dict(meta)


def price_chart(bars, evidence: dict):
    recent = bars.tail(120)
    close = bars["close"]
    figure, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(recent["date"], recent["close"], label="close", color="black", linewidth=1.2)
    ax.plot(recent["date"], close.rolling(20).mean().tail(120), label="SMA 20", linewidth=1)
    ax.plot(recent["date"], close.rolling(50).mean().tail(120), label="SMA 50", linewidth=1)
    ind = evidence["indicators"]
    for level, style in (("support", "--"), ("resistance", ":")):
        if ind.get(level):
            ax.axhline(ind[level], linestyle=style, color="grey", linewidth=0.8, label=level)
    ax.set_title(f"{evidence['symbol']} as of {evidence['as_of']}: model suggests {evidence['model']['suggestion']}")
    ax.set_xlabel("date")
    ax.set_ylabel("price")
    ax.legend(loc="best", fontsize=8)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure
