"""Real servers: PostgreSQL 15 + `mlflow server` (proxied artifacts) on loopback.

What this proves (see docs/production.md, "Tests against real servers"):

* a run created through ``MlflowClient(tracking_uri=server.url)`` stores params,
  metrics and an artifact; the artifact goes through the server's proxied store
  (``mlflow-artifacts:/``) and lands under ``--artifacts-destination``;
* a hard restart (SIGKILL) of ``mlflow server`` in the middle of a batch loses
  nothing: the client retries (urllib3 Retry, connect/read errors, all methods);
* a PostgreSQL restart is invisible to clients (SQLAlchemy ``pool_pre_ping``), and
  while PostgreSQL is down the server answers 503 TEMPORARILY_UNAVAILABLE, which the
  client retries, so a call made during the outage succeeds once PG is back;
* 8 concurrent writers on the PG-backed server produce exactly 8 FINISHED runs;
* the same ``MlflowServer`` helper works with a ``sqlite:///`` backend store.

Startup times are printed in the terminal summary (one line per server event).
Skips (with the reason) when PostgreSQL binaries are missing; the sqlite test still runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.servers import (
    MlflowServer,
    PostgresServer,
    dump_logs_if_failed,
    postgres_unavailable_reason,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TIMINGS: list[str] = []


def _record(label: str, seconds: float) -> None:
    TIMINGS.append(f"{label}={seconds:.2f}s")


@pytest.fixture(scope="module", autouse=True)
def _timing_summary(request):
    yield
    if TIMINGS:
        line = "[test_servers] server startup times: " + ", ".join(TIMINGS)
        capman = request.config.pluginmanager.get_plugin("capturemanager")
        ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with ctx:
            print(f"\n{line}", flush=True)


class _Stack:
    pg: PostgresServer | None = None
    mlflow_pg: MlflowServer | None = None
    mlflow_sqlite: MlflowServer | None = None
    pg_skip_reason: str | None = None


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    """PG + a PG-backed and a sqlite-backed mlflow server, booted in parallel.

    Both mlflow servers are launched with ``start(wait=False)`` and then awaited:
    their startup is CPU-bound (importing mlflow), so two cores halve the wall time.
    """
    failed_before = request.session.testsfailed
    st = _Stack()
    with contextlib.ExitStack() as es:
        sqlite_dir = tmp_path_factory.mktemp("sqlite-server")
        st.mlflow_sqlite = MlflowServer(
            f"sqlite:///{sqlite_dir / 'mlruns.db'}", artifacts_destination=sqlite_dir / "artifacts"
        )
        es.callback(st.mlflow_sqlite.close)
        st.mlflow_sqlite.start(wait=False)

        st.pg_skip_reason = postgres_unavailable_reason()
        if st.pg_skip_reason is None:
            t0 = time.monotonic()
            st.pg = es.enter_context(PostgresServer())
            _record("postgres_initdb", st.pg.timings["initdb_s"])
            _record("postgres_ready_total", time.monotonic() - t0)
            st.mlflow_pg = MlflowServer(st.pg.sqlalchemy_url)
            es.callback(st.mlflow_pg.close)  # LIFO: closed before PG
            st.mlflow_pg.start(wait=False)
            st.mlflow_pg.wait_ready()
            _record("mlflow_server_pg_ready", st.mlflow_pg.timings["first_ready_s"])
        st.mlflow_sqlite.wait_ready()
        _record("mlflow_server_sqlite_ready", st.mlflow_sqlite.timings["first_ready_s"])
        yield st
        live = [s for s in (st.mlflow_pg, st.pg, st.mlflow_sqlite) if s is not None]
        dump_logs_if_failed(request, *live, since_failed=failed_before)


@pytest.fixture
def pg(stack):
    if stack.pg is None:
        pytest.skip(stack.pg_skip_reason)
    return stack.pg


@pytest.fixture
def mlflow_pg(stack, pg):
    return stack.mlflow_pg


@pytest.fixture
def mlflow_sqlite(stack):
    return stack.mlflow_sqlite


@pytest.fixture
def fast_client_retries(monkeypatch):
    """Same retry policy as production, shorter backoff (1, 2, 4 s instead of 2, 4, 8 s...)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")


