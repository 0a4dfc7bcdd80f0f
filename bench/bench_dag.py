"""The Airflow DAG: parse cost and fan-out speed-up.

1. DAG file import time in a warm interpreter (``airflow.sdk`` already imported): the first
   import (also loads ``tradeflow.orchestration`` + ``tradeflow.config``) and the median of
   re-imports. Goal: < 0.3 s.
2. A batch of N real dj30 symbols assigned in the WebUI (contract server), run by a real Airflow
   (api-server + scheduler with LocalExecutor + dag-processor, SQLite metadata DB) with
   ``TRADEFLOW_PARALLEL_SYMBOLS`` = 1, then = P (``max_active_tis_per_dagrun``), ``force=true`` so
   both runs do the same work. Speed-up = T(1) / T(P) on the DAG run's wall time and on the
   fan-out window (first run_symbol start to last end). Goal: >= 0.8 x min(P, cores).

    .venv/bin/python bench/bench_dag.py [--symbols 4] [--parallel 2] [--mode train_backtest]
    .venv/bin/python bench/bench_dag.py --import-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _common  # noqa: E402,F401 - loads tests/support as the package ``testkit`` (by file path)
from testkit.airflow_env import AirflowHome, AirflowServices  # noqa: E402
from testkit.data import DJ30_DIR, DJ30_SOURCE  # noqa: E402

DAG_FILE = REPO / "dags" / "trademaster_autogen_pipeline_workflow.py"
DAG_ID = "trademaster_autogen_pipeline_workflow"
TICKERS = ("AAPL", "AMGN", "AXP", "BA", "CAT", "CSCO", "CVX", "DIS", "GS", "HD", "HON", "IBM")

_IMPORT_PROBE = textwrap.dedent(r"""
    import importlib.util, json, statistics, sys, time
    import airflow.sdk
    times = []
    for index in range(int(sys.argv[2])):
        spec = importlib.util.spec_from_file_location(f"dag_{index}", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        started = time.perf_counter()
        spec.loader.exec_module(module)
        times.append(time.perf_counter() - started)
    print(json.dumps({"first_s": times[0], "median_s": statistics.median(times[1:]), "max_s": max(times[1:])}))
""")


def bench_import(repeats: int = 21, processes: int = 3) -> dict:
    """Median over fresh interpreters of the per-interpreter numbers."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    samples = []
    for _ in range(processes):
        out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(DAG_FILE), str(repeats)], env=env,
                             capture_output=True, text=True, check=True, timeout=300).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    first = sorted(s["first_s"] for s in samples)[len(samples) // 2]
    median = sorted(s["median_s"] for s in samples)[len(samples) // 2]
    return {"first_import_s": first, "reimport_median_s": median, "goal_s": 0.3, "ok": first < 0.3 and median < 0.3}


def _concurrency(timings: list[dict]) -> int:
    events = sorted([(t["start"], 1) for t in timings if t["start"]] + [(t["end"], -1) for t in timings if t["end"]])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def bench_batch(symbols: int, parallel: int, mode: str, epochs: int, workdir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from testkit.webui import WebUIServer

    tickers = TICKERS[:symbols]
    uri = f"sqlite:///{workdir / 'mlruns.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # create the store once, before any fan-out
    client.create_experiment("trademaster_autogen", artifact_location=(workdir / "artifacts").as_uri())
    template = AirflowHome.create(workdir / "airflow-template")
    rows = []
    with WebUIServer() as webui:
        for priority, ticker in enumerate(reversed(tickers)):
            webui.seed_symbol(ticker, priority=priority, config={"mode": mode})
        for slots in (1, parallel):
            home = template.clone(workdir / f"airflow-p{slots}")
            env = {"MLFLOW_TRACKING_URI": uri, "BACKEND_API_URL": webui.url, "TRADEFLOW_DATA_SOURCE": DJ30_SOURCE,
                   "TRADEFLOW_EPOCHS": str(epochs), "TRADEFLOW_PARALLEL_SYMBOLS": str(slots),
                   "TRADEFLOW_TASK_RETRIES": "0"}
            with AirflowServices(home, env=env, parallelism=max(parallel, 2) + 2) as services:
                services.wait_for_dag(DAG_ID)
                run_id = services.trigger(DAG_ID, conf={"max_symbols": symbols, "force": True})
                started = time.perf_counter()
                state = services.wait(DAG_ID, run_id, timeout=3600)
                waited = time.perf_counter() - started
                timings = services.task_timings(DAG_ID, run_id, "run_symbol")
            import sqlite3

            with sqlite3.connect(home.db_path) as db:
                start, end = db.execute("SELECT start_date, end_date FROM dag_run WHERE run_id = ?", (run_id,)).fetchone()
            from datetime import datetime

            dag_wall = datetime.fromisoformat(end).timestamp() - datetime.fromisoformat(start).timestamp()
            fan_out = max(t["end"] for t in timings) - min(t["start"] for t in timings)
            row = {"slots": slots, "state": state, "dag_run_s": round(dag_wall, 1), "fan_out_s": round(fan_out, 1),
                   "trigger_to_end_s": round(waited, 1), "peak_concurrency": _concurrency(timings),
                   "effective_parallelism": round(sum(t["duration"] for t in timings) / fan_out, 2),
                   "symbol_s": [round(t["duration"], 1) for t in timings], "run_id": run_id,
                   # other work on the machine skews the comparison: say how busy it was
                   "load_avg_5m_at_end": round(os.getloadavg()[1], 2)}
            print(f"  slots={slots}: {state}, DAG run {row['dag_run_s']}s, fan-out {row['fan_out_s']}s, "
                  f"peak concurrency {row['peak_concurrency']}, per symbol {row['symbol_s']}, "
                  f"load avg (5 min) {row['load_avg_5m_at_end']}", flush=True)
            rows.append(row)
    one, many = rows
    cores = os.cpu_count() or 1
    goal = 0.8 * min(parallel, cores)
    speedup = one["dag_run_s"] / many["dag_run_s"]
    speedup_fan_out = one["fan_out_s"] / many["fan_out_s"]
    return {"symbols": list(tickers), "mode": mode, "epochs": epochs, "parallel": parallel, "cores": cores,
            "runs": rows, "speedup_dag_run": round(speedup, 2), "speedup_fan_out": round(speedup_fan_out, 2),
            "goal": round(goal, 2), "ok": speedup >= goal and all(r["state"] == "success" for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=4, help=f"N dj30 tickers (max {len(TICKERS)})")
    parser.add_argument("--parallel", type=int, default=2, help="P parallel slots to compare with 1")
    parser.add_argument("--mode", default="train_backtest", choices=("both", "train_backtest", "inference"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--import-only", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_dag.json")
    args = parser.parse_args()
    if not DJ30_DIR.is_dir():
        raise SystemExit(f"dj30 data not found at {DJ30_DIR}")
    if args.mode == "inference":
        raise SystemExit("--mode inference needs trained models; bench both or train_backtest")

    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}")
    result = {"import": bench_import()}
    imp = result["import"]
    print(f"DAG file import (warm interpreter): first {imp['first_import_s'] * 1000:.1f} ms, "
          f"re-import median {imp['reimport_median_s'] * 1000:.1f} ms (goal < 300 ms): {'OK' if imp['ok'] else 'MISSED'}")
    if not args.import_only:
        print(f"batch: {args.symbols} symbols, mode {args.mode}, epochs {args.epochs}, slots 1 vs {args.parallel}", flush=True)
        with tempfile.TemporaryDirectory(prefix="tradeflow-bench-dag-") as tmp:
            batch = bench_batch(args.symbols, args.parallel, args.mode, args.epochs, Path(tmp))
        result["batch"] = batch
        print(f"speed-up {batch['speedup_dag_run']}x on the DAG run, {batch['speedup_fan_out']}x on the fan-out "
              f"(goal >= {batch['goal']}x = 0.8 x min(P={args.parallel}, cores={batch['cores']})): "
              f"{'OK' if batch['ok'] else 'MISSED'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
