"""TradeMaster's side of the data: our splits as upstream's dataset CSVs, ``cfg.trademaster`` as
upstream's config dict, upstream's environment built from them, and a finished episode's env
memories read back as our ledger. Kept apart from the agent and the engine because it is the one
place that knows upstream's file schema and env bookkeeping (``tradeflow.engines.trademaster.engine``
drives it; tests check parity against it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tradeflow.config import TradeMasterParams
from tradeflow.engines.trademaster.compat import Upstream
from tradeflow.engines.base import PRICE_COLUMN
from tradeflow.features import FEATURE_COLUMNS

#: upstream's configs/algorithmic_trading/algorithmic_trading_BTC_deepscalper_deepscalper_adam_mse.py
UPSTREAM_AGENT = {
    "type": "AlgorithmicTradingDQN", "max_step": 12345, "reward_scale": 1, "repeat_times": 1, "gamma": 0.9,
    "batch_size": 64, "clip_grad_norm": 3.0, "soft_update_tau": 0, "state_value_tau": 0.005,
}
UPSTREAM_TRAINER = {
    "type": "AlgorithmicTradingTrainer", "batch_size": 64, "horizon_len": 128, "if_remove": False,
    "if_discrete": True, "if_off_policy": True, "if_keep_save": True, "if_over_write": False,
    "if_save_buffer": False,
}
#: the CSV columns upstream's dataset files carry before the features (plus an unnamed int index)
UPSTREAM_PRICE_COLUMNS = ("open", "high", "low", "close", "adjcp")


# --- data and config, upstream's way ------------------------------------------------------------


def min_rows(params: TradeMasterParams) -> int:
    """Rows a split needs for upstream's env to take one step: it starts after ``window`` bars and
    ends ``forward_num_day + 1`` bars before the last (one more than our ``split_for_run`` asks)."""
    return params.backward_num_day + params.forward_num_day + 2


def write_upstream_csv(frame: pd.DataFrame, path: Path, *, symbol: str, first_index: int = 0,
                       feature_columns: tuple[str, ...] = FEATURE_COLUMNS) -> Path:
    """``frame`` in upstream's dataset schema: a unique integer index, ``tic``, ``date``, the OHLC and
    ``adjcp`` prices (``adjcp`` = ``close`` if absent), then the feature columns. Floats are written
    with full precision so upstream reads back exactly our numbers."""
    out = pd.DataFrame(index=pd.RangeIndex(first_index, first_index + len(frame)))
    out["tic"] = symbol
    out["date"] = pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d").to_numpy()
    for column in UPSTREAM_PRICE_COLUMNS:
        source = column if column in frame.columns else "close"
        out[column] = frame[source].to_numpy(np.float64)
    for column in feature_columns:
        out[column] = frame[column].to_numpy(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path)
    return path


def dataset_attributes(params: TradeMasterParams) -> dict[str, float | int]:
    """What upstream's environment reads from the dataset object (``get_attr(self.dataset, ...)``);
    its dataset class does not take them from the config, so they are set as attributes."""
    return {
        "initial_amount": float(params.initial_amount),
        "transaction_cost_pct": float(params.transaction_cost_pct),
        "max_volume": int(params.max_volume),
        "future_weights": float(params.future_weights),
    }


def upstream_config(
    paths: dict[str, Path],
    params: TradeMasterParams,
    *,
    seed: int,
    work_dir: Path,
    buffer_size: int,
    feature_columns: tuple[str, ...] = FEATURE_COLUMNS,
) -> dict[str, Any]:
    """The config dict upstream's builders read (the keys of its algorithmic-trading configs),
    with absolute paths (upstream joins them onto its package root, which keeps absolute ones)."""
    n_features = len(feature_columns)
    return {
        "task_name": "algorithmic_trading",
        "data": {
            "type": "AlgorithmicTradingDataset",
            "data_path": str(paths["train"].parent),
            "train_path": str(paths["train"]),
            "valid_path": str(paths["valid"]),
            "test_path": str(paths["test"]),
            "test_dynamic_path": str(paths["test"]),  # read only when test_dynamic != -1
            "test_dynamic": "-1",
            "tech_indicator_list": list(feature_columns),
            "backward_num_day": int(params.backward_num_day),
            "forward_num_day": int(params.forward_num_day),
        },
        "environment": {"type": "AlgorithmicTradingEnvironment"},
        "transition": {"type": "Transition"},
        "agent": dict(UPSTREAM_AGENT),
        "trainer": {
            **UPSTREAM_TRAINER,
            "epochs": int(params.epochs),
            "work_dir": str(work_dir),
            "seeds_list": (int(seed),),
            "buffer_size": int(buffer_size),
            "num_threads": 1,  # a 2-layer MLP gains nothing from more; also keeps runs reproducible
        },
        "loss": {"type": "MSELoss"},
        "optimizer": {"type": "Adam", "lr": float(params.learning_rate)},
        "act": {
            "type": "QNet",
            "state_dim": n_features * int(params.backward_num_day) + 2,
            "action_dim": 2 * int(params.max_volume) + 1,
            "dims": tuple(int(d) for d in params.hidden_dims),
            "explore_rate": float(params.explore_rate),
        },
        "cri": None,
    }


def build_environment(upstream: Upstream, frame_path: Path, params: TradeMasterParams, *, task: str,
                      feature_columns: tuple[str, ...] = FEATURE_COLUMNS) -> Any:
    """One upstream ``AlgorithmicTradingEnvironment`` over a CSV written by ``write_upstream_csv``
    (``task`` "train", "valid" or "test"), built by upstream's dataset and environment builders."""
    paths = {"train": frame_path, "valid": frame_path, "test": frame_path}
    config = upstream.Config(upstream_config(paths, params, seed=0, work_dir=frame_path.parent, buffer_size=1,
                                             feature_columns=feature_columns))
    dataset = upstream.build_dataset(config)
    for name, value in dataset_attributes(params).items():
        setattr(dataset, name, value)
    return upstream.build_environment(config, default_args={"dataset": dataset, "task": task})


