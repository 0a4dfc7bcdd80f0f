"""The DJ30 universe cold on the production topology, beside the LocalExecutor, in one run (issue 27).

The 29 tickers of ``../shared`` (dj30) through ``trademaster_autogen_pipeline_workflow`` twice, each
time on fresh stores (cold stage caches) and a fresh WebUI contract server assigning the symbols:

1. **local**: one Airflow (api-server, scheduler with LocalExecutor, dag-processor) on a SQLite
   tracking store with artifacts on this disk (``bench_universe.py``'s machinery, ``_universe.py``);
2. **stack**: ``scripts/stack.py`` (PostgreSQL, Redis, SeaweedFS S3, ``mlflow server`` with direct
   S3 artifacts, Airflow on CeleryExecutor, two Celery workers each in its own directory). During
   the batch, once a third of the symbols are done, the worker running a train stage is SIGKILLed
   with its process tree (a machine lost; Airflow retries the task on the other worker once its
   heartbeat times out) and started again 15 s later (a replacement); once two thirds are done the
   MLflow server is restarted.

Both: 2 symbol slots, rules reviewer, 1 task retry, the default bounded config, nothing forced.
Reported per run: DAG-run wall, symbols/min, per-symbol task seconds, peak RSS per "machine"
(the summed RSS of the worker's process tree plus its detached warm fork server's, sampled every
second: ``_universe.MachineMemory``), the 1-min load average (mean of samples every 5 s); and the
counts, asserted: every symbol's train/inference/review/persist FINISHED exactly once and one
FINISHED pipeline run each, reused and adopted stages (the lease tags), 29 x (signal, llm, chart)
exactly once in the WebUI contract server, 0 runs RUNNING; on the stack also: no process of the
killed worker still running 30 s after the kill, every object under the experiment's S3 prefix
read back by a fresh boto3 client (endpoint and keys only, no local path), every stage run's
artifacts in S3. Exits 1 if any count is off.

    nice -n 10 .venv/bin/python bench/bench_distributed.py [--symbols 29] [--only local|stack]

A bench, not a test: ~15 min on a 2-core box. ``--symbols 3`` is the smoke (~4 min). Writes
bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _common  # noqa: E402,F401 - loads tests/support as the package ``testkit`` (by file path)
from _universe import (  # noqa: E402
    DAG_ID,
    MACHINE_VAR,
    STAGES,
    LoadSampler,
    MachineMemory,
    batch_counts,
    environ_of,
    dag_run,
    load_now,
)
from testkit.airflow_env import AirflowHome, AirflowServices  # noqa: E402
from testkit.data import DJ30_DIR, DJ30_SOURCE, DJ30_TICKERS  # noqa: E402
from testkit.stores import EXPERIMENT  # noqa: E402

from tradeflow.runs.records import Tag  # noqa: E402

#: the settings both runs share (the DAG's parse-time ones and the tasks')
#: the WebUI's chart bucket on the stack's S3 (the WebUI stack's MinIO in production)
CHART_BUCKET = "webui"
#: marks the LocalExecutor run's processes (and the fork server they start) as this bench's
LOCAL_MARK = f"bench-local-{os.getpid()}"
COMMON_ENV = {"TRADEFLOW_DATA_SOURCE": DJ30_SOURCE, "TRADEFLOW_REVIEWER": "rules", "TRADEFLOW_TASK_RETRIES": "1",
              "TRADEFLOW_RETRY_DELAY_S": "0"}


def _seed(webui, tickers) -> None:
    for priority, ticker in enumerate(reversed(tickers)):
        webui.seed_symbol(ticker, priority=priority, config={"mode": "both"})


def local_batch(work: Path, tickers: list[str], parallel: int) -> dict:
    from mlflow.tracking import MlflowClient
    from testkit.webui import WebUIServer

    from tradeflow.runs.forkserver import stop_shared

    stop_shared(REPO)  # no warm process left from before: the local machine starts as cold as the workers
    uri = f"sqlite:///{work / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(work / "artifacts").as_uri())
    home = AirflowHome.create(work / "airflow")
    with WebUIServer() as webui:
        _seed(webui, tickers)
        env = {**COMMON_ENV, "MLFLOW_TRACKING_URI": uri, "BACKEND_API_URL": webui.url,
               "TRADEFLOW_PARALLEL_SYMBOLS": str(parallel), MACHINE_VAR: LOCAL_MARK}
        with AirflowServices(home, env=env, parallelism=parallel + 2) as services:
            services.wait_for_dag(DAG_ID)
            with MachineMemory({"local": lambda: [p.pid for _, p in services._procs]},
                               {"local": (MACHINE_VAR, LOCAL_MARK)}) as memory:
                result = dag_run(services, home, len(tickers), None, conf={"max_symbols": len(tickers)})
        result["peak_rss"] = memory.summary()
        result["counts"] = batch_counts(client, experiment_id, result["run_id"], tickers, webui.artifacts())
    return result


class Faults:
    """Called on every poll of the stack's DAG run: kills the worker running a train stage once
    ``kill_after`` symbols are done (then checks nothing of it runs on, and starts it again), and
    restarts the MLflow server once ``restart_after`` are done."""

    def __init__(self, stack, client, experiment_id: str, kill_after: int, restart_after: int) -> None:
        self.stack, self.client, self.experiment_id = stack, client, experiment_id
        self.kill_after, self.restart_after = kill_after, restart_after
        self.run_id = ""  # the DAG run's, set once triggered
        self.order: list[str] = []  # its symbols, in map-index order
        self.log: dict = {}

    def during(self, rows) -> None:
        done = sum(1 for r in rows if r["task_id"] == "run_symbol" and r["state"] == "success")
        if "kill" not in self.log and done >= self.kill_after:
            self._kill()
        elif "kill" in self.log and "mlflow_restart" not in self.log and done >= self.restart_after:
            started = time.monotonic()
            self.stack.services["mlflow"].restart()
            self.log["mlflow_restart"] = {"after_symbols_done": done, "down_s": round(time.monotonic() - started, 1)}
            print(f"  fault: MLflow server restarted ({self.log['mlflow_restart']['down_s']} s) after {done} symbols",
                  flush=True)

    def _train_worker(self) -> tuple[str, str] | None:
        """(worker, train run id) of a train stage running for >= 1.5 s: its symbol's place in the
        DAG run's target list (the parent run's ``Tag.SYMBOLS``) is its mapped task's map index,
        whose row names the worker."""
        if not self.order:
            parents = self.client.search_runs([self.experiment_id], filter_string=(
                f"tags.`{Tag.RUN_LEVEL}` = 'dag_run' and tags.`{Tag.AIRFLOW_RUN_ID}` = '{self.run_id}'"))
            if not parents:
                return None
            self.order = parents[0].data.tags[Tag.SYMBOLS].split(",")
        trains = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`{Tag.STAGE}` = 'train_backtest' and attributes.status = 'RUNNING'"))
        for train in trains:
            symbol = train.data.tags.get(Tag.SYMBOL)
            if time.time() * 1000 - train.info.start_time < 1500 or symbol not in self.order:
                continue
            hosts = self.stack.sql("SELECT hostname FROM task_instance WHERE dag_id = %s AND run_id = %s "
                                   "AND task_id = 'run_symbol' AND map_index = %s AND state = 'running'",
                                   (DAG_ID, self.run_id, self.order.index(symbol)))
            if len(hosts) == 1 and (hosts[0][0] or "").startswith("worker-"):
                return hosts[0][0], train.info.run_id
        return None

    def _kill(self) -> None:
        from testkit.distributed import kill_tree

        found = self._train_worker()
        if not found:
            return
        worker, train = found
        at = time.monotonic()
        pids = kill_tree(self.stack.services[worker])
        leftover = self._leftover(self.stack.services[worker].env["TMPDIR"], timeout=30)
        self.log["kill"] = {"worker": worker, "train_run": train, "processes_killed": len(pids),
                            "leftover_after_30_s": leftover}
        print(f"  fault: {worker} SIGKILLed ({len(pids)} processes) mid-train (run {train}); "
              f"still running 30 s later: {leftover or 'none'}", flush=True)
        time.sleep(max(0.0, 15 - (time.monotonic() - at)))
        self.stack.services[worker].start()  # the replacement machine

    def _leftover(self, tmpdir: str, timeout: float) -> list[str]:
        """Processes of the dead worker (started with its own TMPDIR) still running, but its warm
        fork server (idle, it exits on its own): its forked pipeline or stages would be work going
        on for a lost machine."""
        import psutil

        deadline = time.monotonic() + timeout
        while True:
            left = []
            for proc in psutil.process_iter(["cmdline", "ppid", "status"]):
                try:
                    if proc.info["status"] == psutil.STATUS_ZOMBIE or environ_of(proc).get("TMPDIR") != tmpdir:
                        continue
                    cmd = proc.info["cmdline"] or []
                    server = "tradeflow.runs.forkserver" in cmd and \
                        "tradeflow.runs.forkserver" not in psutil.Process(proc.info["ppid"]).cmdline()
                except psutil.Error:
                    continue
                if not server:
                    left.append(f"{proc.pid} {' '.join(cmd)[:120]}")
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(1)


def s3_check(stack, client, experiment_id: str, webui_artifacts: list[dict]) -> dict:
    """Every object under the experiment's prefix, and every chart the WebUI was sent
    (``chart_data.minio_url``), read by a fresh boto3 client (the endpoint and the keys, nothing
    of this machine's disk); every FINISHED stage run has its artifacts there."""
    import boto3

    fresh = boto3.session.Session().client(
        "s3", endpoint_url=stack.s3_url, aws_access_key_id=stack.s3_key,
        aws_secret_access_key=stack.secrets["s3_secret"], region_name="us-east-1")
    experiment = client.get_experiment(experiment_id)
    problems = []
    if not experiment.artifact_location.startswith("s3://mlflow/"):
        problems.append(f"experiment artifact location {experiment.artifact_location}")
    prefix = experiment.artifact_location.removeprefix("s3://mlflow/").rstrip("/") + "/"
    keys = [obj["Key"] for page in fresh.get_paginator("list_objects_v2").paginate(Bucket="mlflow", Prefix=prefix)
            for obj in page.get("Contents", [])]
    charts = []
    for artifact in webui_artifacts:
        if artifact["type"] != "chart":
            continue
        url = (artifact.get("chart_data") or {}).get("minio_url") or ""
        if not url.startswith(f"{stack.s3_url}/{CHART_BUCKET}/"):
            problems.append(f"{artifact['symbol']} chart: minio_url {url!r} is not in the chart bucket")
            continue
        charts.append(url.removeprefix(f"{stack.s3_url}/{CHART_BUCKET}/"))
    size, read = 0, 0
    for bucket, key in [("mlflow", k) for k in keys] + [(CHART_BUCKET, k) for k in charts]:
        try:
            size += len(fresh.get_object(Bucket=bucket, Key=key)["Body"].read())
            read += 1
        except Exception as exc:  # noqa: BLE001 - counted, reported
            problems.append(f"unreadable s3://{bucket}/{key}: {exc}")
    stage_runs = [r for r in client.search_runs([experiment_id], max_results=50000)
                  if r.data.tags.get(Tag.STAGE) in STAGES and r.info.status == "FINISHED"]
    for run in stage_runs:
        uri = run.info.artifact_uri
        run_prefix = uri.removeprefix("s3://mlflow/").rstrip("/") + "/"
        if not uri.startswith("s3://mlflow/"):
            problems.append(f"run {run.info.run_id} artifact_uri {uri}")
        elif not any(k.startswith(run_prefix) for k in keys):
            problems.append(f"{run.data.tags.get(Tag.STAGE)} run {run.info.run_id}: no artifact in S3")
    return {"objects_read": read, "objects": len(keys) + len(charts), "charts": len(charts),
            "mib": round(size / 2**20, 1), "stage_runs_with_artifacts": len(stage_runs),
            "mlmodel_files": sum(1 for k in keys if k.endswith("/MLmodel")), "problems": problems}


def stack_batch(work: Path, tickers: list[str], parallel: int) -> dict:
    from datetime import datetime

    from mlflow.tracking import MlflowClient
    from testkit.distributed import distributed_stack, stack_unavailable, task_rows, trigger, wait_dag_parsed, wait_dag_run
    from testkit.webui import WebUIServer

    if reason := stack_unavailable():
        raise SystemExit(f"the stack cannot run here: {reason}")
    with WebUIServer() as webui:
        _seed(webui, tickers)
        dag_env = {**COMMON_ENV, "TRADEFLOW_PARALLEL_SYMBOLS": str(parallel)}
        started = time.monotonic()
        # charts go to the WebUI's bucket (minio_url), as in the WebUI stack: a worker's local file
        # is no path the WebUI service can read
        worker_env = {"BACKEND_API_URL": webui.url, "TRADEFLOW_WEBUI_CHART_BUCKET": CHART_BUCKET}
        with distributed_stack(work / "stack", workers=2, artifacts="direct", worker_env=worker_env,
                               airflow_extra_env=dag_env) as stack:
            stack.s3_client().create_bucket(Bucket=CHART_BUCKET)
            os.environ.update(stack.client_env())  # this process reads the store as a client does
            client = MlflowClient(stack.mlflow_url)
            experiment_id = client.create_experiment(EXPERIMENT)
            wait_dag_parsed(stack, DAG_ID)
            print(f"stack up in {time.monotonic() - started:.0f} s; load {load_now()}", flush=True)
            workers = [n for n in stack.services if n.startswith("worker-")]
            machines = {n: (lambda n=n: [stack.services[n].proc.pid] if stack.services[n].running else [])
                        for n in workers}
            machines["services"] = lambda: [s.proc.pid for n, s in stack.services.items()
                                            if not n.startswith("worker-") and s.running]
            marks = {n: ("TMPDIR", stack.services[n].env["TMPDIR"]) for n in workers}  # each worker's own
            faults = Faults(stack, client, experiment_id, kill_after=max(1, len(tickers) // 3),
                            restart_after=max(2, 2 * len(tickers) // 3))
            with MachineMemory(machines, marks) as memory, LoadSampler() as load:
                run_id = faults.run_id = trigger(stack, DAG_ID, conf={"max_symbols": len(tickers)})
                state = wait_dag_run(stack, DAG_ID, run_id, timeout=4 * 3600, during=faults.during)
            (start, end), = stack.sql("SELECT start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
                                      (DAG_ID, run_id))
            wall = (end - start).total_seconds() if isinstance(start, datetime) else None
            rows = [r for r in task_rows(stack, DAG_ID, run_id) if r["task_id"] == "run_symbol"]
            durations = [(r["end"] - r["start"]).total_seconds() for r in rows if r["start"] and r["end"]]
            result = {
                "run_id": run_id, "state": state, "symbols": len(rows), "wall_s": round(wall, 1),
                "symbols_per_min": round(60 * len(rows) / wall, 2),
                "symbol_s_median": round(statistics.median(durations), 1) if durations else None,
                "symbol_s_max": round(max(durations), 1) if durations else None,
                "failed": [r["map_index"] for r in rows if r["state"] != "success"],
                "tries": {f"{r['map_index']}": [r["try_number"], r["hostname"]] for r in rows if r["try_number"] != 1},
                "hosts": sorted({r["hostname"] for r in rows}), "load_1min_during": load.summary(),
                "peak_rss": memory.summary(), "faults": faults.log,
            }
            result["counts"] = batch_counts(client, experiment_id, run_id, tickers, webui.artifacts())
            result["s3"] = s3_check(stack, client, experiment_id, [a for a in webui.artifacts()
                                                                   if a.get("execution_id") == run_id])
    return result


def _figures(name: str, result: dict) -> str:
    rss = ", ".join(f"{m} {v['peak_rss_mib']} MiB ({v['peak_processes']} processes)" for m, v in result["peak_rss"].items())
    counts = result["counts"]
    return (f"{name}: {result['symbols']} symbols {result['state']}, wall {result['wall_s']} s, "
            f"{result['symbols_per_min']} symbols/min, per symbol median {result['symbol_s_median']} s "
            f"(max {result['symbol_s_max']} s); load (1-min) {result['load_1min_during']}; peak RSS {rss}\n"
            f"  counts: {counts['stage_runs_finished']} stage runs FINISHED "
            f"(per symbol and stage: {counts['stage_runs_finished_per_symbol_stage']}), "
            f"{counts['pipelines_finished']} pipelines FINISHED, FAILED runs by stage {counts['failed_runs_by_stage']}, "
            f"reused {counts['reused'] or 0}, leases {counts['leases']}, WebUI artifacts {counts['webui_artifacts']} "
            f"(per symbol and kind: {counts['webui_per_symbol_kind']}), RUNNING {counts['running']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=len(DJ30_TICKERS), help="first N of the 29 dj30 tickers")
    parser.add_argument("--parallel", type=int, default=2, help="parallel symbol slots (the stack: 2 workers)")
    parser.add_argument("--only", choices=("local", "stack"), help="run one of the two")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "distributed.json")
    args = parser.parse_args()
    if not DJ30_DIR.is_dir():
        raise SystemExit(f"dj30 data not found at {DJ30_DIR}")
    if not 3 <= args.symbols <= len(DJ30_TICKERS):
        raise SystemExit(f"--symbols must be 3..{len(DJ30_TICKERS)} (the faults fire after 1/3 and 2/3 of them)")
    tickers = list(DJ30_TICKERS[: args.symbols])
    work = Path(tempfile.mkdtemp(prefix="tradeflow-bench-distributed-"))  # kept: logs, stores
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, load {load_now()}; work dir {work}",
          flush=True)
    result: dict = {"machine": f"{os.cpu_count()} cores", "tickers": tickers, "parallel": args.parallel}
    problems: list[str] = []
    for name, run in (("local", local_batch), ("stack", stack_batch)):
        if args.only and args.only != name:
            continue
        print(f"{name}: starting ({len(tickers)} symbols); load {load_now()}", flush=True)
        (work / name).mkdir()
        result[name] = run(work / name, tickers, args.parallel)
        print(_figures(name, result[name]), flush=True)
        problems += [f"{name}: {p}" for p in result[name]["counts"]["problems"]]
        if result[name]["state"] != "success":
            problems.append(f"{name}: DAG run {result[name]['state']}")
        if name == "stack":
            stack = result[name]
            problems += [f"stack S3: {p}" for p in stack["s3"]["problems"]]
            print(f"  S3: {stack['s3']['objects_read']}/{stack['s3']['objects']} objects read back by a fresh "
                  f"client ({stack['s3']['mib']} MiB; {stack['s3']['charts']} WebUI charts), "
                  f"{stack['s3']['mlmodel_files']} MLmodel files, "
                  f"{stack['s3']['stage_runs_with_artifacts']} stage runs with artifacts there; faults {stack['faults']}; "
                  f"retried tasks {stack['tries']}", flush=True)
            if "kill" not in stack["faults"]:
                problems.append("stack: the worker kill never fired (no train stage ran 1.5 s on a worker)")
            elif stack["faults"]["kill"]["leftover_after_30_s"]:
                problems.append(f"stack: the killed worker's processes ran on: {stack['faults']['kill']['leftover_after_30_s']}")
            if "mlflow_restart" not in stack["faults"]:
                problems.append("stack: the MLflow restart never fired")
            if not stack["tries"]:
                problems.append("stack: no task was retried after the worker kill")
    if "local" in result and "stack" in result:
        result["stack_over_local_wall"] = round(result["stack"]["wall_s"] / result["local"]["wall_s"], 2)
        print(f"stack / local wall: {result['stack_over_local_wall']}", flush=True)
    result["problems"] = problems
    result["load_at_end"] = load_now()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {args.out}; load {load_now()}")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
