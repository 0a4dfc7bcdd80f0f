"""The DJ30 universe through the DAG: the 29 tickers of ``../shared`` (dj30, 2020-2021), mode both,
the default bounded config, rules reviewer, 2 parallel symbol slots, on a real Airflow (api-server +
scheduler with LocalExecutor + dag-processor, ``max_active_tis_per_dagrun`` = 2), a SQLite tracking
store and the WebUI contract server assigning the symbols.

In the same run, first a one-symbol DAG run (the top-priority ticker) measures "one symbol" the
same way, and the import floor (``python -c "import mlflow, torch, stable_baselines3"``) is timed
before each DAG run; every figure is also reported as a multiple of it. Goals: wall <= 1.25 x 29 x
(one symbol) / 2, and (issue 26) the 29 symbols <= 4 minutes, all succeeding.

Reported: DAG-run wall, symbols/min, per-symbol task seconds (median, max), peak RSS (largest
process; summed over the Airflow process trees, an upper bound since shared pages count once per
process), the ratio to 29 x one symbol / 2, and a stricter ratio that counts the DAG run's fixed
part (resolve_targets, open_dag_run, finalize: the one-symbol run's wall minus its symbol task)
once. The 1-min load average is sampled every 5 s during each DAG run (mean/min/max reported): on
a shared box a reference and a universe run at different loads do not compare as they stand.

    .venv/bin/python bench/bench_universe.py [--symbols 29] [--parallel 2]

On a quiet 2-core machine this took ~10 min for 29 symbols before issue 26. Writes bench/results/universe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _common  # noqa: E402,F401 - loads tests/support as the package ``testkit`` (by file path)
from _common import import_floor  # noqa: E402
from _universe import DAG_ID, dag_run  # noqa: E402
from _universe import load_now as _load  # noqa: E402
from testkit.airflow_env import AirflowHome, AirflowServices  # noqa: E402
from testkit.data import DJ30_DIR, DJ30_SOURCE, DJ30_TICKERS  # noqa: E402
from testkit.load import PeakMemory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=len(DJ30_TICKERS), help="first N of the 29 dj30 tickers")
    parser.add_argument("--parallel", type=int, default=2, help="parallel symbol slots")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "universe.json")
    args = parser.parse_args()
    if not DJ30_DIR.is_dir():
        raise SystemExit(f"dj30 data not found at {DJ30_DIR}")
    from mlflow.tracking import MlflowClient

    from testkit.webui import WebUIServer

    tickers = DJ30_TICKERS[: args.symbols]
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, load {_load()} (1/5/15 min)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tradeflow-bench-universe-"))  # kept: Airflow logs, the store
    print(f"work dir (Airflow logs, store): {work}", flush=True)
    if True:
        uri = f"sqlite:///{work / 'mlruns.db'}"
        MlflowClient(uri).create_experiment("trademaster_autogen", artifact_location=(work / "artifacts").as_uri())
        home = AirflowHome.create(work / "airflow")
        with WebUIServer() as webui:
            for priority, ticker in enumerate(reversed(tickers)):
                webui.seed_symbol(ticker, priority=priority, config={"mode": "both"})
            env = {"MLFLOW_TRACKING_URI": uri, "BACKEND_API_URL": webui.url, "TRADEFLOW_DATA_SOURCE": DJ30_SOURCE,
                   "TRADEFLOW_PARALLEL_SYMBOLS": str(args.parallel), "TRADEFLOW_TASK_RETRIES": "0",
                   "TRADEFLOW_REVIEWER": "rules"}
            with AirflowServices(home, env=env, parallelism=args.parallel + 2) as services:
                services.wait_for_dag(DAG_ID)
                floors = [import_floor().seconds]
                for attempt in (1, 2):  # on a loaded box the first task after start-up can fail to start
                    with PeakMemory() as one_memory:
                        one = dag_run(services, home, 1, one_memory)
                    print(f"one symbol ({tickers[0]}), try {attempt}: {one['state']}, DAG run {one['wall_s']} s, "
                          f"task {one['symbol_s_median']} s; load {_load()}", flush=True)
                    if one["state"] == "success" and one["symbols"] == 1:
                        break
                else:
                    raise SystemExit("the one-symbol DAG run failed twice: no reference to compare with; "
                                     f"see {services.log_dir}")
                floors.append(import_floor().seconds)
                with PeakMemory() as memory:
                    universe = dag_run(services, home, len(tickers), memory)
                floors.append(import_floor().seconds)
    expected = len(tickers) * one["wall_s"] / args.parallel
    ratio = universe["wall_s"] / expected
    # stricter: the DAG run's fixed part (resolve, open, finalize) once, the symbol task N / parallel times
    fixed = one["wall_s"] - one["symbol_s_median"]
    strict = fixed + len(tickers) * one["symbol_s_median"] / args.parallel
    result = {
        "machine": f"{os.cpu_count()} cores, load at end {_load()}", "tickers": list(tickers), "parallel": args.parallel,
        "one_symbol": one, "universe": universe, "ideal_s": round(expected, 1), "ratio_to_ideal": round(ratio, 2),
        "goal": 1.25, "ok": ratio <= 1.25 and universe["state"] == "success",
        "import_floor_s": [round(f, 2) for f in floors], "import_floor_median_s": round(statistics.median(floors), 2),
        "universe_over_floor": round(universe["wall_s"] / statistics.median(floors), 1),
        "one_symbol_task_over_floor": round(one["symbol_s_median"] / statistics.median(floors), 2),
        "goal_wall_s": 240, "wall_ok": universe["wall_s"] <= 240 and not universe["failed"] and universe["state"] == "success",
        "dag_fixed_s": round(fixed, 1), "strict_ideal_s": round(strict, 1),
        "ratio_to_strict_ideal": round(universe["wall_s"] / strict, 2),
        "peak_rss_mib": {"largest_process": round(memory.peak_process_mib), "sum_of_trees": round(memory.peak_total_mib),
                         "system_used_above_start": round(memory.peak_system_mib), "processes": memory.peak_processes},
    }
    print(f"load (1-min average) during the one-symbol run {one['load_1min_during']}, during the universe run "
          f"{universe['load_1min_during']}")
    print(f"universe: {universe['symbols']} symbols, {universe['state']}, wall {universe['wall_s']} s, "
          f"{universe['symbols_per_min']} symbols/min, per symbol median {universe['symbol_s_median']} s "
          f"(max {universe['symbol_s_max']} s); peak RSS largest process {result['peak_rss_mib']['largest_process']} MiB, "
          f"sum of trees {result['peak_rss_mib']['sum_of_trees']} MiB")
    print(f"ratio to {len(tickers)} x one symbol / {args.parallel} = {universe['wall_s']} / {expected:.1f} = {ratio:.2f} "
          f"(goal <= 1.25): {'OK' if result['ok'] else 'MISSED'}; load {_load()}")
    print(f"import floor (python -c 'import mlflow, torch, stable_baselines3') {result['import_floor_median_s']} s "
          f"(median of {len(floors)}: {result['import_floor_s']}); one symbol's task "
          f"{result['one_symbol_task_over_floor']} x floor; universe wall {result['universe_over_floor']} x floor; "
          f"29 symbols <= 240 s, all succeeded: {'OK' if result['wall_ok'] else 'MISSED'}")
    print(f"stricter, the DAG run's fixed {fixed:.1f} s counted once: {universe['wall_s']} / {strict:.1f} = "
          f"{result['ratio_to_strict_ideal']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
