"""Step 1: data -> features -> train (best checkpoint on valid) -> backtest on test -> model.

What the run records (MLflow):
  params   ``cfg.*`` (every resolved value), ``data.*`` (source, window, split bounds), engine info
  inputs   the market data as an MLflow dataset carrying our content digest
  metrics  ``train_*``/``valid_*``/``test_*`` backtest metrics (incl. ``*_benchmark_*``,
           ``*_excess_*``), the learning curve as step metrics (``curve_*``), speed
  tags     symbol, data source/digest, synthetic flag, model version, fallbacks
  artifacts ``ARTIFACTS`` below + the pyfunc model under ``model/``
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd

from tradeflow.config import RunConfig
from tradeflow.records import Tag, TrainRecord
from tradeflow.tracking import code_version, log_resolved_config, stage_run

log = logging.getLogger(__name__)

STAGE = "train_backtest"
RECORD = TrainRecord
ARTIFACTS = RECORD.described()
TAG_MODEL_VERSION = Tag.MODEL_VERSION
TAG_MODEL_NAME = Tag.MODEL_NAME
TAG_REPRODUCTION_OF = Tag.REPRODUCTION_OF
SYNTHETIC_BANNER = (
    "NOTE: data_source=synthetic -> training on GENERATED prices, not market data. "
    "Use -P data_source=csv:<path> (or backend/ibkr/yfinance) for real data."
)


def train_backtest_step(cfg: RunConfig) -> dict:
    """Run the whole step inside one MLflow run; return the summary (also logged)."""
    from tradeflow.data import load_market_data
    from tradeflow.engines import get_engine
    from tradeflow.features import compute_features, split_for_run, with_history

    engine = get_engine(cfg.engine)  # unknown/unavailable engine fails before the run starts
    tags = {Tag.SYMBOL: cfg.symbol, Tag.DATA_SOURCE: cfg.data_source}
    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        from tradeflow import run_notes

        workdir = Path(tmp)
        own_params = run_notes.resolved_params(STAGE, cfg)
        log_resolved_config(cfg, own_params, RECORD.config.path)

        market = load_market_data(cfg)
        if market.synthetic:
            print(SYNTHETIC_BANNER, flush=True)
        mlflow.set_tags({Tag.DATA_DIGEST: market.digest, Tag.SYNTHETIC: str(market.synthetic).lower()})
        if market.notes:
            mlflow.set_tag(Tag.DATA_NOTES, "; ".join(market.notes)[:5000])
        market.log_mlflow_input("training")

        window = cfg.trademaster.backward_num_day
        features = compute_features(market.bars)
        splits = split_for_run(features, cfg)
        bounds = splits.describe()
        mlflow.log_params({"data.source": market.source, "data.digest": market.digest, "data.rows": market.rows,
                           "data.start": str(market.start.date()), "data.end": str(market.end.date()),
                           **{f"data.{k}": v for k, v in _flatten(bounds).items()}})
        mlflow.log_dict(bounds, RECORD.splits.path)

        log.info("%s: training %s/%s on %d bars (%s .. %s), %d epochs", cfg.symbol, cfg.engine, cfg.algorithm,
                 len(splits.train), bounds["train"]["start"], bounds["train"]["end"], cfg.trademaster.epochs)
        started = time.perf_counter()
        result = engine.train(splits, cfg, progress=_log_progress, workdir=workdir)
        train_wall = time.perf_counter() - started

        metrics: dict[str, float] = {}
        backtests = {}
        # valid/test get the previous split's last window-1 rows as history, so the backtest
        # trades from the split's first bar (the first observation needs a full window; the
        # agent's own, which for engine=finagent is its lookback rather than backward_num_day).
        window = int(getattr(result.agent, "window", window))
        framed = {"train": splits.train,
                  "valid": with_history(splits.train, splits.valid, window),
                  "test": with_history(splits.valid, splits.test, window)}
        for split_name, frame in framed.items():
            backtests[split_name] = engine.backtest(result.agent, frame, cfg)
            metrics.update({f"{split_name}_{k}": float(v) for k, v in backtests[split_name].metrics.items()})
        metrics.update({"train_seconds": train_wall, "env_steps_per_s": float(result.env_steps_per_s),
                        "timesteps": float(result.timesteps), "best_epoch": float(result.best_epoch)})
        metrics.update({k: float(v) for k, v in result.extra_metrics.items()})
        mlflow.log_metrics(metrics)

        _log_table(backtests["valid"].table, RECORD.valid_backtest.path, workdir)
        _log_table(backtests["test"].table, RECORD.test_backtest.path, workdir)
        _log_table(pd.DataFrame(result.learning_curve), RECORD.learning_curve.path, workdir)
        run_notes.log_metrics_json(metrics)
        _log_plots(backtests["test"].table, cfg.symbol, source=market, test_bounds=bounds.get("test", {}), metrics=metrics)

        gate = _log_gate(metrics)
        model_uri = _log_model(result.agent, cfg, features, workdir)
        version = _maybe_register(model_uri, cfg, run.info.run_id, market=market, gate=gate,
                                  valid_frame=framed["valid"], bounds=bounds, metrics=metrics)
        summary = {
            "symbol": cfg.symbol, "run_id": run.info.run_id, "model_uri": model_uri,
            "registered_model": cfg.registered_model_name if version else None, "model_version": version,
            "data_source": market.source, "data_digest": market.digest, "synthetic_data": market.synthetic,
            "test": {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")},
        }
        mlflow.log_dict(summary, RECORD.summary.path)
        model_line = (f"`{model_uri}`, registered as `{cfg.registered_model_name}` version {version}"
                      f" (alias `@{cfg.model_alias}`)" if version else
                      f"`{model_uri}` (not registered: {mlflow.active_run().data.tags.get('tradeflow.registry', 'see tags')})")
        run_notes.set_name_and_note(run.info.run_id, run_notes.train_backtest_name(cfg), run_notes.train_backtest_note(
            cfg, metrics=metrics, bounds=bounds, market=market, model_line=model_line,
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


def _log_model(agent, cfg: RunConfig, features, workdir: Path) -> str:
    from tradeflow.model import log_agent_model

    return log_agent_model(
        agent, engine=cfg.engine, input_example=features, workdir=workdir,
        extra_meta={"symbol": cfg.symbol, "seed": cfg.seed,
                    # engine=finagent calibrates a rule; it has no RL algorithm
                    "algorithm": "calibrated_rule" if cfg.engine == "finagent" else cfg.algorithm},
    )


def _log_gate(metrics: dict[str, float]):
    """The do-no-harm gate on the validation backtest, as run tags (``tradeflow.gate``)."""
    from tradeflow.gate import TAG_GATE, TAG_GATE_REASON, check_gate

    gate = check_gate({k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")})
    mlflow.set_tags({TAG_GATE: "passed" if gate.passed else "failed", TAG_GATE_REASON: gate.reason})
    print(f"do-no-harm gate {'passed' if gate.passed else 'FAILED'}: {gate.reason}", flush=True)
    return gate


def _gate_alias(model_name: str, cfg: RunConfig, gate, valid_frame, metrics: dict[str, float]) -> tuple[bool, str]:
    """``champion`` moves only to a version that passes the gate and beats the current champion
    on this version's validation window (``tradeflow.gate.decide_alias``)."""
    from tradeflow.gate import TAG_ALIAS_DECISION, decide_alias
    from tradeflow.model import champion_return_on

    champion = champion_return_on(model_name, cfg.model_alias, valid_frame, cfg) if cfg.do_no_harm_gate and gate.passed else None
    move, reason = decide_alias(gate, metrics["valid_total_return"], champion, enforced=cfg.do_no_harm_gate)
    mlflow.set_tag(TAG_ALIAS_DECISION, reason)
    print(f"alias @{cfg.model_alias} {reason}", flush=True)
    return move, reason


