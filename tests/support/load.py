"""Load and fault-injection helpers: concurrent DAG runs, kills, audits of the MLflow store and
the WebUI, peak memory. Used by ``tests/test_load_faults.py`` and ``bench/bench_load.py``.

    env = {**fast_python_env(), **tiny_config_env(), "MLFLOW_TRACKING_URI": ..., "BACKEND_API_URL": ...}
    runs = [DagTest.start(clone_airflow_home(template, tmp / f"h{i}"), env=env) for i in range(3)]
    results = [run.wait() for run in runs]                      # concurrent `airflow dags test`
    store = StoreAudit.collect(MlflowClient(url))               # every run, every experiment
    chains = store.dag_run(results[0].run_id, symbols)          # one FINISHED chain per symbol?
    webui = ArtifactAudit.collect(server.artifacts(), client)   # one signal + llm per (execution, symbol)?

The same orchestration functions the DAG tasks call can be driven without Airflow, with ``P``
worker processes per DAG run (what ``max_active_tis_per_dagrun = TRADEFLOW_PARALLEL_SYMBOLS``
gives a real executor; ``airflow dags test`` runs mapped tasks one at a time)::

    python -m tests.support.load dag-run --run-id load-1 --parallel 2 [--symbol AAPL ...]

Everything runs on 127.0.0.1; nothing here starts a server (see ``tests/support/servers.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.airflow_env import DJ30_SOURCE, REPO_ROOT, AirflowHome, DagTestResult, airflow_bin

DAG_ID = "trademaster_autogen_pipeline_workflow"
EXPERIMENT = "trademaster_autogen"
STAGES = ("train_backtest", "inference", "review", "persist")
#: The 29 tickers of TradeMaster's dj30 files, in the order the load tests take them.
DJ30_TICKERS = ("AAPL", "MSFT", "JPM", "KO", "IBM", "WMT", "DIS", "INTC", "CSCO", "HD", "V", "PG", "NKE",
                "MRK", "CVX", "AMGN", "AXP", "BA", "CAT", "CRM", "GS", "HON", "JNJ", "MCD", "MMM", "TRV",
                "UNH", "VZ", "WBA")
#: The WebUI artifacts every symbol of every execution must have exactly one of.
REQUIRED_ARTIFACTS = ("signal", "llm")

_RUN_ID_RE = re.compile(r"run_id=(manual__[0-9T:.+\-]+)")


# --- environment ------------------------------------------------------------------------------


def fast_python_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment overrides that let child Pythons reuse compiled bytecode.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in CI) and no ``.pyc`` in the venv, every
    ``mlflow run`` stage recompiles mlflow, torch & co: ``import mlflow`` takes 4.0 s instead of
    1.6 s. Each symbol's pipeline starts ~10 Python processes, so this halves the CPU a load test
    needs. Same directory as ``MlflowServer`` uses (outside the repo: the stage cache keys on a
    digest of the working tree)."""
    env = os.environ if environ is None else environ
    if env.get("PYTHONPYCACHEPREFIX") or not env.get("PYTHONDONTWRITEBYTECODE"):
        return {}
    prefix = Path(tempfile.gettempdir()) / f"tradeflow-pycache-{os.getuid()}"
    return {"PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": ""}