def _client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url)


def _exp_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _roundtrip(server: MlflowServer, tmp_path: Path) -> str:
    """Create experiment + run, log params/metrics/an artifact, read all back."""
    client = _client(server)
    exp_id = client.create_experiment(_exp_name("roundtrip"))
    exp = client.get_experiment(exp_id)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location

    run_id = client.create_run(exp_id, tags={"symbol": "AAPL"}).info.run_id
    client.log_param(run_id, "algo", "ppo")
    for step in range(3):
        client.log_metric(run_id, "sharpe", 0.5 + step, step=step)
    src = tmp_path / "report.txt"
    src.write_text("hello from the tradeflow server test\n")
    client.log_artifact(run_id, str(src), artifact_path="reports")
    client.set_terminated(run_id, "FINISHED")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"algo": "ppo"}
    assert run.data.tags["symbol"] == "AAPL"
    assert [m.value for m in client.get_metric_history(run_id, "sharpe")] == [0.5, 1.5, 2.5]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert [f.path for f in client.list_artifacts(run_id, "reports")] == ["reports/report.txt"]
    dst = Path(client.download_artifacts(run_id, "reports/report.txt", str(tmp_path / "dl")))
    assert dst.read_text() == src.read_text()
    # The bytes really went through the proxy into --artifacts-destination.
    stored = list(Path(server.artifacts_destination).rglob("report.txt"))
    assert len(stored) == 1 and run_id in str(stored[0]), stored
    return run_id


def test_roundtrip_postgres_backend(mlflow_pg, tmp_path):
    _roundtrip(mlflow_pg, tmp_path)
    # Readiness endpoints: /health bypasses host validation, the API honours --allowed-hosts.
    assert requests.get(f"{mlflow_pg.url}/health", timeout=5).text == "OK"
    bad = requests.get(
        f"{mlflow_pg.url}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        headers={"Host": "evil.example.com"},
        timeout=5,
    )
    assert bad.status_code == 403, bad.text


def test_mlflow_server_restart_mid_batch(mlflow_pg, tmp_path, fast_client_retries):
    client = _client(mlflow_pg)
    exp_id = client.create_experiment(_exp_name("restart"))
    run_id = client.create_run(exp_id).info.run_id
    client.log_param(run_id, "phase", "before-restart")
    (tmp_path / "a.txt").write_text("before")
    client.log_artifact(run_id, str(tmp_path / "a.txt"))

    n_steps = 40
    errors: list[BaseException] = []
    done_steps: list[int] = []

    def writer() -> None:  # keeps logging while the server is killed and restarted
        try:
            for step in range(n_steps):
                client.log_metric(run_id, "reward", float(step), step=step)
                done_steps.append(step)
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while len(done_steps) < 5 and thread.is_alive():
        time.sleep(0.02)
    port_before = mlflow_pg.port
    mlflow_pg.restart(hard=True)  # SIGKILL launcher + uvicorn, start again: same port & store
    logged_when_back = len(done_steps)
    _record("mlflow_server_pg_restart", mlflow_pg.timings["restart_s"])
    assert mlflow_pg.port == port_before
    thread.join(timeout=90)
    assert not thread.is_alive(), "writer hung after the restart"
    assert not errors, errors
    # The batch really straddled the outage: when the server came back the writer was
    # still mid-batch (its calls were failing and being retried by the client).
    assert 5 <= logged_when_back < n_steps, logged_when_back

    # Continue the same run after the restart: nothing from before is lost.
    client.log_param(run_id, "resumed", "yes")
    (tmp_path / "b.txt").write_text("after")
    client.log_artifact(run_id, str(tmp_path / "b.txt"))
    client.set_terminated(run_id, "FINISHED")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"phase": "before-restart", "resumed": "yes"}
    history = client.get_metric_history(run_id, "reward")
    assert sorted({m.step for m in history}) == list(range(n_steps))
    assert len(history) == n_steps, "duplicate metric rows after client retries"
    assert sorted(f.path for f in client.list_artifacts(run_id)) == ["a.txt", "b.txt"]


