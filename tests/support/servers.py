"""Real PostgreSQL and MLflow tracking servers for tests (loopback only).

Public API
----------
``free_port(host="127.0.0.1") -> int``
``wait_for_http(url, timeout=30.0, *, expect_status=(200,), proc=None, interval=0.05) -> float``
``find_pg_bin_dir() -> pathlib.Path | None``
``postgres_unavailable_reason() -> str | None``
``skip_if_no_postgres() -> None``         (``pytest.skip`` with the reason)
``PostgresServer(*, port=None, dbname="mlflow", user="mlflow", password=None, ...)``
    context manager; ``.dsn``, ``.sqlalchemy_url`` (``postgresql+psycopg2://``),
    ``.libpq_url``, ``.host``/``.port``, ``.connect()``, ``.start()``, ``.stop()``,
    ``.restart()`` (same port + data), ``.kill()``, ``.timings``, ``.log_path``
``MlflowServer(backend_store_uri, *, artifacts_destination=None, workers=1, ...)``
    context manager; ``.url``, ``.port``, ``.artifacts_destination``,
    ``.start(wait=True)``, ``.wait_ready()``, ``.stop()``, ``.kill()``,
    ``.restart(hard=True)`` (same port + store), ``.timings``, ``.log_path``, ``.log_tail()``
``ServerStartError``                      raised with the server log tail when a server fails
``dump_logs_if_failed(request, *servers)`` for fixture teardown (prints logs of failed tests)

Design notes
------------
* Every server runs in its own session / process group (``start_new_session=True``)
  and is stopped by signalling the whole group, then ``SIGKILL`` after a grace period,
  so no orphan ``postgres`` backend or uvicorn worker survives a test.
* On Linux the children also get ``PR_SET_PDEATHSIG``: if the Python process that
  started them dies without running ``__exit__``/``atexit`` (``kill -9``, pytest-timeout
  in thread mode calling ``os._exit``) the kernel signals the server.  Pass
  ``die_with_parent=False`` when starting a server from a short-lived thread (the
  signal fires when the *thread* that forked the child exits).
* ``atexit`` stops anything still running (e.g. a server created without ``with``).
* PostgreSQL refuses to run as root.  When ``os.geteuid() == 0`` the PostgreSQL
  processes are started with ``subprocess.Popen(user=..., group=...)`` as the OS user
  named by ``$TRADEFLOW_PG_OS_USER``, else ``postgres`` if that account exists, else
  ``nobody`` (no account is ever created).  The temp dir is ``chown``-ed to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "MlflowServer",
    "PostgresServer",
    "ServerStartError",
    "dump_logs_if_failed",
    "find_pg_bin_dir",
    "free_port",
    "postgres_unavailable_reason",
    "skip_if_no_postgres",
    "wait_for_http",
]

LOOPBACK = "127.0.0.1"
_KEEP_DIRS_ENV = "TRADEFLOW_KEEP_SERVER_DIRS"  # "1": leave temp dirs (data, logs) behind


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


# --------------------------------------------------------------------------- utilities


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it).

    There is an unavoidable race between closing the probe socket and the server
    binding it; servers here bind within ~1 s, which is fine on a test machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_http(
    url: str,
    timeout: float = 30.0,
    *,
    expect_status: Sequence[int] = (200,),
    proc: subprocess.Popen | None = None,
    interval: float = 0.05,
) -> float:
    """Poll ``url`` with GET until it answers with one of ``expect_status``.

    Returns the seconds waited.  Raises ``TimeoutError`` after ``timeout`` seconds,
    or ``ServerStartError`` at once when ``proc`` (the server process) has exited.
    """
    start = time.monotonic()
    deadline = start + timeout
    last: object = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"process exited with code {proc.returncode} while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
                if resp.status in expect_status:
                    return time.monotonic() - start
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in expect_status:
                return time.monotonic() - start
            last = f"HTTP {exc.code}: {exc.read(300)!r}"
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout:.1f}s (last: {last})")
        time.sleep(interval)


def _tail(path: Path | None, max_bytes: int = 6000) -> str:
    if path is None or not path.exists():
        return "<no log>"
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        data = fh.read().decode("utf-8", "replace")
    return ("...\n" if size > max_bytes else "") + data


_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec(sig: int):
    """A preexec_fn that makes the kernel send ``sig`` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def _preexec() -> None:  # runs in the child after fork, after setuid/setgid
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return _preexec


