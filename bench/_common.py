"""Helpers for the benchmarks: a throwaway tracking store, subprocess timing with peak RSS."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "trademaster"
BTC = f"csv:{SHARED / 'algorithmic_trading' / 'BTC' / 'BTC.csv'}"
DJ30 = f"csv:{SHARED / 'portfolio_management' / 'dj30' / 'valid.csv'},{SHARED / 'portfolio_management' / 'dj30' / 'test.csv'}"
BIN = Path(sys.executable).parent


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


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, python {sys.version.split()[0]}"

