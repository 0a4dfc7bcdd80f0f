"""A throwaway Airflow installation for tests and benchmarks: temp AIRFLOW_HOME, SQLite metadata
DB migrated once, only this repository's ``dags/`` folder, and ``airflow dags test`` runs.

    home = AirflowHome.create(tmp_path / "airflow")         # airflow db migrate (~10 s), once
    result = home.dags_test(DAG_ID, conf={"symbol": "AAPL"}, env={"BACKEND_API_URL": url})
    assert result.ok, result.tail()
    result.run_id                                            # manual__2026-...  (from the log)

``env`` is layered over ``home.env()``: the Airflow settings, the venv's ``bin`` first on PATH
(``mlflow run`` starts ``python`` from PATH) and the repository on PYTHONPATH.

Airflow 2.10.5 (the WebUI stack's; scripts/install_airflow2.sh builds its venv): the same home with
``airflow=airflow2_bin()``: only the ``airflow`` commands come from that venv; PATH still starts with
this interpreter's ``bin``, so the stages run in the project's environment, as on a 2.x worker.

    home = AirflowHome.create(tmp_path / "airflow2", airflow=airflow2_bin())
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .data import DJ30_DIR, DJ30_SOURCE, REPO, SHARED_DIR  # noqa: F401 - re-exported

DAGS_FOLDER = REPO / "dags"

_NOT_INHERITED = ("AIRFLOW", "MLFLOW_", "TRADEFLOW_", "BACKEND_API_")
RUN_ID_RE = re.compile(r"run_id=(manual__[0-9T:.+\-]+)")


def airflow_bin() -> str:
    """The ``airflow`` script of the interpreter running the tests."""
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


#: where scripts/install_airflow2.sh builds the Airflow 2.10.5 environment (same default)
AIRFLOW2_VENV = Path(os.environ.get("AIRFLOW2_VENV") or Path.home() / ".cache" / "tradeflow" / "airflow2-venv")
AIRFLOW2_VERSION = "2.10.5"


def airflow2_bin() -> str:
    """The ``airflow`` of the Airflow 2.10.5 environment."""
    return str(AIRFLOW2_VENV / "bin" / "airflow")


def airflow2_missing() -> str | None:
    """Why the Airflow 2 environment cannot be used here, or None (tests skip with this reason)."""
    python = AIRFLOW2_VENV / "bin" / "python"
    if not python.exists():
        return f"no Airflow 2 environment at {AIRFLOW2_VENV} (bash scripts/install_airflow2.sh builds it)"
    proc = subprocess.run([str(python), "-c", "import airflow, mlflow; print(airflow.__version__)"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or proc.stdout.strip() != AIRFLOW2_VERSION:
        return (f"{AIRFLOW2_VENV} does not import Airflow {AIRFLOW2_VERSION} + MLflow: "
                f"{(proc.stdout + proc.stderr).strip()[-300:]} (re-run scripts/install_airflow2.sh)")
    return None


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
    #: the ``airflow`` script to run (None: this interpreter's, Airflow 3; ``airflow2_bin()``: 2.10.5)
    airflow: str | None = None

    @property
    def bin(self) -> str:
        return self.airflow or airflow_bin()

    @property
    def major(self) -> int:
        return 2 if self.airflow and Path(self.airflow).resolve().parent.parent == AIRFLOW2_VENV.resolve() else 3

    @classmethod
    def create(cls, home: Path, *, env: Mapping[str, str] | None = None, timeout: float = 300,
               airflow: str | None = None) -> AirflowHome:
        """A fresh AIRFLOW_HOME with a migrated SQLite metadata DB."""
        home.mkdir(parents=True, exist_ok=True)
        instance = cls(home, airflow)
        proc = subprocess.run([instance.bin, "db", "migrate"], env=instance.env(env), capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return instance

    def clone(self, home: Path) -> AirflowHome:
        """Another AIRFLOW_HOME starting from a copy of this one's migrated DB (no migration)."""
        import shutil

        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.db_path, home / "airflow.db")
        return AirflowHome(home, self.airflow)

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
            "PATH": os.pathsep.join([*self._airflow_shim(), bin_dir, env.get("PATH", "")]),
            "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra or {})
        return env

    def _airflow_shim(self) -> list[str]:
        """With another Airflow: a folder holding only a link ``airflow`` -> it, first on PATH, so
        what Airflow starts by name (2.x executors run ``airflow tasks run ...``) is that Airflow
        while ``python`` stays this interpreter (the stages' environment)."""
        if not self.airflow:
            return []
        shim = self.home / "bin"
        link = shim / "airflow"
        if not link.is_symlink():
            shim.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.airflow)
        return [str(shim)]

    def dags_test(self, dag_id: str, *, conf: Mapping[str, Any] | str | None = None,
                  env: Mapping[str, str] | None = None, timeout: float = 900,
                  extra_args: list[str] | None = None) -> DagTestResult:
        """``airflow dags test DAG_ID [--conf JSON]``; output is stdout+stderr interleaved."""
        import json

        cmd = [self.bin, "dags", "test", dag_id]
        if conf is not None:
            cmd += ["--conf", conf if isinstance(conf, str) else json.dumps(conf)]
        cmd += extra_args or []
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=self.env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, cwd=str(REPO))
        seconds = time.perf_counter() - started
        match = RUN_ID_RE.search(proc.stdout)
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