def _kill_group(proc: subprocess.Popen, first_signal: int, grace: float) -> None:
    """Signal the process group led by ``proc``; SIGKILL the group after ``grace`` s."""
    pgid = proc.pid  # start_new_session=True: the child is its own group leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, first_signal)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # Even if the leader exited, stragglers (workers, backends) may still be in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


_LIVE: "set[_ManagedServer]" = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.close()


class _ManagedServer:
    """Shared lifecycle: temp dir, log file, process group, context manager."""

    name = "server"
    log_path: Path | None = None

    def __init__(self, *, keep_dirs: bool | None, die_with_parent: bool) -> None:
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._closed = False
        self._owns_tmp = False
        self.tmp_dir: Path | None = None
        self.keep_dirs = os.environ.get(_KEEP_DIRS_ENV) == "1" if keep_dirs is None else keep_dirs
        self.die_with_parent = die_with_parent
        self.timings: dict[str, float] = {}

    # -- lifecycle hooks for subclasses
    def start(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def restart(self):
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, max_bytes: int = 6000) -> str:
        return _tail(self.log_path, max_bytes)

    def _open_log(self):
        assert self.log_path is not None
        if self._log_fh is None or self._log_fh.closed:
            self._log_fh = open(self.log_path, "ab", buffering=0)  # noqa: SIM115
            if self._run_as is not None:
                os.chown(self.log_path, *self._run_as)
        return self._log_fh

    _run_as: tuple[int, int] | None = None

    def _popen(self, cmd: list[str], *, env: dict[str, str], death_signal: int, cwd: Path) -> subprocess.Popen:
        log = self._open_log()
        log.write(f"\n===== {time.strftime('%H:%M:%S')} starting: {_redact(cmd)}\n".encode())
        kwargs: dict = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as[0], group=self._run_as[1], extra_groups=[])
        if self.die_with_parent:
            kwargs["preexec_fn"] = _pdeathsig_preexec(death_signal)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        return proc

    def _terminate(self, first_signal: int, grace: float) -> None:
        if self._proc is not None:
            _kill_group(self._proc, first_signal, grace)
            self._proc = None

    def close(self) -> None:
        """Stop the server and remove its temp dir (unless ``keep_dirs``). Idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if self._log_fh is not None:
                self._log_fh.close()
            if self._owns_tmp and self.tmp_dir is not None and not self.keep_dirs:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _fail(self, what: str, exc: BaseException | None = None) -> ServerStartError:
        msg = f"{self.name}: {what}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
        err = ServerStartError(msg)
        if exc is not None:
            err.__cause__ = exc
        return err

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, Exception) and hasattr(exc, "add_note") and self.log_path is not None:
            with contextlib.suppress(Exception):
                exc.add_note(f"--- {self.name} log tail ({self.log_path}) ---\n{self.log_tail(3000)}")
        self.close()


def _redact(cmd: Iterable[str]) -> str:
    """Render a command line with passwords in URLs masked (``user:***@``)."""
    import re

    return " ".join(re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", str(c)) for c in cmd)


# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bin_dir() -> Path | None:
    """Locate a directory holding ``initdb`` and ``postgres``.

    ``$TRADEFLOW_PG_BIN`` when set (and nothing else: point it at an empty dir to
    force the skip path), else the newest ``/usr/lib/postgresql/*/bin``, else ``$PATH``.
    """
    if env := os.environ.get("TRADEFLOW_PG_BIN"):  # authoritative when set
        p = Path(env)
        return p if (p / "initdb").is_file() and (p / "postgres").is_file() else None
    candidates: list[str] = []

    def _ver(p: str) -> tuple:
        try:
            return (int(Path(p).parent.name),)
        except ValueError:
            return (0,)

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_ver, reverse=True)
    if which := shutil.which("initdb"):
        candidates.append(str(Path(which).parent))
    for cand in candidates:
        p = Path(cand)
        if (p / "initdb").is_file() and (p / "postgres").is_file():
            return p
    return None


def _pg_os_user() -> tuple[int, int, str] | None:
    """(uid, gid, name) to run PostgreSQL as when we are root; None when not root."""
    if os.geteuid() != 0:
        return None
    names = [os.environ["TRADEFLOW_PG_OS_USER"]] if os.environ.get("TRADEFLOW_PG_OS_USER") else ["postgres", "nobody"]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry.pw_uid, entry.pw_gid, name
    return None


def postgres_unavailable_reason() -> str | None:
    """Why a ``PostgresServer`` cannot be started here, or None when it can."""
    if find_pg_bin_dir() is None:
        if os.environ.get("TRADEFLOW_PG_BIN"):
            return f"TRADEFLOW_PG_BIN={os.environ['TRADEFLOW_PG_BIN']} has no initdb/postgres binaries"
        return (
            "PostgreSQL server binaries (initdb, postgres) not found: set TRADEFLOW_PG_BIN or "
            "install postgresql (looked in /usr/lib/postgresql/*/bin and $PATH)"
        )
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    if os.geteuid() == 0 and _pg_os_user() is None:
        return "running as root and no unprivileged OS user (postgres/nobody/$TRADEFLOW_PG_OS_USER) to run PostgreSQL as"
    return None


