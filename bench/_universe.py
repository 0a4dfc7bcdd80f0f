"""What the universe benchmarks share (``bench_universe.py``, ``bench_distributed.py``): the machine
load sampled while a DAG run goes, one DAG run on a LocalExecutor Airflow measured, the summed RSS
of each "machine" (an Airflow process tree and the detached warm process it forks from), and the
exactly-once counts of a batch read back from its tracking store and the WebUI contract server."""

from __future__ import annotations

import os
import sqlite3
import statistics
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime

import _common  # noqa: F401 - loads tests/support as the package ``testkit`` (by file path)
from testkit.airflow_env import AirflowHome, AirflowServices  # noqa: E402
from testkit.load import PeakMemory  # noqa: E402

from tradeflow.runs.records import Tag

DAG_ID = "trademaster_autogen_pipeline_workflow"
STAGES = ("train_backtest", "inference", "review", "persist")
WEBUI_KINDS = ("signal", "llm", "chart")
#: the environment variable naming which "machine" a process belongs to (the stack's workers set
#: it; the LocalExecutor Airflow of a bench sets it too): a shared fork server inherits it
MACHINE_VAR = "STACK_WORKER_NAME"


def environ_of(proc) -> dict[str, str]:
    """The environment a process was started with (``/proc/PID/environ``: for a forked child of a
    fork server, its server's, which names the machine it serves)."""
    return proc.environ()


def load_now() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


