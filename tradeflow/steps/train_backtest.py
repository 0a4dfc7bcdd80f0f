"""Step 1: data -> features -> train (best checkpoint on valid) -> backtest on test -> model.

What the run records (MLflow):
  params   ``cfg.*`` (every resolved value), ``data.*`` (source, window, split bounds), engine info
  inputs   the market data as an MLflow dataset carrying our content digest
  metrics  ``train_*``/``valid_*``/``test_*`` backtest metrics (incl. ``*_benchmark_*``,
           ``*_excess_*``), the learning curve as step metrics (``curve_*``), speed
  tags     symbol, data source/digest, synthetic flag, model version, fallbacks
  artifacts ``ARTIFACTS`` below + the pyfunc model under ``model/``

``compute_train`` is the step without MLflow (the walk-forward refits call it too);
``record_train`` writes its ``TrainOutcome`` through ``TrainRecord``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import pandas as pd

from tradeflow.config import RunConfig
from tradeflow.runs.records import Tag, TrainRecord
from tradeflow.runs.tracking import code_version, log_resolved_config, stage_run

log = logging.getLogger(__name__)

STAGE = "train_backtest"
RECORD = TrainRecord
ARTIFACTS = RECORD.described()
SYNTHETIC_BANNER = (
    "NOTE: data_source=synthetic -> training on GENERATED prices, not market data. "
    "Use -P data_source=csv:<path> (or backend/ibkr/yfinance) for real data."
)


# --- compute: splits in, trained agent + backtests + gate out (no MLflow) ----------------------


@dataclass(frozen=True, eq=False)
class TrainOutcome:
    """What training produced, before anything is recorded: the walk-forward refits reuse it."""

    result: Any  # the engine's TrainResult (agent, learning curve, speed)
    splits: Any  # tradeflow.features.Splits
    #: what each split was backtested on: valid and test carry the previous split's last window-1 rows
    frames: dict[str, pd.DataFrame]
    backtests: dict[str, Any]  # split -> BacktestResult
    #: ``train_*``/``valid_*``/``test_*`` backtest metrics, speed, best epoch, the engine's extras
    metrics: dict[str, float]
    gate: Any  # tradeflow.gate.GateResult of the validation backtest
    train_seconds: float

    @property
    def agent(self) -> Any:
        return self.result.agent

    @property
    def bounds(self) -> dict[str, dict[str, str | int]]:
        return self.splits.describe()


@dataclass(frozen=True)
class Registration:
    """How registration went: the version, or why it was skipped (the run description says which)."""

    version: str | None = None
    skipped: str | None = None  # "reproduction run" | "register_model=false"


def compute_train(splits, cfg: RunConfig, *, engine, workdir: Path,
                  progress: Callable[[dict], None] | None = None) -> TrainOutcome:
    """Train on ``splits.train`` (best epoch on valid), backtest all three splits, apply the
    do-no-harm gate. ``progress`` gets each epoch's update (the step passes an MLflow logger)."""
    from tradeflow.features import with_history
    from tradeflow.gate import check_gate

    started = time.perf_counter()
    result = engine.train(splits, cfg, progress=progress, workdir=workdir)
    train_seconds = time.perf_counter() - started
    # valid/test get the previous split's last window-1 rows as history, so the backtest trades
    # from the split's first bar (the first observation needs a full window; the agent's own,
    # which for engine=finagent is its lookback rather than backward_num_day).
    window = int(getattr(result.agent, "window", cfg.trademaster.backward_num_day))
    frames = {"train": splits.train,
              "valid": with_history(splits.train, splits.valid, window),
              "test": with_history(splits.valid, splits.test, window)}
    metrics: dict[str, float] = {}
    backtests = {}
    for split_name, frame in frames.items():
        backtests[split_name] = engine.backtest(result.agent, frame, cfg)
        metrics.update({f"{split_name}_{k}": float(v) for k, v in backtests[split_name].metrics.items()})
    metrics.update({"train_seconds": train_seconds, "env_steps_per_s": float(result.env_steps_per_s),
                    "timesteps": float(result.timesteps), "best_epoch": float(result.best_epoch)})
    metrics.update({k: float(v) for k, v in result.extra_metrics.items()})
    gate = check_gate({k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")})
    return TrainOutcome(result, splits, frames, backtests, metrics, gate, train_seconds)


def compute_reviewer(features: pd.DataFrame, outcome: TrainOutcome, cfg: RunConfig) -> dict:
    """The reviewer logged with the model (``tradeflow.decision_rules.fitted_reviewer``): the agent's
    record is its test-split positions (data it was neither trained nor selected on); monthly rules,
    a 21-bar horizon, as ``evaluate`` measures them. The prior is the universe's when the data source
    holds several tickers (every one of them over the same dates, as ``evaluate`` has it on that
    universe), else the symbol's own; ``reviewer.json`` says which (``prior_source``, ``universe``)."""
    import numpy as np

    from tradeflow.backtest import periods_per_year_for
    from tradeflow.data.files import universe_closes
    from tradeflow.decision_rules import fitted_reviewer
    from tradeflow.metalabel import UniverseLabels

    dates = features["date"]
    try:
        closes = universe_closes(cfg.data_source, first=dates.iloc[0], last=dates.iloc[-1])
    except Exception:  # noqa: BLE001 - the symbol's own prior, said in reviewer.json (universe: null)
        closes = {}
    universe = UniverseLabels(closes, horizon=21).rate_at(dates.iloc[-1].to_datetime64()) if len(closes) > 1 else None

    close = features["close"].to_numpy(np.float64)
    test = outcome.backtests["test"].table
    exposure = np.full(len(close), np.nan)
    rows = np.searchsorted(features["date"].to_numpy(), pd.to_datetime(test["date"]).to_numpy())
    ok = (rows < len(close))
    exposure[rows[ok]] = np.clip(test["position"].to_numpy(np.float64)[ok], 0.0, 1.0)
    return fitted_reviewer(close, agent_exposure=exposure, step=21, horizon=21,
                           fee=cfg.trademaster.transaction_cost_pct, periods_per_year=periods_per_year_for(features["date"]),
                           agent_allowed=bool(outcome.gate.passed) or not cfg.do_no_harm_gate, seed=cfg.seed,
                           universe=universe)


def registration_skipped(cfg: RunConfig, reproduction_of: str | None) -> str | None:
    """Why this run registers no version, or None: a reproduction must not change what
    ``inference`` serves, and ``register_model=false`` asks for none."""
    if reproduction_of:
        return "reproduction run"
    if not cfg.register_model:
        return "register_model=false"
    return None


def train_summary(cfg: RunConfig, outcome: TrainOutcome, *, market, run_id: str, model_uri: str,
                  registration: Registration) -> dict:
    """``summary.json`` and the step's return value."""
    version = registration.version
    return {
        "symbol": cfg.symbol, "run_id": run_id, "model_uri": model_uri,
        "registered_model": cfg.registered_model_name if version else None, "model_version": version,
        "data_source": market.source, "data_digest": market.digest, "synthetic_data": market.synthetic,
        "test": {k.removeprefix("test_"): v for k, v in outcome.metrics.items() if k.startswith("test_")},
    }


def model_line(cfg: RunConfig, model_uri: str, registration: Registration) -> str:
    """The description's **Model** line: the version and alias, or why it was not registered."""
    if registration.version:
        return (f"`{model_uri}`, registered as `{cfg.registered_model_name}` version {registration.version}"
                f" (alias `@{cfg.model_alias}`)")
    return f"`{model_uri}` (not registered: {registration.skipped or 'no version'})"


def version_metadata(cfg: RunConfig, *, market, bounds: dict, metrics: dict[str, float], run_id: str,
                     pipeline_run_id: str, engine=None) -> tuple[dict[str, str], str]:
    """The registered version's tags and description (before the gate and alias are added)."""
    from tradeflow.engines import get_engine
    from tradeflow.runs.formatting import pct_text

    engine = engine or get_engine(cfg.engine)
    provenance = engine.provenance()

    test = bounds.get("test", {})
    tags = {"symbol": cfg.symbol, "source_run_id": run_id, "engine": cfg.engine, "algorithm": cfg.algorithm,
            "data_source": market.source[:250], "synthetic_data": str(market.synthetic).lower(),
            "test_window": f"{test.get('start', '?')}..{test.get('end', '?')}",
            "test_total_return": f"{metrics.get('test_total_return', float('nan')):.6f}",
            "test_benchmark_total_return": f"{metrics.get('test_benchmark_total_return', float('nan')):.6f}",
            "test_sharpe": f"{metrics.get('test_sharpe', float('nan')):.4f}",
            "pipeline_run_id": pipeline_run_id, "implementation": provenance.implementation,
            "implementation_label": provenance.label[:5000]}
    description = (
        f"{cfg.symbol} {engine.training_description(cfg)}, seed {cfg.seed}, implementation: {provenance.label}; trained on "
        f"{'SYNTHETIC prices' if market.synthetic else 'real data'} `{market.source}` ({market.start.date()} → {market.end.date()}). "
        f"Test split {test.get('start', '?')} → {test.get('end', '?')}: model {pct_text(metrics.get('test_total_return'))} vs "
        f"buy-and-hold {pct_text(metrics.get('test_benchmark_total_return'))}, Sharpe {metrics.get('test_sharpe', float('nan')):.2f}. "
        f"Training run {run_id}.")
    # data_window: the bars loaded; train/valid windows: what the splits used (after feature warm-up)
    tags["data_window"] = f"{market.start.date()}..{market.end.date()}"
    if bounds:
        tags |= {"train_window": f"{bounds['train']['start']}..{bounds['train']['end']}",
                 "valid_window": f"{bounds['valid']['start']}..{bounds['valid']['end']}"}
    return tags, description


# --- the step: open run -> load inputs -> compute -> record ------------------------------------


def train_backtest_step(cfg: RunConfig) -> dict:
    """Run the whole step inside one MLflow run; return the summary (also logged)."""
    from tradeflow.data import load_market_data
    from tradeflow.engines import get_engine
    from tradeflow.features import compute_features, split_for_run

    engine = get_engine(cfg.engine)  # unknown/unavailable engine fails before the run starts
    tags = {Tag.SYMBOL: cfg.symbol, Tag.DATA_SOURCE: cfg.data_source}
    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        from tradeflow.runs import notes as run_notes

        workdir = Path(tmp)
        own_params = run_notes.resolved_params(STAGE, cfg)
        log_resolved_config(cfg, own_params, RECORD.config.path)

        market = load_market_data(cfg)
        if market.synthetic:
            print(SYNTHETIC_BANNER, flush=True)
        _record_market(market)
        features = compute_features(market.bars)
        splits = split_for_run(features, cfg)
        bounds = splits.describe()
        _record_splits(market, bounds)

        log.info("%s: training %s on %d bars (%s .. %s); implementation: %s", cfg.symbol,
                 engine.training_description(cfg), len(splits.train), bounds["train"]["start"], bounds["train"]["end"],
                 engine.provenance().label)
        outcome = compute_train(splits, cfg, engine=engine, workdir=workdir, progress=_log_progress)
        return record_train(run, cfg, outcome, market=market, features=features, own_params=own_params,
                            workdir=workdir, engine=engine)


# --- record: the outcome through TrainRecord, the model into the registry ----------------------


def _record_market(market) -> None:
    mlflow.set_tags({Tag.DATA_DIGEST: market.digest, Tag.SYNTHETIC: str(market.synthetic).lower()})
    if market.notes:
        mlflow.set_tag(Tag.DATA_NOTES, "; ".join(market.notes)[:5000])
    market.log_mlflow_input("training")


def _record_splits(market, bounds: dict) -> None:
    """Logged before training, so a run that fails to train still says what it trained on."""
    mlflow.log_params({"data.source": market.source, "data.digest": market.digest, "data.rows": market.rows,
                       "data.start": str(market.start.date()), "data.end": str(market.end.date()),
                       **{f"data.{k}": v for k, v in _flatten(bounds).items()}})
    mlflow.log_dict(bounds, RECORD.splits.path)


def record_train(run, cfg: RunConfig, outcome: TrainOutcome, *, market, features: pd.DataFrame,
                 own_params: dict, workdir: Path, engine=None) -> dict:
    """Log the outcome's metrics, tables, plots and gate; log and register the model; describe the run.
    ``engine`` (the one that trained) says what training did and which implementation did it."""
    from tradeflow.engines import get_engine
    from tradeflow.runs import notes as run_notes
    from tradeflow.settings import current

    engine = engine or get_engine(cfg.engine)
    provenance = engine.provenance()
    mlflow.set_tag(Tag.ENGINE_IMPLEMENTATION, provenance.label[:5000])

    metrics, bounds = outcome.metrics, outcome.bounds
    mlflow.log_metrics(metrics)
    _log_table(outcome.backtests["valid"].table, RECORD.valid_backtest.path, workdir)
    _log_table(outcome.backtests["test"].table, RECORD.test_backtest.path, workdir)
    _log_table(pd.DataFrame(outcome.result.learning_curve), RECORD.learning_curve.path, workdir)
    run_notes.log_metrics_json(metrics)
    _log_plots(outcome.backtests["test"].table, cfg.symbol, source=market, test_bounds=bounds.get("test", {}),
               metrics=metrics)

    _log_gate(outcome.gate)
    mlflow.log_dict(compute_reviewer(features, outcome, cfg), RECORD.reviewer.path)
    model_uri = _log_model(outcome.agent, cfg, features, workdir, provenance=provenance)
    registration = _maybe_register(model_uri, cfg, run.info.run_id, outcome=outcome, market=market,
                                   reproduction_of=current().reproduction_of, engine=engine)
    summary = train_summary(cfg, outcome, market=market, run_id=run.info.run_id, model_uri=model_uri,
                            registration=registration)
    mlflow.log_dict(summary, RECORD.summary.path)
    run_notes.set_name_and_note(run.info.run_id, run_notes.train_backtest_name(cfg, engine.training_label(cfg)), run_notes.train_backtest_note(
        cfg, metrics=metrics, bounds=bounds, market=market, model_line=model_line(cfg, model_uri, registration),
        agent_line=agent_line(cfg, engine, metrics),
        reproduce=run_notes.reproduce_block(STAGE, own_params, commit=code_version(), run_id=run.info.run_id,
                                            experiment_name=cfg.experiment_name)))
    _print_summary(summary)
    return summary


def _log_progress(update: dict) -> None:
    """Per-epoch learning curve as MLflow step metrics (the engine also logs a progress line)."""
    step = int(update.get("timesteps", update.get("epoch", 0)))
    numeric = {f"curve_{k}": float(v) for k, v in update.items() if isinstance(v, (int, float)) and k not in {"epoch", "timesteps"}}
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def _log_table(table, artifact_path: str, workdir: Path) -> None:
    path = workdir / Path(artifact_path).name
    table.to_csv(path, index=False)
    mlflow.log_artifact(str(path), str(Path(artifact_path).parent))


def _log_plots(table, symbol: str, *, source, test_bounds: dict, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # before anything imports pyplot
    import matplotlib.pyplot as plt

    from tradeflow.plots import drawdown_plot, equity_plot, plot_title, trades_plot

    title = plot_title(symbol, "test split", start=test_bounds.get("start"), end=test_bounds.get("end"),
                       source=source.source, synthetic=source.synthetic,
                       model_return=metrics.get("test_total_return"),
                       benchmark_return=metrics.get("test_benchmark_total_return"))
    for artifact, make in ((RECORD.equity_plot, equity_plot), (RECORD.drawdown_plot, drawdown_plot),
                           (RECORD.trades_plot, trades_plot)):
        figure = make(table, title=title)
        mlflow.log_figure(figure, artifact.path)
        plt.close(figure)


def agent_line(cfg: RunConfig, engine, metrics: dict[str, float]) -> str:
    """The description's **Agent** line: what the engine did and which implementation did it."""
    best = (f"best epoch {int(metrics.get('best_epoch', 0))}, " if cfg.engine != "finagent"
            else f"selected rule ranked {int(metrics.get('best_epoch', 0))} of the top {cfg.finagent.top_k} on valid, ")
    return (f"**Agent**: {engine.training_description(cfg)}; seed {cfg.seed}; {best}trained in "
            f"{metrics.get('train_seconds', float('nan')):.1f} s. **Implementation**: {engine.provenance().label}.")


def _log_model(agent, cfg: RunConfig, features, workdir: Path, *, provenance) -> str:
    from tradeflow.model import log_agent_model

    return log_agent_model(
        agent, engine=cfg.engine, input_example=features, workdir=workdir,
        extra_meta={"symbol": cfg.symbol, "seed": cfg.seed, "provenance": provenance.as_dict(),
                    # engine=finagent calibrates a rule; it has no RL algorithm
                    "algorithm": "calibrated_rule" if cfg.engine == "finagent" else cfg.algorithm},
    )


def _log_gate(gate) -> None:
    """The do-no-harm gate on the validation backtest, as run tags (``tradeflow.gate``)."""
    mlflow.set_tags({Tag.GATE: "passed" if gate.passed else "failed", Tag.GATE_REASON: gate.reason})
    print(f"do-no-harm gate {'passed' if gate.passed else 'FAILED'}: {gate.reason}", flush=True)


def _gate_alias(model_name: str, cfg: RunConfig, gate, valid_frame, metrics: dict[str, float]) -> tuple[bool, str]:
    """``champion`` moves only to a version that passes the gate and beats the current champion
    on this version's validation window (``tradeflow.gate.decide_alias``)."""
    from tradeflow.gate import decide_alias
    from tradeflow.model import champion_return_on

    champion = champion_return_on(model_name, cfg.model_alias, valid_frame, cfg) if cfg.do_no_harm_gate and gate.passed else None
    move, reason = decide_alias(gate, metrics["valid_total_return"], champion, enforced=cfg.do_no_harm_gate)
    mlflow.set_tag(Tag.ALIAS_DECISION, reason)
    print(f"alias @{cfg.model_alias} {reason}", flush=True)
    return move, reason


def _maybe_register(model_uri: str, cfg: RunConfig, run_id: str, *, outcome: TrainOutcome, market,
                    reproduction_of: str | None, engine) -> Registration:
    """Register under the per-symbol name and move the alias (subject to the do-no-harm gate),
    unless ``registration_skipped`` says why not. Every version is tagged with its engine,
    algorithm, data window and gate result."""
    from mlflow.tracking import MlflowClient

    from tradeflow.model import register_model

    skipped = registration_skipped(cfg, reproduction_of)
    if skipped:
        if reproduction_of:
            mlflow.set_tag(Tag.REPRODUCTION_OF, reproduction_of)
        mlflow.set_tag(Tag.REGISTRY, f"skipped: {skipped}")
        return Registration(skipped=skipped)
    metrics, gate = outcome.metrics, outcome.gate
    pipeline_run_id = MlflowClient().get_run(run_id).data.tags.get(Tag.PARENT_RUN_ID, "")
    tags, description = version_metadata(cfg, market=market, bounds=outcome.bounds, metrics=metrics, run_id=run_id,
                                         pipeline_run_id=pipeline_run_id, engine=engine)
    move, reason = _gate_alias(cfg.registered_model_name, cfg, gate, outcome.frames["valid"], metrics)
    tags |= {Tag.GATE: "passed" if gate.passed else "failed", Tag.GATE_REASON: gate.reason[:5000],
             Tag.ALIAS_DECISION: reason[:5000], "valid_total_return": f"{metrics['valid_total_return']:.6f}"}
    description += f" Do-no-harm gate: {'passed' if gate.passed else 'FAILED'} ({gate.reason}); alias @{cfg.model_alias} {reason}."
    version = register_model(model_uri, cfg.registered_model_name, cfg.model_alias, tags=tags,
                             description=description, move_alias=move)
    mlflow.set_tags({Tag.MODEL_NAME: cfg.registered_model_name, Tag.MODEL_VERSION: version})
    if not move:
        _tag_serving_champion(cfg)
    return Registration(version=version)


def _tag_serving_champion(cfg: RunConfig) -> None:
    """The new version did not become champion: the pipeline's inference serves the champion
    (pinned), when there is one, instead of the model that lost."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        champion = MlflowClient().get_model_version_by_alias(cfg.registered_model_name, cfg.model_alias)
    except MlflowException:
        return
    mlflow.set_tag(Tag.SERVING_MODEL, f"models:/{champion.name}/{champion.version}")


def _flatten(node: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _print_summary(summary: dict) -> None:
    test = summary["test"]
    print(
        f"{summary['symbol']}: test total return {test.get('total_return', float('nan')):+.2%} "
        f"(buy-and-hold {test.get('benchmark_total_return', float('nan')):+.2%}), "
        f"sharpe {test.get('sharpe', float('nan')):.2f}, max drawdown {test.get('max_drawdown', float('nan')):.2%}, "
        f"trades {int(test.get('num_trades', 0))}; model {summary['model_uri']}"
        + (f" registered as {summary['registered_model']} v{summary['model_version']}" if summary["model_version"] else ""),
        flush=True,
    )
    if summary["synthetic_data"]:
        print(SYNTHETIC_BANNER, flush=True)