def skip_if_no_postgres() -> None:
    """``pytest.skip(reason)`` when PostgreSQL cannot be started on this machine."""
    reason = postgres_unavailable_reason()
    if reason:
        import pytest

        pytest.skip(reason)


class PostgresServer(_ManagedServer):
    """A throwaway PostgreSQL cluster on 127.0.0.1 with database ``mlflow``.

    ``initdb`` (scram-sha-256 auth, no unix socket, fsync off) into a temp dir, start
    ``postgres`` on a free TCP port, create role ``user`` with a random password and
    database ``dbname`` owned by it.  ``stop()``/``start()``/``restart()`` keep the data
    dir and the port, so clients can reconnect to the same address.

        with PostgresServer() as pg:
            engine = sqlalchemy.create_engine(pg.sqlalchemy_url)
    """

    name = "postgres"

    def __init__(
        self,
        *,
        port: int | None = None,
        dbname: str = "mlflow",
        user: str = "mlflow",
        password: str | None = None,
        base_dir: str | os.PathLike | None = None,
        startup_timeout: float = 30.0,
        server_settings: dict[str, str] | None = None,
        keep_dirs: bool | None = None,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(keep_dirs=keep_dirs, die_with_parent=die_with_parent)
        reason = postgres_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.bin_dir = find_pg_bin_dir()
        self.host = LOOPBACK
        self.port = port or free_port()
        self.dbname = dbname
        self.user = user
        self.password = password or secrets.token_hex(12)
        self.superuser = "postgres"
        self.superuser_password = secrets.token_hex(12)
        self.startup_timeout = startup_timeout
        self.server_settings = {
            # throwaway cluster: durability off, speed on
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            **(server_settings or {}),
        }
        os_user = _pg_os_user()
        self._run_as = (os_user[0], os_user[1]) if os_user else None
        self.os_user = os_user[2] if os_user else None
        self._base_dir = base_dir
        self.data_dir: Path | None = None
        self._initialized = False

    # -- connection strings
    @property
    def dsn(self) -> str:
        """libpq keyword DSN for the application role (``psycopg2.connect(pg.dsn)``)."""
        return f"host={self.host} port={self.port} dbname={self.dbname} user={self.user} password={self.password}"

    @property
    def superuser_dsn(self) -> str:
        return (
            f"host={self.host} port={self.port} dbname=postgres "
            f"user={self.superuser} password={self.superuser_password}"
        )

    @property
    def libpq_url(self) -> str:
        """libpq URI ``postgresql://user:pw@127.0.0.1:port/db`` (for psql/psycopg2).

        Do NOT give this to ``mlflow server``: SQLAlchemy 2.1 maps a bare
        ``postgresql://`` to the psycopg (v3) driver, which is not installed; use
        ``sqlalchemy_url`` (``postgresql+psycopg2://``).
        """
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    @property
    def sqlalchemy_url(self) -> str:
        """``postgresql+psycopg2://user:pw@127.0.0.1:port/db``."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    # -- lifecycle
    def _initdb(self) -> None:
        t0 = time.monotonic()
        if self._base_dir is None:
            self.tmp_dir = Path(tempfile.mkdtemp(prefix="tradeflow-pg-"))
            self._owns_tmp = True
        else:
            self.tmp_dir = Path(self._base_dir)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            os.chown(self.tmp_dir, *self._run_as)
        self.log_path = self.tmp_dir / "postgres.log"
        self.data_dir = self.tmp_dir / "data"
        pwfile = self.tmp_dir / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        os.chmod(pwfile, 0o600)
        if self._run_as is not None:
            os.chown(pwfile, *self._run_as)
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", self.superuser,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        proc = self._popen(cmd, env=self._env(), death_signal=signal.SIGKILL, cwd=self.tmp_dir)
        try:
            rc = proc.wait(timeout=60)
        except BaseException:
            _kill_group(proc, signal.SIGKILL, 1)
            raise
        pwfile.unlink()
        if rc != 0:
            raise self._fail(f"initdb failed with exit code {rc}")
        self._initialized = True
        self.timings["initdb_s"] = time.monotonic() - t0

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self.os_user:
            env.update(HOME=str(self.tmp_dir), USER=self.os_user, LOGNAME=self.os_user)
        return env

    def start(self) -> "PostgresServer":
        if self.running:
            return self
        if self._closed:
            raise RuntimeError("PostgresServer was closed")
        t_start = time.monotonic()
        if not self._initialized:
            self._initdb()
        cmd = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.host}",
            "-c", "unix_socket_directories=",
        ]  # fmt: skip
        for key, value in self.server_settings.items():
            cmd += ["-c", f"{key}={value}"]
        t0 = time.monotonic()
        # SIGQUIT = immediate shutdown: the postmaster takes its backends down with it.
        self._proc = self._popen(cmd, env=self._env(), death_signal=signal.SIGQUIT, cwd=self.tmp_dir)
        try:
            self._wait_ready()
            self.timings["ready_s"] = time.monotonic() - t0
            if "db_created_s" not in self.timings:
                t1 = time.monotonic()
                self._create_role_and_db()
                self.timings["db_created_s"] = time.monotonic() - t1
        except BaseException:
            self._terminate(signal.SIGQUIT, 2)
            raise
        self.timings["start_total_s"] = time.monotonic() - t_start
        return self

    def _wait_ready(self) -> None:
        import psycopg2

        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._fail(f"postgres exited with code {self._proc.returncode} during startup")
            try:
                psycopg2.connect(self.superuser_dsn, connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:  # not listening yet / starting up
                last = exc
                time.sleep(0.05)
        raise self._fail(f"not ready after {self.startup_timeout}s (last error: {last})")

    def _create_role_and_db(self) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.superuser_dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(self.user)),
                    (self.password,),
                )
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.dbname), sql.Identifier(self.user)
                    )
                )
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients)."""
        self._terminate(signal.SIGINT, timeout)

    def kill(self) -> None:
        """Crash-like stop: SIGKILL the postmaster and all backends (crash recovery on next start)."""
        self._terminate(signal.SIGKILL, 1)

    def restart(self) -> "PostgresServer":
        """Stop and start again on the same port with the same data."""
        self.stop()
        return self.start()

    def connect(self, **kwargs):
        """A psycopg2 connection as the application role."""
        import psycopg2

        return psycopg2.connect(self.dsn, **kwargs)

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, dbname={self.dbname!r}, running={self.running})"


# --------------------------------------------------------------------------- MLflow


class MlflowServer(_ManagedServer):
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


# --------------------------------------------------------------------------- pytest glue


def dump_logs_if_failed(request, *servers: _ManagedServer, since_failed: int | None = None) -> None:
    """Call from a fixture's teardown: print the servers' log tails if a test failed.

    ``since_failed`` is ``request.session.testsfailed`` captured at fixture setup
    (default: dump whenever any test in the session has failed).  Output goes to the
    real stderr (bypassing capture) so it appears in the CI log next to the failure.
    """
    failed = request.session.testsfailed
    if failed == 0 or (since_failed is not None and failed <= since_failed):
        return
    out = sys.__stderr__
    for server in servers:
        out.write(f"\n===== {server.name} log tail ({server.log_path}) [{request.node.nodeid}] =====\n")
        out.write(server.log_tail())
        out.write("\n")
    out.flush()
