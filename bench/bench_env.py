"""Environment speed: the builtin ``TradingEnv`` against a per-step pandas env in upstream's style.

Runs both envs over TradeMaster's BTC train split with the same random actions and prints the
median raw steps/s of ``--repeats`` episodes each, their ratio, and the median training env
steps/s of the builtin engine (default config: DQN, one gradient step per env step).

    .venv/bin/python bench/bench_env.py [--repeats 5] [--train-repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tradeflow.config import resolve_config  # noqa: E402
from tradeflow.engines.builtin import BuiltinEngine, TradingEnv  # noqa: E402
from tradeflow.features import FEATURE_COLUMNS, Splits  # noqa: E402

BTC = REPO.parent / "shared" / "data" / "trademaster" / "algorithmic_trading" / "BTC"


class PandasIndexingEnv:
    """Reference: the per-step work of upstream's AlgorithmicTradingEnvironment.step, which slices
    the DataFrame for the window, rebuilds the state list column by column, reads prices with
    ``iloc`` and slices the forward window for its volatility info, on every step."""

    def __init__(self, df: pd.DataFrame, *, window: int, forward: int, max_volume: int = 1,
                 initial_amount: float = 100_000.0, cost: float = 0.001, future_weights: float = 0.2) -> None:
        self.df, self.window, self.forward, self.max_volume = df.reset_index(drop=True), window, forward, max_volume
        self.initial_amount, self.cost, self.future_weights = initial_amount, cost, future_weights

    def _state(self) -> np.ndarray:
        state = [self.data[tech].values.tolist() for tech in FEATURE_COLUMNS]
        return np.array(np.array(state).reshape(-1).tolist() + self.compound[-1])

    def reset(self) -> np.ndarray:
        self.compound = [[self.initial_amount, 0]]
        self.day = self.window
        self.data = self.df.iloc[self.day - self.window : self.day, :]
        return self._state()

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        terminal = self.day >= len(self.df.index.unique()) - self.forward - 1
        cash, held = self.compound[-1]
        price = self.data.iloc[-1, :].close
        buy = action - self.max_volume
        if abs(held + buy) < abs(held):
            cash += abs(buy) * price * (1 - self.cost)
        else:
            cash -= abs(buy) * price / (1 - self.cost)
        self.compound.append([cash, held + buy])
        self.day += 1
        self.data = self.df.iloc[self.day - self.window : self.day, :]
        new_price = self.data.iloc[-1, :].close
        newer_price = self.df.iloc[self.day + self.forward - 2].close
        reward = (held + buy) * ((new_price - price) + self.future_weights * (newer_price - price))
        future = self.df.iloc[self.day - 1 : self.day + self.forward, :].close.tolist()
        np.var([b / a - 1 for a, b in zip(future, future[1:])])
        return self._state(), reward, terminal


def load(name: str) -> pd.DataFrame:
    frame = pd.read_csv(BTC / f"{name}.csv", index_col=0)
    frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
    return frame.reset_index(drop=True)


def episode_rate(env, actions: np.ndarray) -> float:
    """Steps/s of one full episode (random actions, no policy)."""
    env.reset()
    steps, done = 0, False
    start = time.perf_counter()
    while not done:
        done = env.step(int(actions[steps]))[2]
        steps += 1
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="episodes per env (median reported)")
    parser.add_argument("--train-repeats", type=int, default=3, help="trainings (median reported)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    cfg = resolve_config({"symbol": "BTC"})
    params = cfg.trademaster
    train, valid = load("train"), load("valid")
    actions = np.random.default_rng(0).integers(0, 2 * params.max_volume + 1, size=len(train))
    ours = TradingEnv(
        train[list(FEATURE_COLUMNS)].to_numpy(), train["close"].to_numpy(), window=params.backward_num_day,
        max_volume=params.max_volume, initial_amount=params.initial_amount,
        transaction_cost_pct=params.transaction_cost_pct, forward_num_day=params.forward_num_day,
        future_weights=params.future_weights,
    )
    reference = PandasIndexingEnv(train, window=params.backward_num_day, forward=params.forward_num_day)
    builtin = statistics.median(episode_rate(ours, actions) for _ in range(args.repeats))
    pandas_rate = statistics.median(episode_rate(reference, actions) for _ in range(args.repeats))

    splits = Splits(train=train, valid=valid, test=valid)
    with tempfile.TemporaryDirectory() as tmp:
        training = statistics.median(
            BuiltinEngine().train(splits, cfg, workdir=Path(tmp)).env_steps_per_s for _ in range(args.train_repeats)
        )

    results = {
        "data": f"BTC train.csv, {len(train)} rows, window {params.backward_num_day}",
        "builtin_env_steps_per_s": round(builtin),
        "pandas_env_steps_per_s": round(pandas_rate),
        "speedup": round(builtin / pandas_rate, 1),
        "training_env_steps_per_s": round(training),
        "training": f"{cfg.algorithm}, {params.epochs} epochs, hidden {list(params.hidden_dims)}",
        "repeats": {"env": args.repeats, "training": args.train_repeats},
    }
    for key, value in results.items():
        print(f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