def _maybe_register(model_uri: str, cfg: RunConfig, run_id: str, *, market=None, gate=None, valid_frame=None,
                    bounds: dict | None = None, metrics: dict[str, float] | None = None) -> str | None:
    """Register under the per-symbol name and move the alias (subject to the do-no-harm gate),
    except for reproductions (which must not change what ``inference`` serves) or when
    ``register_model=false``. Every version is tagged with its engine, algorithm, data window and
    gate result."""
    from tradeflow.gate import TAG_ALIAS_DECISION, TAG_GATE, TAG_GATE_REASON
    from tradeflow.model import register_model

    reproduction_of = os.environ.get("TRADEFLOW_REPRODUCTION_OF")
    if reproduction_of:
        mlflow.set_tag(TAG_REPRODUCTION_OF, reproduction_of)
        mlflow.set_tag(Tag.REGISTRY, "skipped: reproduction run")
        return None
    if not cfg.register_model:
        mlflow.set_tag(Tag.REGISTRY, "skipped: register_model=false")
        return None
    from mlflow.tracking import MlflowClient

    from tradeflow.formatting import pct_text

    metrics, test = metrics or {}, (bounds or {}).get("test", {})
    tags = {"symbol": cfg.symbol, "source_run_id": run_id, "engine": cfg.engine, "algorithm": cfg.algorithm}
    description = None
    if market is not None:
        tags.update({
            "data_source": market.source[:250], "synthetic_data": str(market.synthetic).lower(),
            "test_window": f"{test.get('start', '?')}..{test.get('end', '?')}",
            "test_total_return": f"{metrics.get('test_total_return', float('nan')):.6f}",
            "test_benchmark_total_return": f"{metrics.get('test_benchmark_total_return', float('nan')):.6f}",
            "test_sharpe": f"{metrics.get('test_sharpe', float('nan')):.4f}",
            "pipeline_run_id": MlflowClient().get_run(run_id).data.tags.get(Tag.PARENT_RUN_ID, ""),
        })
        description = (
            f"{cfg.symbol} {cfg.engine}/{cfg.algorithm} agent, {cfg.trademaster.epochs} epochs, seed {cfg.seed}, trained on "
            f"{'SYNTHETIC prices' if market.synthetic else 'real data'} `{market.source}` ({market.start.date()} → {market.end.date()}). "
            f"Test split {test.get('start', '?')} → {test.get('end', '?')}: model {pct_text(metrics.get('test_total_return'))} vs "
            f"buy-and-hold {pct_text(metrics.get('test_benchmark_total_return'))}, Sharpe {metrics.get('test_sharpe', float('nan')):.2f}. "
            f"Training run {run_id}.")
    move = True
    if gate is not None and "valid_total_return" in metrics:
        move, reason = _gate_alias(cfg.registered_model_name, cfg, gate, valid_frame, metrics)
        tags |= {TAG_GATE: "passed" if gate.passed else "failed", TAG_GATE_REASON: gate.reason[:5000],
                 TAG_ALIAS_DECISION: reason[:5000], "valid_total_return": f"{metrics['valid_total_return']:.6f}"}
        if description:
            description += f" Do-no-harm gate: {'passed' if gate.passed else 'FAILED'} ({gate.reason}); alias @{cfg.model_alias} {reason}."
    # data_window: the bars loaded; train/valid windows: what the splits used (after feature warm-up)
    if market is not None:
        tags["data_window"] = f"{market.start.date()}..{market.end.date()}"
    if bounds:
        tags |= {"train_window": f"{bounds['train']['start']}..{bounds['train']['end']}",
                 "valid_window": f"{bounds['valid']['start']}..{bounds['valid']['end']}"}
        tags.setdefault("data_window", f"{bounds['train']['start']}..{bounds['test']['end']}")
    version = register_model(model_uri, cfg.registered_model_name, cfg.model_alias, tags=tags,
                             description=description, move_alias=move)
    mlflow.set_tags({TAG_MODEL_NAME: cfg.registered_model_name, TAG_MODEL_VERSION: version})
    if not move:
        _tag_serving_champion(cfg)
    return version


TAG_SERVING_MODEL = Tag.SERVING_MODEL


def _tag_serving_champion(cfg: RunConfig) -> None:
    """The new version did not become champion: the pipeline's inference serves the champion
    (pinned), when there is one, instead of the model that lost."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        champion = MlflowClient().get_model_version_by_alias(cfg.registered_model_name, cfg.model_alias)
    except MlflowException:
        return
    mlflow.set_tag(TAG_SERVING_MODEL, f"models:/{champion.name}/{champion.version}")


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
