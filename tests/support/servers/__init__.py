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
``SeaweedS3Server(*, buckets=())``         SeaweedFS ``weed server -s3``; ``.endpoint``, ``.env()``
    (``MLFLOW_S3_ENDPOINT_URL`` + ``AWS_*``), ``.client()`` (boto3), ``.timings``
``seaweedfs_unavailable_reason() -> str | None``  (no ``weed`` / boto3)
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

from .base import (
    LOOPBACK,
    ServerStartError,
    dump_logs_if_failed,
    free_port,
    wait_for_http,
)
from .mlflow_server import MlflowServer
from .postgres import (
    PostgresServer,
    find_pg_bin_dir,
    postgres_unavailable_reason,
    skip_if_no_postgres,
)
from .seaweedfs import SeaweedS3Server, seaweedfs_unavailable_reason

__all__ = [
    "LOOPBACK",
    "MlflowServer",
    "PostgresServer",
    "SeaweedS3Server",
    "ServerStartError",
    "dump_logs_if_failed",
    "find_pg_bin_dir",
    "free_port",
    "postgres_unavailable_reason",
    "seaweedfs_unavailable_reason",
    "skip_if_no_postgres",
    "wait_for_http",
]
