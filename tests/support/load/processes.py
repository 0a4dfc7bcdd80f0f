"""Background processes of the load/fault runs: ``airflow dags test`` and ``mlflow run`` started in
the background (one base: start with a log file, output, process tree, wait, kill), kills of
process trees, and the peak memory of process trees."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..airflow_env import REPO, RUN_ID_RE, AirflowHome, DagTestResult, airflow_bin
from .env import DAG_ID, EXPERIMENT, fast_python_env, subprocess_env

def _pipes(proc: Any) -> set[str]:
    try:
        fds = os.listdir(f"/proc/{proc.pid}/fd")
    except OSError:
        return set()
    found = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/{proc.pid}/fd/{fd}")).startswith("pipe:"):
                found.add(target)
    return found


def forked_for(tree: list[Any]) -> list[Any]:
    """The processes a shared fork server (``tradeflow.runs.forkserver``) forked for ``tree``, and
    theirs: a forked child is the server's, not its launcher's, but shares a pipe with it (its
    stdout/stderr, and the watch pipe that ties it to the launcher's life)."""
    import psutil

    servers = [p for p in psutil.process_iter(["cmdline"]) if "tradeflow.runs.forkserver" in (p.info["cmdline"] or [])]
    known = {p.pid for p in tree}
    pipes = set().union(*(_pipes(p) for p in tree)) if tree else set()
    found: list[Any] = []
    grew = True
    while grew:  # a forked pipeline's forked stages share its pipes
        grew = False
        for server in servers:
            with contextlib.suppress(psutil.Error):
                for child in server.children():
                    if child.pid not in known and _pipes(child) & pipes:
                        for proc in [child, *child.children(recursive=True)]:
                            if proc.pid not in known:
                                known.add(proc.pid)
                                found.append(proc)
                                pipes |= _pipes(proc)
                        grew = True
    return found


def clone_airflow_home(template: AirflowHome, dest: Path) -> AirflowHome:
    """A new AIRFLOW_HOME whose metadata DB is a copy of the template's (already migrated).

    Each concurrent ``airflow dags test`` gets its own SQLite metadata DB: the DAG runs then
    never wait on each other's metadata locks (Airflow's SQLite DB is single-writer)."""
    return template.clone(dest)


@dataclass
class BackgroundProcess:
    """A command started in the background, its output in a log file, with a handle on its tree."""

    proc: subprocess.Popen
    log_path: Path
    started: float
    label: str = ""

    @staticmethod
    def _popen(cmd: list[str], *, env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            return subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                    stdin=subprocess.DEVNULL)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def descendants(self) -> list[Any]:
        """The processes it started (for ``airflow dags test``: ``mlflow run`` -> pipeline -> stages),
        those forked for it by the machine's shared warm process included (``forked_for``)."""
        import psutil

        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return tree + forked_for([psutil.Process(self.proc.pid), *tree])

    def returncode(self, timeout: float | None = None) -> int:
        """Wait for the exit status; on a timeout kill the whole tree and raise."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the process and everything it started (test cleanup)."""
        kill_processes(self.descendants())
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class DagTest(BackgroundProcess):
    """One ``airflow dags test`` process, started in the background."""

    home: AirflowHome | None = None

    @classmethod
    def start(cls, home: AirflowHome, *, conf: Mapping[str, Any] | None = None,
              env: Mapping[str, str] | None = None, label: str = "") -> DagTest:
        cmd = [airflow_bin(), "dags", "test", DAG_ID, "--conf", json.dumps(dict(conf or {}))]
        log_path = home.home / "dags_test.log"
        proc = cls._popen(cmd, env=home.env({**fast_python_env(), **(env or {})}), log_path=log_path)
        return cls(proc, log_path, time.perf_counter(), label, home=home)

    def wait(self, timeout: float | None = None) -> DagTestResult:
        returncode = self.returncode(timeout)
        output = self.output
        match = RUN_ID_RE.search(output)
        return DagTestResult(returncode, output, self.seconds, match.group(1) if match else None)


@dataclass
class MlflowRun(BackgroundProcess):
    """``mlflow run <repo> -e <entry point> --env-manager local`` in the background (what
    ``tests.conftest.mlflow_run`` runs, but with a handle on the process tree)."""

    @classmethod
    def start(cls, entry_point: str, params: Mapping[str, str], *, env: Mapping[str, str], log_path: Path,
              label: str = "") -> MlflowRun:
        cmd = [str(Path(sys.executable).with_name("mlflow")), "run", str(REPO), "-e", entry_point,
               "--env-manager", "local", "--experiment-name", EXPERIMENT]
        for key, value in params.items():
            cmd += ["-P", f"{key}={value}"]
        proc = cls._popen(cmd, env=subprocess_env(env), log_path=log_path)
        return cls(proc, log_path, time.perf_counter(), label)

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode(timeout)


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
