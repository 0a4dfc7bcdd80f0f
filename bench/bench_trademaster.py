"""Upstream TradeMaster against the builtin engine, same data, same epochs, one process.

1. Raw env speed: upstream's real ``AlgorithmicTradingEnvironment`` (built by its own builders) and
   our ``TradingEnv`` step through TradeMaster's BTC train split with the same random actions;
   median steps/s of ``--repeats`` episodes each. Goal: builtin >= 100x.
2. Training at equal work: ``TradeMasterEngine.train`` (upstream's DQN trainer: train_and_valid +
   test) against ``BuiltinEngine(train_freq=1).train``: the same Q-network (state -> 64 -> 64 ->
   actions, ReLU), batch 64, Adam, one gradient update per env step (upstream: ``repeat_times`` 1,
   128 updates after each 128 env steps, after 128 random warm-up steps; builtin: one update after
   every env step once ``learning_starts`` steps are in the buffer), same splits, epochs and seed.
   Goal: builtin training env steps/s >= 3x upstream's. The builtin default config (one update per
   4 env steps) is reported beside it, not as the comparison.
   The three trainings alternate, ``--train-repeats`` rounds, so load drifts hit all alike; medians
   are reported, with every run's figures and the load average before and after.

Needs upstream (``bash scripts/install_trademaster.sh``):

    .venv-tm/bin/python bench/bench_trademaster.py [--epochs 3] [--repeats 5] [--train-repeats 5] [--json out.json]
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
from tradeflow.engines.trademaster.compat import import_trademaster, upstream_quiet_stdout  # noqa: E402
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


def timed_train(engine, splits: Splits, cfg) -> dict:
    """One training: wall and CPU seconds of ``engine.train``, its env steps and env steps/s."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        result = engine.train(splits, cfg, workdir=Path(tmp))
        return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                "env_steps": result.timesteps, "env_steps_per_s": result.env_steps_per_s}


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs for both trainings (default: config's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=5, help="episodes per env (median reported)")
    parser.add_argument("--train-repeats", type=int, default=5, help="rounds of the three trainings (median reported)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    load_before = load_average()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load {load_before} (1/5/15 min)", flush=True)
    layer = {"symbol": "BTC", "seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    cfg = resolve_config(layer)
    params = cfg.trademaster
    started = time.perf_counter()
    upstream = import_trademaster()
    import_seconds = time.perf_counter() - started
    from tradeflow.engines.builtin.agent import TRAIN_FREQ, dqn_learning_starts
    from tradeflow.engines.trademaster.engine import UPSTREAM_TRAINER, TradeMasterEngine, build_environment

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
    engines = {"upstream": TradeMasterEngine(), "builtin_equal_work": BuiltinEngine(train_freq=1),
               "builtin_default": BuiltinEngine()}
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for round_ in range(1, args.train_repeats + 1):  # interleaved, so load drifts hit all alike
        for name, engine in engines.items():
            runs[name].append(timed_train(engine, splits, cfg))
        print(f"round {round_}/{args.train_repeats}: " + ", ".join(
            f"{name} {rows[-1]['wall_s']:.2f} s ({rows[-1]['env_steps_per_s']:.0f} steps/s)" for name, rows in runs.items()
        ) + f"; load {load_average()}", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(row[key] for row in runs[name])

    # gradient updates per training, from each trainer's schedule (see the docstring)
    steps_per_epoch = len(train)
    learning_starts = dqn_learning_starts(steps_per_epoch)
    updates = {
        "upstream": runs["upstream"][0]["env_steps"] - UPSTREAM_TRAINER["horizon_len"],
        "builtin_equal_work": runs["builtin_equal_work"][0]["env_steps"] - learning_starts,
        "builtin_default": (runs["builtin_default"][0]["env_steps"] - learning_starts) // TRAIN_FREQ,
    }
    rate_ratio = med("builtin_equal_work", "env_steps_per_s") / med("upstream", "env_steps_per_s")
    wall_ratio = med("upstream", "wall_s") / med("builtin_equal_work", "wall_s")
    results = {
        "data": f"TradeMaster BTC splits: train {len(train)}, valid {len(valid)}, test {len(test)} rows; "
                f"window {params.backward_num_day}, horizon {params.forward_num_day}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_before": load_before,
        "load_after": load_average(),
        "upstream_import_s": round(import_seconds, 1),
        "upstream_env_steps_per_s": round(upstream_env),
        "builtin_env_steps_per_s": round(builtin_env),
        "env_speedup": round(builtin_env / upstream_env, 1),
        "training": f"dqn, {params.epochs} epochs, hidden {list(params.hidden_dims)}, batch 64, seed {cfg.seed}, "
                    f"torch threads 1 (both)",
        "env_steps": {name: rows[0]["env_steps"] for name, rows in runs.items()},
        "gradient_updates": updates,
        "train_env_steps_per_s": {name: round(med(name, "env_steps_per_s")) for name in runs},
        "train_wall_s": {name: round(med(name, "wall_s"), 2) for name in runs},
        "train_cpu_s": {name: round(med(name, "cpu_s"), 2) for name in runs},
        "equal_work_steps_per_s_ratio": round(rate_ratio, 2),
        "equal_work_wall_ratio": round(wall_ratio, 2),
        "equal_work_cpu_ratio": round(med("upstream", "cpu_s") / med("builtin_equal_work", "cpu_s"), 2),
        "default_steps_per_s_ratio": round(med("builtin_default", "env_steps_per_s") / med("upstream", "env_steps_per_s"), 2),
        "default_wall_ratio": round(med("upstream", "wall_s") / med("builtin_default", "wall_s"), 2),
        "goals": {"env_speedup >= 100": builtin_env / upstream_env >= 100,
                  "equal-work training env steps/s >= 3x": rate_ratio >= 3},
        "repeats": {"env": args.repeats, "training": args.train_repeats},
        "all_runs": {name: [{k: round(v, 2) for k, v in row.items()} for row in rows] for name, rows in runs.items()},
    }
    for key, value in results.items():
        print(f"{key:32s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
