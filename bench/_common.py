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


def run_timed(cmd: list[str], *, env: dict[str, str], cwd: Path = REPO) -> Timed:
    """Run a command; wall time, CPU time and the peak RSS of the largest process it started.

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
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=full_env, cwd=cwd)
    marker = [line for line in done.stdout.splitlines() if line.startswith("__BENCH__")][-1].split()
    stdout = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("__BENCH__"))
    return Timed(float(marker[1]), int(marker[2]) / 1024, done.returncode, stdout, done.stderr, float(marker[3]))


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

