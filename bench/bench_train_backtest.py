"""One ``train_backtest`` with the default bounded config, through the real ``mlflow run``.

Prints wall time and peak RSS (goals: under 60 s and 1 GiB on 2 cores), median of --repeat runs.

    .venv/bin/python bench/bench_train_backtest.py [--repeat 3] [--source btc|dj30]
"""

from __future__ import annotations

import argparse
import os

from _common import BTC, DJ30, fresh_store, machine, median, mlflow_run_cmd, run_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source", choices=("btc", "dj30"), default="btc")
    args = parser.parse_args()
    symbol, source = ("BTC", BTC) if args.source == "btc" else ("AAPL", DJ30)
    uri = fresh_store()
    walls, rss = [], []
    for attempt in range(args.repeat):
        timed = run_timed(mlflow_run_cmd("train_backtest", {"symbol": symbol, "data_source": source}),
                          env={"MLFLOW_TRACKING_URI": uri})
        if timed.returncode != 0:
            raise SystemExit(f"run {attempt} failed:\n{timed.stderr[-2000:]}")
        walls.append(timed.seconds)
        rss.append(timed.peak_rss_mib)
        print(f"  run {attempt + 1}: {timed.seconds:.1f} s, peak RSS {timed.peak_rss_mib:.0f} MiB", flush=True)
    print(f"train_backtest {symbol} (default config: epochs 3, window 10, DQN 64x64) on {machine()}")
    print(f"  wall time   median {median(walls):6.1f} s   (goal < 60 s)   -> {'OK' if median(walls) < 60 else 'MISSED'}")
    print(f"  peak RSS    median {median(rss):6.0f} MiB (goal < 1024)   -> {'OK' if median(rss) < 1024 else 'MISSED'}")
    print(f"  store {uri} (delete when done); threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


if __name__ == "__main__":
    main()
