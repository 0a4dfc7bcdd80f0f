"""Helpers for the benchmarks: the test kit, a throwaway tracking store, subprocess timing with
peak RSS."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TESTKIT_DIR = REPO / "tests" / "support"


def load_testkit() -> ModuleType:
    """The test kit (``tests/support``: servers, fakes, the load harness, data paths) as the
    package ``testkit``, loaded by file path.

    The benchmarks never import the ``tests`` package (its conftest, its test modules): the kit is
    self-contained (relative imports only, checked by ``tests/test_testkit.py``), so it loads as a
    package of its own. After this call, ``from testkit.webui import WebUIServer`` works."""
    if "testkit" in sys.modules:
        return sys.modules["testkit"]
    spec = importlib.util.spec_from_file_location("testkit", TESTKIT_DIR / "__init__.py",
                                                  submodule_search_locations=[str(TESTKIT_DIR)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["testkit"] = module
    spec.loader.exec_module(module)
    return module


load_testkit()
from testkit.data import BTC_SOURCE as BTC  # noqa: E402
from testkit.data import DJ30_SOURCE as DJ30  # noqa: E402


@dataclass
class Timed:
    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system of every process it started (robust to a loaded machine)


def fresh_store() -> str:
    """A new SQLite store with the experiment created once (before any fan-out)."""
    directory = Path(tempfile.mkdtemp(prefix="tradeflow-bench-"))
    uri = f"sqlite:///{directory / 'mlruns.db'}"
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).create_experiment("trademaster_autogen", artifact_location=(directory / "artifacts").as_uri())
    return uri


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_table() -> dict[int, tuple[int, float, int, bool]]:
    """pid -> (parent pid, CPU seconds user + system, RSS bytes, whether it is a fork server) now."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            server = b"tradeflow.runs.forkserver" in Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK,
                                  int(fields[21]) * _PAGE, server)
    return table


class ForkedSampler:
    """The processes forked by ``project``'s shared warm process while a command runs (issue 26):
    they are the server's children, not the command's, so ``RUSAGE_CHILDREN`` never sees them;
    sampled from /proc every 0.2 s (CPU as last seen, the largest RSS), the server's own CPU as
    its growth over the run."""

    def __init__(self, project: Path) -> None:
        import threading

        self.project = os.path.realpath(project)
        self.cpu: dict[int, float] = {}
        self.server_cpu: dict[int, tuple[float, float]] = {}  # pid -> (first seen, last seen)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ours(self, pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/cwd") == self.project
        except OSError:
            return False

    def _sample(self) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in table.items():
            children.setdefault(ppid, []).append(pid)
        for server in (pid for pid, row in table.items() if row[3] and self._ours(pid)):
            first = self.server_cpu.get(server, (table[server][1],))[0]
            self.server_cpu[server] = (first, table[server][1])
            todo = list(children.get(server, []))
            while todo:
                pid = todo.pop()
                todo += children.get(pid, [])
                _ppid, cpu, rss, _server = table[pid]
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu)
                self.peak = max(self.peak, rss)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self) -> ForkedSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values()) + sum(last - first for first, last in self.server_cpu.values())


def run_timed(cmd: list[str], *, env: dict[str, str], cwd: Path = REPO) -> Timed:
    """Run a command; wall time, CPU time and the peak RSS of the largest process it started,
    including those ``cwd``'s shared warm process forked for it (``ForkedSampler``).

    Each command runs under a fresh ``python -c`` wrapper so ``RUSAGE_CHILDREN`` counts only it.
    """
    wrapper = (
        "import resource, subprocess, sys, time;"
        "t=time.perf_counter(); p=subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "w=time.perf_counter()-t; u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr);"
        "print(f'__BENCH__ {w} {u.ru_maxrss} {u.ru_utime + u.ru_stime}'); sys.exit(p.returncode)"
    )
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **env}
    with ForkedSampler(cwd) as forked:
        done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=full_env, cwd=cwd)
    marker = [line for line in done.stdout.splitlines() if line.startswith("__BENCH__")][-1].split()
    stdout = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("__BENCH__"))
    return Timed(float(marker[1]), max(int(marker[2]) / 1024, forked.peak / 2**20), done.returncode, stdout,
                 done.stderr, float(marker[3]) + forked.cpu_seconds)


def mlflow_run_cmd(entry_point: str, params: dict[str, str], project: Path = REPO) -> list[str]:
    cmd = [str(BIN / "mlflow"), "run", str(project), "-e", entry_point, "--env-manager", "local",
           "--experiment-name", "trademaster_autogen"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    return cmd


#: the floor a stage process used to pay before any work: one interpreter importing the heavy three
FLOOR_CMD = [sys.executable, "-c", "import mlflow, torch, stable_baselines3"]


def import_floor(env: dict[str, str] | None = None) -> Timed:
    """``python -c "import mlflow, torch, stable_baselines3"``, timed like any other command (issue
    26: every figure is reported beside it, measured in the same run, as a multiple of it)."""
    timed = run_timed(FLOOR_CMD, env=env or {})
    if timed.returncode != 0:
        raise SystemExit(f"the import floor failed:\n{timed.stderr[-2000:]}")
    return timed


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, python {sys.version.split()[0]}"