class LoadSampler:
    """The 1-min load average every ``interval`` s while a DAG run goes (the box is shared: a
    reference run and a universe run at different loads are not comparable as they stand)."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"mean": round(statistics.fmean(self.samples), 1), "min": round(min(self.samples), 1),
                "max": round(max(self.samples), 1), "samples": len(self.samples)}


def dag_run(services: AirflowServices, home: AirflowHome, symbols: int, memory: PeakMemory | None,
            conf: dict | None = None) -> dict:
    """One DAG run of ``symbols`` symbols on the LocalExecutor Airflow, timed from its metadata DB."""
    for _, proc in services._procs if memory is not None else ():  # task processes are the scheduler's children
        memory.add(proc.pid)
    run_id = services.trigger(DAG_ID, conf=conf or {"max_symbols": symbols, "force": True})
    with LoadSampler() as load:
        state = services.wait(DAG_ID, run_id, timeout=4 * 3600)
    with sqlite3.connect(home.db_path) as db:
        start, end = db.execute("SELECT start_date, end_date FROM dag_run WHERE run_id = ?", (run_id,)).fetchone()
    wall = datetime.fromisoformat(end).timestamp() - datetime.fromisoformat(start).timestamp()
    tasks = [t for t in services.task_timings(DAG_ID, run_id, "run_symbol") if t["duration"] is not None]
    durations = [t["duration"] for t in tasks]
    return {"run_id": run_id, "state": state, "symbols": len(tasks), "wall_s": round(wall, 1),
            "symbols_per_min": round(60 * len(tasks) / wall, 2) if wall else None,
            "symbol_s_median": round(statistics.median(durations), 1) if durations else None,
            "symbol_s_max": round(max(durations), 1) if durations else None,
            "failed": [t["map_index"] for t in tasks if t["state"] != "success"],
            "load_1min_during": load.summary()}


class MachineMemory:
    """Peak summed RSS per "machine", sampled every ``interval`` s: the trees under its root
    processes plus the detached warm fork servers (and their children) whose environment has its
    ``marks`` (a variable and its value: the worker's own TMPDIR, say): a shared fork server is no
    descendant of the worker that started it, yet its forked pipelines and stages are that
    worker's work. An upper bound (shared pages count once per process)."""

    def __init__(self, roots: dict[str, Callable[[], Iterable[int]]], marks: dict[str, tuple[str, str]],
                 interval: float = 1.0) -> None:
        self.roots, self.marks, self.interval = roots, marks, interval
        self.peak_mib = dict.fromkeys(roots, 0.0)
        self.peak_processes = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _servers(self) -> dict[str, list]:
        import psutil

        found: dict[str, list] = {}
        for proc in psutil.process_iter(["cmdline", "ppid"]):
            cmd = proc.info["cmdline"] or []
            if "tradeflow.runs.forkserver" not in cmd:
                continue
            try:
                parent = psutil.Process(proc.info["ppid"]).cmdline()
                if "tradeflow.runs.forkserver" in parent:
                    continue  # a forked child: counted in its server's tree
                env = environ_of(proc)
            except psutil.Error:
                continue
            for machine, (key, value) in self.marks.items():
                if env.get(key) == value:
                    found.setdefault(machine, []).append(proc)
        return found

    def sample(self) -> None:
        import psutil

        servers = self._servers()
        for machine, roots in self.roots.items():
            tops = list(servers.get(machine, []))
            for pid in roots():
                try:
                    tops.append(psutil.Process(pid))
                except psutil.Error:
                    continue
            rss: dict[int, float] = {}
            for top in tops:
                try:
                    tree = [top, *top.children(recursive=True)]
                except psutil.Error:
                    continue
                for member in tree:
                    try:
                        rss[member.pid] = member.memory_info().rss / 2**20
                    except psutil.Error:
                        continue
            self.peak_mib[machine] = max(self.peak_mib[machine], sum(rss.values()))
            self.peak_processes[machine] = max(self.peak_processes[machine], len(rss))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a process gone between listing and reading
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> MachineMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict:
        return {m: {"peak_rss_mib": round(v), "peak_processes": self.peak_processes[m]} for m, v in self.peak_mib.items()}


def batch_counts(client, experiment_id: str, run_id: str, tickers: Iterable[str], webui_artifacts: list[dict]) -> dict:
    """What a batch left, read back (a fresh store holds this batch's runs only): FINISHED stage
    runs per symbol and stage, the final pipeline run's reused/lease tags, the WebUI artifacts of
    this DAG run per symbol and kind, the runs still RUNNING. ``problems`` lists each count that is
    not exactly what the contract says (empty: all good)."""
    tickers = list(tickers)
    runs = client.search_runs([experiment_id], max_results=50000)
    stage_finished = Counter((r.data.tags.get(Tag.SYMBOL), r.data.tags.get(Tag.STAGE)) for r in runs
                             if r.data.tags.get(Tag.STAGE) in STAGES and r.info.status == "FINISHED")
    pipelines = [r for r in runs if r.data.tags.get(Tag.STAGE) == "pipeline"]
    finished_pipelines = Counter(r.data.tags.get(Tag.SYMBOL) for r in pipelines if r.info.status == "FINISHED")
    reused, leases = Counter(), Counter()
    for pipeline in pipelines:
        if pipeline.info.status != "FINISHED":
            continue
        for stage in STAGES:
            if pipeline.data.tags.get(Tag.STAGE_REUSED.format(stage=stage)) == "true":
                reused[stage] += 1
            if lease := pipeline.data.tags.get(Tag.STAGE_LEASE.format(stage=stage)):
                leases[f"{stage}:{lease}"] += 1
    webui = Counter((a["symbol"], a["type"]) for a in webui_artifacts if a.get("execution_id") == run_id)
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    failed = Counter(r.data.tags.get(Tag.STAGE, "?") for r in runs if r.info.status == "FAILED")
    problems = []
    for symbol in tickers:
        for stage in STAGES:
            if (n := stage_finished[(symbol, stage)]) != 1:
                problems.append(f"{symbol} {stage}: {n} FINISHED runs (want 1)")
        if (n := finished_pipelines[symbol]) != 1:
            problems.append(f"{symbol}: {n} FINISHED pipeline runs (want 1)")
        for kind in WEBUI_KINDS:
            if (n := webui[(symbol, kind)]) != 1:
                problems.append(f"{symbol} WebUI {kind}: {n} (want 1)")
    if extra := sorted({s for s, _ in stage_finished} - set(tickers)):
        problems.append(f"stage runs of symbols not in the batch: {extra}")
    if running:
        problems.append(f"{len(running)} runs left RUNNING: {running[:5]}")
    return {"runs": len(runs), "stage_runs_finished": sum(stage_finished.values()),
            "stage_runs_finished_per_symbol_stage": sorted(set(stage_finished.values())),
            "pipelines_finished": sum(finished_pipelines.values()), "failed_runs_by_stage": dict(failed),
            "reused": dict(reused), "leases": dict(leases), "webui_artifacts": sum(webui.values()),
            "webui_per_symbol_kind": sorted(set(webui.values())), "running": len(running), "problems": problems}