# --- upstream's env memories -> our ledger --------------------------------------------------------


def ledger_from_environment(env: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """A finished upstream episode as a ``simulate``-style table, one row per marked bar.

    Upstream marks ``asset_memory[k]`` at the close of row ``window - 1 + k`` of ``frame`` (the
    CSV the env read) after trading there at the previous close; ``compound_memory[k]`` is
    ``[cash, units]`` after the k-th trade. Columns: ``date``, ``price``, ``action`` (units held
    after that close's decision; upstream's position is a number of units, not bounded by
    ``max_volume``), ``position`` (units / max_volume), ``units``, ``cash``, ``equity``,
    ``benchmark`` (buy-and-hold of the initial amount, no fees), ``drawdown``, ``trade``,
    ``cost`` (upstream's fee: ``c/(1-c)`` of the notional when the position grows, ``c`` when it
    shrinks).
    """
    equity = np.asarray(env.asset_memory, dtype=np.float64)
    book = np.asarray(env.compound_memory, dtype=np.float64).reshape(len(env.compound_memory), 2)
    n = len(equity)
    start = int(env.backward_num_day) - 1
    rows = frame.iloc[start:start + n]
    if len(rows) != n:
        raise ValueError(f"frame has {len(frame)} rows; the episode marked {n} bars from row {start}")
    prices = rows[PRICE_COLUMN].to_numpy(np.float64)
    # after the trade at bar t: book[t + 1]; the last marked bar is not traded (the episode ends)
    after = np.vstack([book[1:n], book[n - 1:n]]) if n > 1 else book[:1]
    cash, units = after[:, 0], after[:, 1]
    traded = np.diff(units, prepend=0.0)
    grows = np.abs(units) - np.abs(np.concatenate([[0.0], units[:-1]])) >= 0
    c = float(env.transaction_cost_pct)
    cost = np.abs(traded) * prices * np.where(grows, c / (1.0 - c), c)
    max_volume = float(env.max_volume)
    return pd.DataFrame({
        "date": pd.to_datetime(rows["date"]).to_numpy(),
        "price": prices,
        "action": units.round().astype(np.int64),
        "position": units / max_volume,
        "units": units,
        "cash": cash,
        "equity": equity,
        "benchmark": float(env.initial_amount) * prices / prices[0],
        "drawdown": equity / np.maximum.accumulate(equity) - 1.0,
        "trade": traded != 0.0,
        "cost": np.where(traded != 0.0, cost, 0.0),
    })