@contextlib.contextmanager
def airflow_stack(root: Path, *, env: Mapping[str, str] | None = None,
                  seed: Callable[[Any], None] | None = None, airflow: str | None = None) -> Iterator[SimpleNamespace]:
    """What the ``airflow dags test`` suites share: an Airflow home (migrated once), a SQLite MLflow
    store with the experiment created before any fan-out, and a WebUI server (``seed(server)``
    fills it). ``stack.env``: the store, the server and the dj30 data, then ``env``. ``airflow``: the
    ``airflow`` script (``airflow2_bin()`` for Airflow 2.10.5; default this interpreter's).

    Yields ``SimpleNamespace(home, uri, client, experiment_id, server, env)``."""
    from mlflow.tracking import MlflowClient

    from .stores import EXPERIMENT, sqlite_store
    from .webui import WebUIServer

    home = AirflowHome.create(root / "airflow", airflow=airflow)
    uri = sqlite_store(root)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    with WebUIServer() as server:
        if seed is not None:
            seed(server)
        full_env = {"MLFLOW_TRACKING_URI": uri, "BACKEND_API_URL": server.url, "TRADEFLOW_DATA_SOURCE": DJ30_SOURCE,
                    **(env or {})}
        yield SimpleNamespace(home=home, uri=uri, client=client, experiment_id=experiment_id, server=server,
                              env=full_env)


class AirflowServices:
    """A real Airflow on this machine: api-server (Execution API for task workers), scheduler
    (LocalExecutor) and dag-processor, on an ``AirflowHome``. For benchmarks: the scheduler
    enforces ``max_active_tis_per_dagrun`` and pools, which ``airflow dags test`` does not.

    On an Airflow 2 home (``home.major == 2``): the webserver (its REST API ``/api/v1`` with basic
    auth, what the WebUI backend calls) and the scheduler, which parses the DAGs itself and runs
    tasks with the SequentialExecutor (2.x refuses the LocalExecutor on SQLite). DAGs are paused
    at creation (2.x's default): unpause the one under test (``airflow dags unpause``).

        with AirflowServices(home, env={...}) as services:
            run_id = services.trigger(DAG_ID, conf={...})
            state = services.wait(DAG_ID, run_id, timeout=900)
    """

    def __init__(self, home: AirflowHome, *, env: Mapping[str, str] | None = None, parallelism: int = 8,
                 log_dir: Path | None = None) -> None:
        from .servers import free_port

        self.home = home
        self.port = free_port()
        self.log_dir = log_dir or home.home / "service-logs"
        if home.major == 2:
            self.env = home.env({
                "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
                "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(self.port),
                "AIRFLOW__WEBSERVER__WORKERS": "1",
                "AIRFLOW__WEBSERVER__SECRET_KEY": "tradeflow-test-not-a-secret",
                "AIRFLOW__API__AUTH_BACKENDS": "airflow.api.auth.backend.basic_auth",
                "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                **(env or {}),
            })
            self._procs: list[tuple[str, subprocess.Popen]] = []
            return
        self.env = home.env({
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": "tradeflow-bench-not-a-secret",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            **(env or {}),
        })
        self._procs: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self) -> AirflowServices:
        from .servers import wait_for_http

        self.log_dir.mkdir(parents=True, exist_ok=True)
        airflow = self.home.bin
        commands = {"api-server": [airflow, "api-server", "--port", str(self.port), "--host", "127.0.0.1"],
                    "scheduler": [airflow, "scheduler"],
                    "dag-processor": [airflow, "dag-processor"]}
        health = f"http://127.0.0.1:{self.port}/api/v2/version"
        if self.home.major == 2:
            commands = {"webserver": [airflow, "webserver", "--port", str(self.port), "--hostname", "127.0.0.1"],
                        "scheduler": [airflow, "scheduler"]}
            health = f"http://127.0.0.1:{self.port}/health"
        for name, cmd in commands.items():
            log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                    start_new_session=True)
            self._procs.append((name, proc))
        wait_for_http(health, timeout=180, proc=self._procs[0][1])
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._procs.clear()

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag-processor has serialized ``dag_id`` (the scheduler can then run it)."""
        import sqlite3

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with sqlite3.connect(self.home.db_path) as db:
                row = db.execute("SELECT is_paused FROM dag WHERE dag_id = ?", (dag_id,)).fetchone()
            if row is not None:
                return
            time.sleep(1)
        raise TimeoutError(f"{dag_id} not parsed within {timeout:.0f}s; see {self.log_dir}/dag-processor.log")

    def trigger(self, dag_id: str, *, conf: Mapping[str, Any] | None = None) -> str:
        import json

        run_id = f"bench_{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}_{int(time.time() * 1000) % 100000}"
        cmd = [self.home.bin, "dags", "trigger", dag_id, "--run-id", run_id]
        if conf is not None:
            cmd += ["--conf", json.dumps(conf)]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow dags trigger failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return run_id

    def wait(self, dag_id: str, run_id: str, *, timeout: float = 1800) -> str:
        """The DAG run's final state (success / failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.home.dag_run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited ({proc.returncode}); see {self.log_dir}/{name}.log")
            time.sleep(2)
        raise TimeoutError(f"{dag_id} {run_id} not finished within {timeout:.0f}s")

    def task_timings(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """``[{map_index, state, start, end, duration}]`` of one task in one run (epoch seconds)."""
        import sqlite3
        from datetime import datetime

        with sqlite3.connect(self.home.db_path) as db:
            rows = db.execute("SELECT map_index, state, start_date, end_date FROM task_instance WHERE dag_id = ? "
                              "AND run_id = ? AND task_id = ? ORDER BY map_index", (dag_id, run_id, task_id)).fetchall()

        def epoch(value: str | None) -> float | None:
            return datetime.fromisoformat(value).timestamp() if value else None

        return [{"map_index": m, "state": s, "start": epoch(a), "end": epoch(b),
                 "duration": (epoch(b) - epoch(a)) if a and b else None} for m, s, a, b in rows]
