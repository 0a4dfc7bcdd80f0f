"""Throughput and peak memory of the load test with P symbol slots per DAG run, on a real
PostgreSQL + ``mlflow server`` + the WebUI contract server (loopback). Mode both, the load test's
tiny config (1 epoch, 8 hidden units, ~275 bars, rules reviewer), S dj30 symbols.

For each P, a fresh world (empty store) and two phases, as in ``tests/test_load_faults.py``:

- A, cold: 1 DAG run x S symbols, every stage runs (training included);
- B, warm: N concurrent DAG runs x the same S symbols: train/inference/review come from the stage
  cache, persist runs per execution.

A DAG run is driven through the same orchestration functions as the DAG's tasks (``python -m
tests.support.load dag-run``: resolve_targets, open_dag_run, at most P ``run_symbol`` worker
processes at once = ``max_active_tis_per_dagrun`` = ``TRADEFLOW_PARALLEL_SYMBOLS``, finalize):
``airflow dags test`` runs mapped tasks one at a time, so it cannot show P. ``--driver dags-test``
runs phase B through the real DAG instead (P is then 1 per DAG run).

Reported per phase: wall, symbols/min, client CPU seconds, trainings, peak RSS summed over the
worker process trees (RSS double-counts shared pages: an upper bound) and of the largest process,
peak RSS of mlflow server + PostgreSQL, and the audit (one FINISHED chain per symbol per DAG run,
no RUNNING run, one signal + one llm artifact per symbol and DAG run, artifact run ids resolve).

    .venv/bin/python bench/bench_load.py                          # S=10, N=3, P = 1 and 2
    .venv/bin/python bench/bench_load.py --symbols 6 --parallel 1 2 3

Writes ``bench/results/load.json``. On 2 cores S=10 takes ~8 min (P=2) to ~13 min (P=1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import machine  # noqa: E402

from testkit.airflow_env import AirflowHome  # noqa: E402
from testkit.data import DJ30_TICKERS  # noqa: E402
from testkit.load import (  # noqa: E402
    ArtifactAudit,
    DagTest,
    PeakMemory,
    StoreAudit,
    clone_airflow_home,
    drive_dag_run,
    tiny_config_env,
)
from testkit.servers import MlflowServer, PostgresServer  # noqa: E402
from testkit.webui import WebUIServer  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_batch(label: str, *, dag_runs: int, parallel: int, env: dict[str, str], driver: str,
               template: AirflowHome | None, tmp: Path, servers: list[int]) -> dict:
    cpu0, t0 = _cpu(), time.perf_counter()
    server_memory = PeakMemory(servers)
    if driver == "orchestration":
        procs = [drive_dag_run(f"{label}-{i + 1}", parallel=parallel, env=env) for i in range(dag_runs)]
        with PeakMemory([p.pid for p in procs]) as memory, server_memory:
            outputs = [p.communicate(timeout=3600) for p in procs]
        failed = [out + err for p, (out, err) in zip(procs, outputs) if p.returncode != 0]
        run_ids = [f"{label}-{i + 1}" for i in range(dag_runs)]
    else:
        homes = [clone_airflow_home(template, tmp / f"{label}-{i + 1}") for i in range(dag_runs)]
        tests = [DagTest.start(home, env=env) for home in homes]
        with PeakMemory([t.proc.pid for t in tests]) as memory, server_memory:
            results = [t.wait(timeout=3600) for t in tests]
            failed = [r.tail() for r in results if not r.ok]
        run_ids = [r.run_id for r in results]
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - cpu0, "failed": failed, "run_ids": run_ids,
            "peak_rss_total_mib": memory.peak_total_mib, "peak_rss_process_mib": memory.peak_process_mib,
            "peak_processes": memory.peak_processes, "server_peak_rss_mib": server_memory.peak_total_mib,
            "peak_system_used_mib": memory.peak_system_mib}


def bench(parallel: int, args: argparse.Namespace, symbols: list[str]) -> dict:
    import tempfile

    from mlflow.tracking import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="tradeflow-bench-load-"))
    with PostgresServer() as pg, MlflowServer(pg.sqlalchemy_url, workers=args.workers) as server, \
            WebUIServer() as web:
        for rank, symbol in enumerate(symbols):
            web.seed_symbol(symbol, priority=len(symbols) - rank)
        template = AirflowHome.create(tmp / "template") if args.driver == "dags-test" else None
        env = {"MLFLOW_TRACKING_URI": server.url, "BACKEND_API_URL": web.url, **tiny_config_env(),
               "TRADEFLOW_TASK_RETRIES": "0"}
        servers = [server.pid, pg.pid]
        cold = _run_batch(f"cold-p{parallel}", dag_runs=1, parallel=parallel, env=env, driver="orchestration",
                          template=template, tmp=tmp, servers=servers)
        warm = _run_batch(f"warm-p{parallel}", dag_runs=args.dag_runs, parallel=parallel, env=env,
                          driver=args.driver, template=template, tmp=tmp, servers=servers)
        client = MlflowClient(server.url)
        store = StoreAudit.collect(client)
        run_ids = [r for r in cold["run_ids"] + warm["run_ids"] if r]
        problems = [p for run_id in run_ids for p in store.dag_run(run_id, symbols).problems]
        problems += [f"RUNNING {line}" for line in store.running()]
        webui = ArtifactAudit.collect(web.artifacts(), client)
        problems += webui.problems(run_ids, symbols)
        trained = Counter(r.data.tags.get("tradeflow.symbol")
                          for r in store.stage_runs("train_backtest", status="FINISHED"))
    for phase, runs in (("cold", 1), ("warm", args.dag_runs)):
        row = {"cold": cold, "warm": warm}[phase]
        row["pipelines"] = runs * len(symbols)
        row["symbols_per_min"] = row["pipelines"] / row["wall_s"] * 60
        row["failures"] = [f[-2000:] for f in row.pop("failed")]
    return {"parallel": parallel, "driver": args.driver, "dag_runs": args.dag_runs, "symbols": len(symbols),
            "cold": cold, "warm": warm, "trainings": sum(trained.values()), "artifacts": webui.total,
            "problems": problems[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dag-runs", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--driver", choices=("orchestration", "dags-test"), default="orchestration")
    parser.add_argument("--workers", type=int, default=1, help="mlflow server uvicorn workers")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith(("TRADEFLOW_", "MLFLOW_", "BACKEND_API_"))]:
        del os.environ[name]
    symbols = list(DJ30_TICKERS[: args.symbols])
    rows = []
    print(f"load bench: S={args.symbols} symbols; A: 1 DAG run, cold cache; B: {args.dag_runs} concurrent DAG runs, "
          f"warm cache, driver {args.driver}; on {machine()}", flush=True)
    for parallel in args.parallel:
        row = bench(parallel, args, symbols)
        rows.append(row)
        for phase, label in (("cold", "A cold, 1 DAG run"), ("warm", f"B warm, {args.dag_runs} DAG runs")):
            r = row[phase]
            print(f"  P={parallel} {label:18}: {r['pipelines']:3} pipelines in {r['wall_s']:5.0f} s = "
                  f"{r['symbols_per_min']:5.2f} symbols/min, client CPU {r['cpu_s']:5.0f} s, peak RSS "
                  f"{r['peak_rss_total_mib']:5.0f} MiB over {r['peak_processes']} processes (largest "
                  f"{r['peak_rss_process_mib']:.0f} MiB), machine +{r['peak_system_used_mib']:.0f} MiB used, "
                  f"server+PG {r['server_peak_rss_mib']:.0f} MiB, "
                  f"failed DAG runs {len(r['failures'])}", flush=True)
        print(f"  P={parallel}: {row['trainings']} trainings for {len(symbols)} symbols, {row['artifacts']} WebUI "
              f"artifacts, audit problems {len(row['problems'])}", flush=True)
        for problem in row["problems"][:5]:
            print(f"    {problem}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2, default=str))
    print(f"  -> {args.out}")


if __name__ == "__main__":
    main()
