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

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from tradeflow.config import RunConfig  # noqa: E402
from tradeflow.tracking import (  # noqa: E402
    TAG_DATA_DIGEST,
    TAG_DATA_SOURCE,
    TAG_SYMBOL,
    TAG_SYNTHETIC,
    stage_run,
)

log = logging.getLogger(__name__)

STAGE = "train_backtest"
ARTIFACTS = {
    "config/resolved_config.json": "the resolved RunConfig (input to `-P config=` for a re-run)",
    "data/splits.json": "rows and date bounds of train/valid/test",
    "backtest/test_backtest.csv": "per-bar test backtest: date, price, action, position, equity, benchmark",
    "backtest/valid_backtest.csv": "per-bar validation backtest of the selected checkpoint",
    "backtest/learning_curve.csv": "per-epoch training and validation results",
    "plots/equity.png": "equity vs buy-and-hold on the test split",
    "plots/drawdown.png": "drawdown of the strategy on the test split",
    "plots/trades.png": "trades marked on the price",
    "summary.json": "headline metrics, model URI and version",
}
TAG_MODEL_VERSION = "tradeflow.model_version"
TAG_MODEL_NAME = "tradeflow.model_name"
TAG_REPRODUCTION_OF = "tradeflow.reproduction_of"
SYNTHETIC_BANNER = (
    "NOTE: data_source=synthetic -> training on GENERATED prices, not market data. "
    "Use -P data_source=csv:<path> (or backend/ibkr/yfinance) for real data."
)


def train_backtest_step(cfg: RunConfig) -> dict:
    """Run the whole step inside one MLflow run; return the summary (also logged)."""
    from tradeflow.data import load_market_data
    from tradeflow.engines import get_engine
    from tradeflow.features import compute_features, split_for_run

    engine = get_engine(cfg.engine)  # unknown/unavailable engine fails before the run starts
    tags = {TAG_SYMBOL: cfg.symbol, TAG_DATA_SOURCE: cfg.data_source}
    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mlflow.log_params(cfg.flat_params())
        if cfg.adjustments:
            mlflow.set_tag("tradeflow.config_adjustments", "; ".join(cfg.adjustments))
        mlflow.log_dict(json.loads(cfg.to_json()), "config/resolved_config.json")

        market = load_market_data(cfg)
        if market.synthetic:
            print(SYNTHETIC_BANNER, flush=True)
        mlflow.set_tags({TAG_DATA_DIGEST: market.digest, TAG_SYNTHETIC: str(market.synthetic).lower()})
        if market.notes:
            mlflow.set_tag("tradeflow.data_notes", "; ".join(market.notes)[:5000])
        market.log_mlflow_input("training")

        window = cfg.trademaster.backward_num_day
        features = compute_features(market.bars)
        splits = split_for_run(features, cfg)
        bounds = splits.describe()
        mlflow.log_params({"data.source": market.source, "data.digest": market.digest, "data.rows": market.rows,
                           "data.start": str(market.start.date()), "data.end": str(market.end.date()),
                           **{f"data.{k}": v for k, v in _flatten(bounds).items()}})
        mlflow.log_dict(bounds, "data/splits.json")

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

        for split_name in ("valid", "test"):
            _log_table(backtests[split_name].table, f"backtest/{split_name}_backtest.csv", workdir)
        _log_table(pd.DataFrame(result.learning_curve), "backtest/learning_curve.csv", workdir)
        _log_plots(backtests["test"].table, cfg.symbol)

        model_uri = _log_model(result.agent, cfg, features, workdir)
        version = _maybe_register(model_uri, cfg, run.info.run_id)
        summary = {
            "symbol": cfg.symbol, "run_id": run.info.run_id, "model_uri": model_uri,
            "registered_model": cfg.registered_model_name if version else None, "model_version": version,
            "data_source": market.source, "data_digest": market.digest, "synthetic_data": market.synthetic,
            "test": {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")},
        }
        mlflow.log_dict(summary, "summary.json")
        _print_summary(summary)
        return summary


def with_history(previous: pd.DataFrame, frame: pd.DataFrame, window: int) -> pd.DataFrame:
    return pd.concat([previous.tail(window - 1), frame], ignore_index=True)


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


def _log_plots(table, symbol: str) -> None:
    from tradeflow.plots import drawdown_plot, equity_plot, trades_plot

    for name, make in (("equity", equity_plot), ("drawdown", drawdown_plot), ("trades", trades_plot)):
        figure = make(table, title=f"{symbol} test split") if _accepts_title(make) else make(table)
        mlflow.log_figure(figure, f"plots/{name}.png")
        plt.close(figure)


def _accepts_title(function) -> bool:
    import inspect

    return "title" in inspect.signature(function).parameters


def _log_model(agent, cfg: RunConfig, features, workdir: Path) -> str:
    from tradeflow.model import log_agent_model

    return log_agent_model(
        agent, engine=cfg.engine, input_example=features, workdir=workdir,
        extra_meta={"symbol": cfg.symbol, "seed": cfg.seed,
                    # engine=finagent calibrates a rule; it has no RL algorithm
                    "algorithm": "calibrated_rule" if cfg.engine == "finagent" else cfg.algorithm},
    )


def _maybe_register(model_uri: str, cfg: RunConfig, run_id: str) -> str | None:
    """Register under the per-symbol name and move the alias, except for reproductions (which
    must not change what ``inference`` serves) or when ``register_model=false``."""
    from tradeflow.model import register_model

    reproduction_of = os.environ.get("TRADEFLOW_REPRODUCTION_OF")
    if reproduction_of:
        mlflow.set_tag(TAG_REPRODUCTION_OF, reproduction_of)
        mlflow.set_tag("tradeflow.registry", "skipped: reproduction run")
        return None
    if not cfg.register_model:
        mlflow.set_tag("tradeflow.registry", "skipped: register_model=false")
        return None
    version = register_model(model_uri, cfg.registered_model_name, cfg.model_alias,
                             tags={"symbol": cfg.symbol, "source_run_id": run_id})
    mlflow.set_tags({TAG_MODEL_NAME: cfg.registered_model_name, TAG_MODEL_VERSION: version})
    return version


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
