"""A throwaway PostgreSQL cluster for tests (see ``tests.support.servers``)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

from .base import LOOPBACK, ManagedServer, free_port, kill_group


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


class PostgresServer(ManagedServer):
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
            kill_group(proc, signal.SIGKILL, 1)
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
