"""``mlflow server`` for tests (see ``tests.support.servers``)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .base import LOOPBACK, ManagedServer, ServerStartError, free_port, wait_for_http


class MlflowServer(ManagedServer):
    """``mlflow server`` (uvicorn, 1 worker) on 127.0.0.1 at a free port.

    Proxied artifacts (``--serve-artifacts``, the default) go to
    ``artifacts_destination`` (a temp dir by default); new experiments get the
    ``mlflow-artifacts:/`` artifact root, so clients never touch the directory.

        with PostgresServer() as pg, MlflowServer(pg.sqlalchemy_url) as srv:
            client = MlflowClient(tracking_uri=srv.url)

    ``restart()`` kills the process group and starts it again on the SAME port and
    store ("tracking server restarted mid-batch").  ``kill()`` simulates a crash.

    Environment given to the server: ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` (no
    huey job-runner process; pass ``job_execution=True`` to keep MLflow's default),
    ``MLFLOW_DISABLE_TELEMETRY=true``, plus ``env``.

    Startup is dominated by importing mlflow (twice: the CLI launcher, then uvicorn).
    When the environment has ``PYTHONDONTWRITEBYTECODE`` set and the venv has no
    ``.pyc`` files, every start recompiles ~1200 modules (~2x slower).  With
    ``pycache_prefix=True`` (default) the server then gets
    ``PYTHONPYCACHEPREFIX=$TMPDIR/tradeflow-pycache-<uid>`` (outside the repo and the
    venv) so that restarts and later servers reuse compiled bytecode.  A path uses
    that dir; ``False``/``None`` leaves the environment alone.
    """

    name = "mlflow-server"
    DEFAULT_ALLOWED_HOSTS = "127.0.0.1,127.0.0.1:*,localhost,localhost:*"

    def __init__(
        self,
        backend_store_uri: str,
        *,
        artifacts_destination: str | os.PathLike | None = None,
        host: str = LOOPBACK,
        port: int | None = None,
        workers: int = 1,
        allowed_hosts: str | None = DEFAULT_ALLOWED_HOSTS,
        job_execution: bool = False,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
        base_dir: str | os.PathLike | None = None,
        keep_dirs: bool | None = None,
        die_with_parent: bool = True,
        pycache_prefix: str | os.PathLike | None | bool = True,
    ) -> None:
        super().__init__(keep_dirs=keep_dirs, die_with_parent=die_with_parent)
        self.backend_store_uri = backend_store_uri
        self.pycache_prefix = pycache_prefix
        self.host = host
        self.port = port or free_port(host)
        self.workers = workers
        self.allowed_hosts = allowed_hosts
        self.job_execution = job_execution
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        if base_dir is None:
            self.tmp_dir = Path(tempfile.mkdtemp(prefix="tradeflow-mlflow-"))
            self._owns_tmp = True
        else:
            self.tmp_dir = Path(base_dir)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmp_dir / "mlflow-server.log"
        if artifacts_destination is None:
            artifacts_destination = self.tmp_dir / "artifacts"
        self.artifacts_destination = str(artifacts_destination)
        if "://" not in self.artifacts_destination:
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--serve-artifacts",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        return cmd + self.extra_args

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # A tracking URI inherited from the test process must not leak into the server.
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="true" if self.job_execution else "false",
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            PYTHONUNBUFFERED="1",
        )
        prefix = _server_pycache_prefix(self.pycache_prefix, env)
        if prefix:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = prefix
        env.update(self.extra_env)
        return env

    def start(self, *, wait: bool = True) -> "MlflowServer":
        """Launch ``mlflow server``; with ``wait`` (default) block until it is ready.

        ``start(wait=False)`` + ``wait_ready()`` lets several servers boot in parallel
        (startup is CPU-bound importing mlflow; two cores halve the wall time).
        """
        if self._closed:
            raise RuntimeError("MlflowServer was closed")
        if self._proc is None or self._proc.poll() is not None:
            self._launch_t0 = time.monotonic()
            self._ready = False
            # SIGTERM: the `mlflow server` launcher forwards it to uvicorn (graceful).
            self._proc = self._popen(self.command(), env=self._env(), death_signal=signal.SIGTERM, cwd=self.tmp_dir)
        if wait:
            self.wait_ready()
        return self

    _launch_t0 = 0.0
    _ready = False

    def wait_ready(self) -> "MlflowServer":
        """Block until ``/health`` and a real API call answer 200 (else ServerStartError)."""
        if self._proc is None:
            raise RuntimeError("MlflowServer not started")
        if self._ready:
            return self
        t0 = self._launch_t0
        try:
            remaining = max(1.0, self.startup_timeout - (time.monotonic() - t0))
            wait_for_http(f"{self.url}/health", timeout=remaining, proc=self._proc)
            self.timings["health_s"] = time.monotonic() - t0
            # /health is exempt from host validation and never touches the store: also
            # check a real API call (host header allowed + backend store reachable).
            remaining = max(1.0, self.startup_timeout - (time.monotonic() - t0))
            wait_for_http(
                f"{self.url}/api/2.0/mlflow/experiments/search?max_results=1",
                timeout=remaining,
                proc=self._proc,
            )
        except (TimeoutError, ServerStartError) as exc:
            self._terminate(signal.SIGTERM, 5)
            raise self._fail(str(exc), exc) from exc
        except BaseException:
            self._terminate(signal.SIGTERM, 5)
            raise
        self._ready = True
        self.starts += 1
        self.timings["ready_s"] = time.monotonic() - t0
        self.timings.setdefault("first_ready_s", self.timings["ready_s"])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM to the group, SIGKILL after ``timeout``)."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash: SIGKILL the launcher and uvicorn at once."""
        self._terminate(signal.SIGKILL, 1)

    def restart(self, *, hard: bool = True) -> "MlflowServer":
        """Kill (``hard``) or stop and start again on the same port and store."""
        t0 = time.monotonic()
        self.kill() if hard else self.stop()
        self.start()
        self.timings["restart_s"] = time.monotonic() - t0
        return self

    def __repr__(self) -> str:
        return f"MlflowServer(url={self.url!r}, running={self.running})"


def _server_pycache_prefix(setting, env: dict[str, str]) -> str | None:
    if not setting:
        return None
    if setting is not True:
        return str(setting)
    if env.get("PYTHONPYCACHEPREFIX") or not env.get("PYTHONDONTWRITEBYTECODE"):
        return None  # bytecode is written normally (or already redirected)
    return str(Path(tempfile.gettempdir()) / f"tradeflow-pycache-{os.getuid()}")