def test_postgres_restart_and_outage(pg, mlflow_pg, fast_client_retries):
    client = _client(mlflow_pg)
    exp_id = client.create_experiment(_exp_name("pg-restart"))
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "m", 0.0, step=0)

    # 1) PG restart (fast shutdown kills the server's pooled connections): invisible.
    t0 = time.monotonic()
    pg.restart()
    _record("postgres_restart", time.monotonic() - t0)
    client.log_metric(run_id, "m", 1.0, step=1)

    # 2) PG down: the server answers 503 TEMPORARILY_UNAVAILABLE (no retry in raw requests) ...
    pg.stop()
    try:
        resp = requests.get(f"{mlflow_pg.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert mlflow_pg.running, "mlflow server must survive a database outage"

        # ... and an MlflowClient call made during the outage succeeds once PG is back.
        result: dict = {}

        def call() -> None:
            t = time.monotonic()
            try:
                client.log_metric(run_id, "m", 2.0, step=2)
                result["seconds"] = time.monotonic() - t
            except BaseException as exc:  # noqa: BLE001
                result["error"] = exc

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        time.sleep(1.5)
    finally:
        pg.start()
    thread.join(timeout=60)
    assert "error" not in result, result
    assert "seconds" in result, "client call still hanging"

    client.set_terminated(run_id, "FINISHED")
    assert [m.value for m in client.get_metric_history(run_id, "m")] == [0.0, 1.0, 2.0]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_concurrent_writers_create_exactly_8_finished_runs(mlflow_pg):
    client = _client(mlflow_pg)
    exp_id = client.create_experiment(_exp_name("concurrent"))
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            c = _client(mlflow_pg)  # one client per worker, like one process per symbol
            barrier.wait(timeout=30)
            run_id = c.create_run(exp_id, tags={"symbol": f"SYM{i}"}).info.run_id
            c.log_param(run_id, "worker", str(i))
            for step in range(5):
                c.log_metric(run_id, "pnl", i * 10.0 + step, step=step)
            c.set_terminated(run_id, "FINISHED")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    _record("8_concurrent_runs", time.monotonic() - t0)
    assert not errors, errors

    runs = client.search_runs([exp_id], max_results=100)
    assert len(runs) == n
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["worker"] for r in runs) == sorted(str(i) for i in range(n))
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "pnl")) == 5


def test_roundtrip_sqlite_backend(mlflow_sqlite, tmp_path):
    _roundtrip(mlflow_sqlite, tmp_path)
    assert mlflow_sqlite.backend_store_uri.startswith("sqlite:///")
    assert Path(mlflow_sqlite.backend_store_uri.removeprefix("sqlite:///")).exists()


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "start_tracking_server.sh"


def test_start_script_dry_run_redacts_and_validates(tmp_path):
    """The production launcher: config validation and no secret on stdout/stderr (no server)."""
    import os
    import subprocess

    secret = "s3cr3t-" + uuid.uuid4().hex[:6]
    env = {
        **os.environ,
        "PATH": f"{Path(__import__('sys').executable).parent}:{os.environ.get('PATH', '')}",
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://mlflow:{secret}@db.internal:5432/mlflow",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_PUBLIC_HOSTNAME": "mlflow.internal",
    }
    env.pop("MLFLOW_SERVER_ALLOWED_HOSTS", None)
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert secret not in out
    assert "postgresql+psycopg2://mlflow:***@db.internal:5432/mlflow" in out
    assert "mlflow.internal:*" in out
    assert (tmp_path / "artifacts").is_dir()

    env.pop("MLFLOW_BACKEND_STORE_URI")
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "MLFLOW_BACKEND_STORE_URI is not set" in res.stderr


def test_a_postgres_server_leaves_no_temp_dir_once_closed():
    """Its data dir survives stop/start (a restart keeps the data), and goes on close."""
    if reason := postgres_unavailable_reason():
        pytest.skip(reason)
    with PostgresServer() as server:
        tmp_dir = server.tmp_dir
        assert tmp_dir is not None and (tmp_dir / "data").is_dir()
        server.restart()
        assert (tmp_dir / "data").is_dir()
    assert not tmp_dir.exists()