def tiny_config_env(data_source: str = DJ30_SOURCE) -> dict[str, str]:
    """The config layer (``TRADEFLOW_*``) of every load/fault run: 1 epoch, a 8-unit network,
    ~275 bars (400 calendar days), the rules reviewer. Identical everywhere, so the stage cache
    is shared between the load test and the fault cases."""
    return {
        "TRADEFLOW_EPOCHS": "1",
        "TRADEFLOW_HIDDEN_DIMS": "8",
        "TRADEFLOW_BACKTEST_LOOKBACK_DAYS": "400",
        "TRADEFLOW_REVIEWER": "rules",
        "TRADEFLOW_DATA_SOURCE": data_source,
    }


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` + the venv's ``bin`` first on PATH + ``fast_python_env`` + ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(fast_python_env(env))
    env.update(extra or {})
    return env


# --- Airflow ----------------------------------------------------------------------------------


def clone_airflow_home(template: AirflowHome, dest: Path) -> AirflowHome:
    """A new AIRFLOW_HOME whose metadata DB is a copy of the template's (already migrated).

    Each concurrent ``airflow dags test`` gets its own SQLite metadata DB: the DAG runs then
    never wait on each other's metadata locks (Airflow's SQLite DB is single-writer)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template.db_path, dest / "airflow.db")
    return AirflowHome(dest)


@dataclass
class DagTest:
    """One ``airflow dags test`` process, started in the background."""

    home: AirflowHome
    proc: subprocess.Popen
    log_path: Path
    started: float
    label: str = ""

    @classmethod
    def start(cls, home: AirflowHome, *, conf: Mapping[str, Any] | None = None,
              env: Mapping[str, str] | None = None, label: str = "") -> DagTest:
        cmd = [airflow_bin(), "dags", "test", DAG_ID, "--conf", json.dumps(dict(conf or {}))]
        log_path = home.home / "dags_test.log"
        full_env = home.env({**fast_python_env(), **(env or {})})
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                                    stdin=subprocess.DEVNULL)
        return cls(home, proc, log_path, time.perf_counter(), label)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[Any]:
        """The processes the Airflow task started (``mlflow run`` -> pipeline -> stages)."""
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait(self, timeout: float | None = None) -> DagTestResult:
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        output = self.output
        match = _RUN_ID_RE.search(output)
        return DagTestResult(returncode, output, time.perf_counter() - self.started, match.group(1) if match else None)

    def kill(self) -> None:
        """SIGKILL the process and everything it started (test cleanup)."""
        victims = self.descendants()
        kill_processes(victims)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class MlflowRun:
    """``mlflow run <repo> -e <entry point> --env-manager local`` in the background (what
    ``tests.conftest.mlflow_run`` runs, but with a handle on the process tree)."""

    proc: subprocess.Popen
    log_path: Path
    started: float
    label: str = ""

    @classmethod
    def start(cls, entry_point: str, params: Mapping[str, str], *, env: Mapping[str, str], log_path: Path,
              label: str = "") -> MlflowRun:
        cmd = [str(Path(sys.executable).with_name("mlflow")), "run", str(REPO_ROOT), "-e", entry_point,
               "--env-manager", "local", "--experiment-name", EXPERIMENT]
        for key, value in params.items():
            cmd += ["-P", f"{key}={value}"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=subprocess_env(env), stdout=log, stderr=subprocess.STDOUT,
                                    cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL)
        return cls(proc, log_path, time.perf_counter(), label)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_processes(self.descendants())
            self.proc.kill()
            raise

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def wait_for(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy; return it (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f} s")
        time.sleep(interval)


def run_dag_tests_concurrently(homes: Sequence[AirflowHome], *, env: Mapping[str, str],
                               confs: Sequence[Mapping[str, Any]] | None = None,
                               timeout: float = 840) -> list[DagTestResult]:
    """Start one ``dags test`` per home at once; wait for all (each gets its own run id)."""
    runs = [DagTest.start(home, conf=(confs[i] if confs else {}), env=env, label=f"dag-run-{i + 1}")
            for i, home in enumerate(homes)]
    deadline = time.monotonic() + timeout
    try:
        return [run.wait(timeout=max(1.0, deadline - time.monotonic())) for run in runs]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.kill()


# --- processes --------------------------------------------------------------------------------


def kill_processes(procs: Iterable[Any]) -> list[str]:
    """SIGKILL each psutil process at once (no grace: a crash, not a shutdown); returns their
    command lines (read before the kill)."""
    import psutil

    procs = list(procs)
    names = []
    for proc in procs:
        try:
            names.append(" ".join(proc.cmdline()[:4]))
        except psutil.Error:
            names.append(f"pid {proc.pid}")
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    return names


def find_processes(procs: Iterable[Any], needle: str) -> list[Any]:
    import psutil

    found = []
    for proc in procs:
        try:
            if needle in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class PeakMemory:
    """Samples the summed RSS of process trees every ``interval`` s in a thread.

    ``peak_total_mib``: the largest sum over all the trees at one instant (an upper bound: pages
    shared between processes, torch's and mlflow's libraries, count once per process);
    ``peak_process_mib``: the largest single process seen; ``peak_processes``: the most processes
    alive at once; ``peak_system_mib``: the machine's used memory above what it was at the start
    (the real footprint, but it includes anything else running on the machine)."""

    def __init__(self, roots: Iterable[int] = (), interval: float = 0.25) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak_total_mib = 0.0
        self.peak_process_mib = 0.0
        self.peak_processes = 0
        self.peak_system_mib = 0.0
        self._baseline: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, pid: int) -> None:
        self.roots.append(pid)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        import psutil

        used = psutil.virtual_memory().used / 2**20
        if self._baseline is None:
            self._baseline = used
        self.peak_system_mib = max(self.peak_system_mib, used - self._baseline)
        seen: dict[int, float] = {}
        for root in list(self.roots):
            try:
                proc = psutil.Process(root)
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            for member in tree:
                try:
                    seen[member.pid] = member.memory_info().rss / 2**20
                except psutil.Error:
                    continue
        if seen:
            self.peak_total_mib = max(self.peak_total_mib, sum(seen.values()))
            self.peak_process_mib = max(self.peak_process_mib, max(seen.values()))
            self.peak_processes = max(self.peak_processes, len(seen))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


# --- MLflow audit -----------------------------------------------------------------------------


def _entry(run) -> str:
    tags = run.data.tags
    if tags.get("tradeflow.run_level") == "dag_run":
        return "dag_run"
    return tags.get("mlflow.project.entryPoint") or tags.get("tradeflow.stage") or "?"


@dataclass
class Chain:
    """One symbol's FINISHED pipeline run under a DAG-run parent and its four stage runs."""

    symbol: str
    pipeline_run_id: str
    stage_run_ids: dict[str, str]
    stage_status: dict[str, str]
    reused: dict[str, bool]

    @property
    def ok(self) -> bool:
        return set(self.stage_run_ids) == set(STAGES) and all(s == "FINISHED" for s in self.stage_status.values())


@dataclass
class DagRunAudit:
    airflow_run_id: str
    parent_run_id: str | None
    parent_status: str | None
    chains: dict[str, Chain] = field(default_factory=dict)
    symbol_runs: Counter = field(default_factory=Counter)  # (symbol, status) -> count
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class StoreAudit:
    """Every run of every experiment of one tracking store, fetched once."""

    runs: dict[str, Any]

    @classmethod
    def collect(cls, client) -> StoreAudit:
        from mlflow.entities import ViewType

        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs: dict[str, Any] = {}
        token = None
        while experiments:
            page = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            runs.update({run.info.run_id: run for run in page})
            token = page.token
            if not token:
                break
        return cls(runs)

    def by_status(self) -> Counter:
        """``(entry point, status) -> count`` over the whole store."""
        return Counter((_entry(run), run.info.status) for run in self.runs.values())

    def running(self) -> list[str]:
        """Every run still RUNNING (or SCHEDULED): ``entry symbol run_id parent=...``."""
        return [f"{_entry(run)} {run.data.tags.get('tradeflow.symbol', '-')} {run.info.run_id} "
                f"parent={run.data.tags.get('mlflow.parentRunId', '-')}"
                for run in self.runs.values() if run.info.status in ("RUNNING", "SCHEDULED")]

    def children(self, parent_run_id: str) -> list[Any]:
        return [run for run in self.runs.values() if run.data.tags.get("mlflow.parentRunId") == parent_run_id]

    def stage_runs(self, stage: str, symbol: str | None = None, status: str | None = None) -> list[Any]:
        return [run for run in self.runs.values()
                if _entry(run) == stage and (symbol is None or run.data.tags.get("tradeflow.symbol") == symbol)
                and (status is None or run.info.status == status)]

    def dag_run(self, airflow_run_id: str, symbols: Sequence[str]) -> DagRunAudit:
        """Under the DAG-run parent: exactly one FINISHED symbol run per symbol whose four stage
        run ids (reused or not) are FINISHED runs of the right entry point and symbol."""
        parents = [run for run in self.runs.values() if _entry(run) == "dag_run"
                   and run.data.tags.get("tradeflow.airflow_run_id") == airflow_run_id]
        if len(parents) != 1:
            return DagRunAudit(airflow_run_id, None, None,
                               problems=[f"{len(parents)} DAG-run parent runs for {airflow_run_id} (expected 1)"])
        parent = parents[0]
        audit = DagRunAudit(airflow_run_id, parent.info.run_id, parent.info.status)
        if parent.info.status != "FINISHED":
            audit.problems.append(f"DAG-run parent {parent.info.run_id} is {parent.info.status}")
        children = self.children(parent.info.run_id)
        for child in children:
            symbol = child.data.tags.get("tradeflow.symbol") or child.data.params.get("symbol", "?")
            audit.symbol_runs[(symbol.upper(), child.info.status)] += 1
        for symbol in symbols:
            finished = [c for c in children if (c.data.tags.get("tradeflow.symbol") or "").upper() == symbol
                        and c.info.status == "FINISHED"]
            if len(finished) != 1:
                audit.problems.append(f"{symbol}: {len(finished)} FINISHED symbol runs under the parent (expected 1)")
                continue
            run = finished[0]
            chain = Chain(symbol, run.info.run_id, {}, {}, {})
            for stage in STAGES:
                stage_id = run.data.tags.get(f"tradeflow.stage.{stage}.run_id")
                if not stage_id:
                    audit.problems.append(f"{symbol}: no {stage} run id on pipeline run {run.info.run_id}")
                    continue
                stage_run = self.runs.get(stage_id)
                chain.stage_run_ids[stage] = stage_id
                chain.reused[stage] = run.data.tags.get(f"tradeflow.stage.{stage}.reused") == "true"
                chain.stage_status[stage] = stage_run.info.status if stage_run else "MISSING"
                if stage_run is None:
                    audit.problems.append(f"{symbol}: {stage} run {stage_id} does not exist")
                elif stage_run.info.status != "FINISHED" or _entry(stage_run) != stage \
                        or stage_run.data.tags.get("tradeflow.symbol", symbol) != symbol:
                    audit.problems.append(f"{symbol}: {stage} run {stage_id} is {_entry(stage_run)}/"
                                          f"{stage_run.info.status}/{stage_run.data.tags.get('tradeflow.symbol')}")
            audit.chains[symbol] = chain
        return audit


# --- WebUI audit ------------------------------------------------------------------------------


@dataclass
class ArtifactAudit:
    counts: Counter  # (execution_id, symbol, type) -> count
    total: int
    unresolved: list[str]  # artifacts whose run_id is not an MLflow run

    @classmethod
    def collect(cls, artifacts: Sequence[Mapping[str, Any]], client) -> ArtifactAudit:
        counts: Counter = Counter()
        unresolved = []
        checked: dict[str, bool] = {}
        for artifact in artifacts:
            counts[(artifact.get("execution_id"), artifact.get("symbol"), artifact.get("type"))] += 1
            run_id = artifact.get("run_id") or ""
            if run_id not in checked:
                try:
                    client.get_run(run_id)
                    checked[run_id] = True
                except Exception:
                    checked[run_id] = False
            if not checked[run_id]:
                unresolved.append(f"#{artifact.get('id')} {artifact.get('type')} {artifact.get('symbol')} "
                                  f"run_id={run_id!r}")
        return cls(counts, len(artifacts), unresolved)

    def problems(self, execution_ids: Iterable[str], symbols: Iterable[str],
                 types: Sequence[str] = REQUIRED_ARTIFACTS) -> list[str]:
        """Exactly one artifact of each type per (execution, symbol); every run id resolves."""
        out = [f"unresolved run_id: {u}" for u in self.unresolved]
        for execution_id in execution_ids:
            for symbol in symbols:
                for kind in types:
                    n = self.counts[(execution_id, symbol, kind)]
                    if n != 1:
                        out.append(f"{execution_id} {symbol}: {n} {kind} artifacts (expected 1)")
        return out

    def per_type(self, execution_ids: Iterable[str] | None = None) -> Counter:
        wanted = None if execution_ids is None else set(execution_ids)
        out: Counter = Counter()
        for (execution_id, _symbol, kind), n in self.counts.items():
            if wanted is None or execution_id in wanted:
                out[kind] += n
        return out


# --- driving the orchestration functions without Airflow ----------------------------------------


def _context(run_id: str, map_index: int = -1, task_id: str = "", try_number: int = 1):
    from tradeflow import orchestration as orch

    return orch.RunContext(dag_id=DAG_ID, run_id=run_id, conf={}, params={}, task_id=task_id,
                           map_index=map_index, try_number=try_number)


def _cmd_run_symbol(args: argparse.Namespace) -> int:
    """One mapped ``run_symbol`` task instance, as a separate process (an executor slot)."""
    from tradeflow import orchestration as orch

    target, parent = json.loads(args.target), json.loads(args.parent)
    ctx = _context(args.run_id, args.map_index, orch.RUN_SYMBOL_TASK)
    try:
        result = orch.run_symbol(target, parent, ctx)
    except Exception as exc:  # Airflow would mark the task failed
        print(json.dumps({"symbol": target["symbol"], "error": " ".join(str(exc).split())}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


def _cmd_dag_run(args: argparse.Namespace) -> int:
    """resolve_targets -> open_dag_run -> run_symbol x N with ``--parallel`` slots -> finalize."""
    from tradeflow import orchestration as orch

    ctx = _context(args.run_id)
    if args.symbol:
        targets = [{"symbol": s.upper(), "link_config": None, "conid": None, "workflow_symbol_id": None,
                    "priority": None} for s in args.symbol]
    else:
        targets = orch.resolve_targets(_context(args.run_id, task_id=orch.RESOLVE_TASK))
    parent = orch.open_dag_run(targets, ctx)
    results: list[dict[str, Any] | None] = [None] * len(targets)
    states: dict[int, str] = {}
    pending = list(enumerate(targets))
    running: dict[int, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            index, target = pending.pop(0)
            cmd = [sys.executable, "-m", "tests.support.load", "run-symbol", "--run-id", args.run_id,
                   "--map-index", str(index), "--target", json.dumps(target), "--parent", json.dumps(parent)]
            running[index] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=str(REPO_ROOT))
        time.sleep(0.2)
        for index, proc in list(running.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read() if proc.stdout else ""
            last = [line for line in out.splitlines() if line.startswith("{")]
            payload = json.loads(last[-1]) if last else {}
            states[index] = "success" if proc.returncode == 0 else "failed"
            results[index] = payload if proc.returncode == 0 else None
            del running[index]
    try:
        summary = orch.finalize(targets, parent, results, _context(args.run_id, task_id="finalize"),
                                task_states=states)
    except Exception as exc:
        print(json.dumps({"run_id": args.run_id, "parent": parent, "failed": " ".join(str(exc).split())}), flush=True)
        return 1
    print(json.dumps({"run_id": args.run_id, "parent": parent, **summary}), flush=True)
    return 0


def drive_dag_run(run_id: str, *, parallel: int, env: Mapping[str, str], symbols: Sequence[str] = (),
                  timeout: float = 900) -> subprocess.Popen:
    """Start ``python -m tests.support.load dag-run`` (returns the process; read its stdout)."""
    cmd = [sys.executable, "-m", "tests.support.load", "dag-run", "--run-id", run_id, "--parallel", str(parallel)]
    for symbol in symbols:
        cmd += ["--symbol", symbol]
    return subprocess.Popen(cmd, env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(REPO_ROOT))


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="python -m tests.support.load", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run-symbol", help="one run_symbol task instance")
    one.add_argument("--run-id", required=True)
    one.add_argument("--map-index", type=int, default=0)
    one.add_argument("--target", required=True)
    one.add_argument("--parent", required=True)
    many = sub.add_parser("dag-run", help="a whole DAG run with --parallel symbol slots")
    many.add_argument("--run-id", required=True)
    many.add_argument("--parallel", type=int, default=2)
    many.add_argument("--symbol", action="append", default=[], help="skip resolve_targets; run these")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"run-symbol": _cmd_run_symbol, "dag-run": _cmd_dag_run}[args.command](args)


# --- summary in the terminal ------------------------------------------------------------------


class SummaryPlugin:
    """Lines printed in pytest's terminal summary (visible in CI without ``-s``)."""

    name = "tradeflow-load-faults-summary"

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: dict[str, list[str]] = defaultdict(list)

    def add(self, section: str, line: str) -> None:
        self.sections[section].append(line)
        print(f"[{section}] {line}", flush=True)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.sections:
            return
        terminalreporter.write_sep("=", self.title)
        for section, lines in self.sections.items():
            for line in lines:
                terminalreporter.write_line(f"[{section}] {line}")


if __name__ == "__main__":
    sys.exit(main())
