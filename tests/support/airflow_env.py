"""A throwaway Airflow installation for tests and benchmarks: temp AIRFLOW_HOME, SQLite metadata
DB migrated once, only this repository's ``dags/`` folder, and ``airflow dags test`` runs.

    home = AirflowHome.create(tmp_path / "airflow")         # airflow db migrate (~10 s), once
    result = home.dags_test(DAG_ID, conf={"symbol": "AAPL"}, env={"BACKEND_API_URL": url})
    assert result.ok, result.tail()
    result.run_id                                            # manual__2026-...  (from the log)

``env`` is layered over ``home.env()``: the Airflow settings, the venv's ``bin`` first on PATH
(``mlflow run`` starts ``python`` from PATH) and the repository on PYTHONPATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "dags"
SHARED_DIR = REPO_ROOT.parent / "shared"
DJ30_DIR = SHARED_DIR / "data" / "trademaster" / "portfolio_management" / "dj30"
#: The CSV data source of tests and benchmarks: TradeMaster's dj30 2020 + 2021 files, all tickers.
DJ30_SOURCE = f"csv:{DJ30_DIR / 'valid.csv'},{DJ30_DIR / 'test.csv'}"

_NOT_INHERITED = ("AIRFLOW", "MLFLOW_", "TRADEFLOW_", "BACKEND_API_")
_RUN_ID_RE = re.compile(r"run_id=(manual__[0-9T:.+\-]+)")


def airflow_bin() -> str:
    """The ``airflow`` script of the interpreter running the tests."""
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


@dataclass
class DagTestResult:
    returncode: int
    output: str
    seconds: float
    run_id: str | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, chars: int = 6000) -> str:
        return self.output[-chars:]


@dataclass
class AirflowHome:
    home: Path

    @classmethod
    def create(cls, home: Path, *, env: Mapping[str, str] | None = None, timeout: float = 300) -> AirflowHome:
        """A fresh AIRFLOW_HOME with a migrated SQLite metadata DB."""
        home.mkdir(parents=True, exist_ok=True)
        instance = cls(home)
        proc = subprocess.run([airflow_bin(), "db", "migrate"], env=instance.env(env), capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return instance

    @property
    def db_path(self) -> Path:
        return self.home / "airflow.db"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Hermetic: nothing of the caller's Airflow, MLflow, WebUI or TRADEFLOW_* settings leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
        bin_dir = str(Path(sys.executable).parent)
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra or {})
        return env

    def dags_test(self, dag_id: str, *, conf: Mapping[str, Any] | str | None = None,
                  env: Mapping[str, str] | None = None, timeout: float = 900,
                  extra_args: list[str] | None = None) -> DagTestResult:
        """``airflow dags test DAG_ID [--conf JSON]``; output is stdout+stderr interleaved."""
        import json

        cmd = [airflow_bin(), "dags", "test", dag_id]
        if conf is not None:
            cmd += ["--conf", conf if isinstance(conf, str) else json.dumps(conf)]
        cmd += extra_args or []
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=self.env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, cwd=str(REPO_ROOT))
        seconds = time.perf_counter() - started
        match = _RUN_ID_RE.search(proc.stdout)
        return DagTestResult(proc.returncode, proc.stdout, seconds, match.group(1) if match else None)

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
        """``{(task_id, map_index): state}`` of one DAG run, read from the metadata DB."""
        import sqlite3

        with sqlite3.connect(self.db_path) as db:
            rows = db.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                              (dag_id, run_id)).fetchall()
        return {(task_id, map_index): state for task_id, map_index, state in rows}

    def dag_run_state(self, dag_id: str, run_id: str) -> str | None:
        import sqlite3

        with sqlite3.connect(self.db_path) as db:
            row = db.execute("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)).fetchone()
        return row[0] if row else None
