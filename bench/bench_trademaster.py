"""Upstream TradeMaster against the builtin engine, same data, same epochs, one process.

1. Raw env speed: upstream's real ``AlgorithmicTradingEnvironment`` (built by its own builders) and
   our ``TradingEnv`` step through TradeMaster's BTC train split with the same random actions;
   median steps/s of ``--repeats`` episodes each. Goal: builtin >= 100x.
2. Training wall time: ``TradeMasterEngine.train`` (upstream's DQN trainer: train_and_valid + test)
   and ``BuiltinEngine.train`` (SB3 DQN, per-epoch train/valid backtests) on the same splits,
   config and seed; median of ``--train-repeats`` each. Goal: builtin >= 3x faster.

Needs upstream (``bash scripts/install_trademaster.sh``):

    .venv-tm/bin/python bench/bench_trademaster.py [--epochs 3] [--repeats 5] [--train-repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
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
from tradeflow.engines._trademaster_compat import import_trademaster, upstream_quiet_stdout  # noqa: E402
from tradeflow.engines.builtin import BuiltinEngine, TradingEnv  # noqa: E402
from tradeflow.features import FEATURE_COLUMNS, Splits  # noqa: E402

BTC = REPO.parent / "shared" / "data" / "trademaster" / "algorithmic_trading" / "BTC"


def load(name: str) -> pd.DataFrame:
    frame = pd.read_csv(BTC / f"{name}.csv", index_col=0)
    frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
    return frame.reset_index(drop=True)


def builtin_rate(env: TradingEnv, actions: np.ndarray) -> float:
    env.reset(seed=0)
    steps, done = 0, False
    start = time.perf_counter()
    while not done:
        done = env.step(int(actions[steps]))[2]
        steps += 1
    return steps / (time.perf_counter() - start)


def upstream_rate(env, actions: np.ndarray) -> float:
    with upstream_quiet_stdout(io.StringIO()):  # its terminal step prints a table
        env.reset()
        steps, done = 0, False
        start = time.perf_counter()
        while not done:
            done = env.step(np.int64(actions[steps]))[2]
            steps += 1
        return steps / (time.perf_counter() - start)


def timed_train(engine, splits: Splits, cfg) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = engine.train(splits, cfg, workdir=Path(tmp))
        return time.perf_counter() - start, result.env_steps_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs for both trainings (default: config's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=5, help="episodes per env (median reported)")
    parser.add_argument("--train-repeats", type=int, default=3, help="trainings per engine (median reported)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    layer = {"symbol": "BTC", "seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    cfg = resolve_config(layer)
    params = cfg.trademaster
    started = time.perf_counter()
    upstream = import_trademaster()
    import_seconds = time.perf_counter() - started
    from tradeflow.engines.trademaster import TradeMasterEngine, build_environment

    train, valid, test = load("train"), load("valid"), load("test")
    actions = np.random.default_rng(0).integers(0, 2 * params.max_volume + 1, size=len(train))

    # 1. raw env speed ----------------------------------------------------------------------------
    ours = TradingEnv(
        train[list(FEATURE_COLUMNS)].to_numpy(), train["close"].to_numpy(), window=params.backward_num_day,
        max_volume=params.max_volume, initial_amount=params.initial_amount,
        transaction_cost_pct=params.transaction_cost_pct, forward_num_day=params.forward_num_day,
        future_weights=params.future_weights, position_sizing="units",
    )
    with upstream_quiet_stdout(io.StringIO()):
        theirs = build_environment(upstream, BTC / "train.csv", params, task="train")
    builtin_env = statistics.median(builtin_rate(ours, actions) for _ in range(args.repeats))
    upstream_env = statistics.median(upstream_rate(theirs, actions) for _ in range(args.repeats))

    # 2. training -----------------------------------------------------------------------------------
    splits = Splits(train=train, valid=valid, test=test)
    engines = {"upstream": TradeMasterEngine(), "builtin": BuiltinEngine()}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for _ in range(args.train_repeats):  # interleaved, so load drifts hit both alike
        for name, engine in engines.items():
            runs[name].append(timed_train(engine, splits, cfg))
    wall = {name: statistics.median(w for w, _ in rows) for name, rows in runs.items()}
    rate = {name: statistics.median(r for _, r in rows) for name, rows in runs.items()}

    results = {
        "data": f"TradeMaster BTC splits: train {len(train)}, valid {len(valid)}, test {len(test)} rows; "
                f"window {params.backward_num_day}, horizon {params.forward_num_day}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "upstream_import_s": round(import_seconds, 1),
        "upstream_env_steps_per_s": round(upstream_env),
        "builtin_env_steps_per_s": round(builtin_env),
        "env_speedup": round(builtin_env / upstream_env, 1),
        "training": f"dqn, {params.epochs} epochs, hidden {list(params.hidden_dims)}, seed {cfg.seed}",
        "upstream_train_wall_s": round(wall["upstream"], 2),
        "builtin_train_wall_s": round(wall["builtin"], 2),
        "train_speedup": round(wall["upstream"] / wall["builtin"], 2),
        "upstream_train_env_steps_per_s": round(rate["upstream"]),
        "builtin_train_env_steps_per_s": round(rate["builtin"]),
        "goals": {"env_speedup >= 100": builtin_env / upstream_env >= 100,
                  "train_speedup >= 3": wall["upstream"] / wall["builtin"] >= 3},
        "repeats": {"env": args.repeats, "training": args.train_repeats},
        "all_train_wall_s": {name: [round(w, 2) for w, _ in rows] for name, rows in runs.items()},
    }
    for key, value in results.items():
        print(f"{key:32s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
