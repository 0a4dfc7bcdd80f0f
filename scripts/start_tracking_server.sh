#!/usr/bin/env bash
# Start the tradeflow MLflow tracking server (PostgreSQL backend store, proxied artifacts).
#
# Usage:
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:<pw>@db.internal:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=/srv/mlflow/artifacts \
#   MLFLOW_HOST=0.0.0.0 MLFLOW_PUBLIC_HOSTNAME=mlflow.internal \
#   scripts/start_tracking_server.sh [--dry-run] [extra `mlflow server` flags...]
#
# Environment (all read by `mlflow server` itself, so the database password never
# appears on the command line / in `ps`; this script never prints it):
#   MLFLOW_BACKEND_STORE_URI      required. postgresql://user:pw@host:5432/db (a bare
#                                 postgresql:// or postgres:// is rewritten to
#                                 postgresql+psycopg2://: SQLAlchemy 2.1 would otherwise
#                                 pick the psycopg v3 driver, which we do not install).
#                                 sqlite:///abs/path.db is accepted for a single-user box.
#   MLFLOW_ARTIFACTS_DESTINATION  required. Shared dir (NFS/EFS mount, same path on the
#                                 server only: clients never touch it) or s3://bucket/prefix.
#   MLFLOW_HOST                   bind address (default 127.0.0.1; 0.0.0.0 to serve workers).
#   MLFLOW_PORT                   default 5000.
#   MLFLOW_WORKERS                uvicorn worker processes (default 4; ~1 per core, each
#                                 holds its own DB connection pool).
#   MLFLOW_PUBLIC_HOSTNAME        name clients use (e.g. mlflow.internal). Added to the
#                                 allowed Host headers, with and without ":port".
#   MLFLOW_SERVER_ALLOWED_HOSTS   full override of the Host-header allow list (DNS-rebinding
#                                 protection). Patterns are fnmatch'ed against the raw Host
#                                 header, which includes the port: "mlflow.internal" does NOT
#                                 match "mlflow.internal:5000"; list "mlflow.internal:*" too.
#                                 Unset + no MLFLOW_PUBLIC_HOSTNAME = MLflow's default
#                                 (localhost and private IPs 10.*, 172.16-31.*, 192.168.*).
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  default false here (no huey job-runner process; only
#                                 GenAI server-side jobs need it). Set true to re-enable.
#   MLFLOW_DB_UPGRADE=1           run `mlflow db upgrade` first (needed after upgrading
#                                 mlflow on an existing database; back the DB up first.
#                                 NOTE: that one command takes the URI as an argument).
#   MLFLOW_BIN                    mlflow executable (default: `mlflow` on PATH).
#
# The script `exec`s mlflow, so SIGTERM/SIGINT from systemd, Docker or Kubernetes go
# straight to the server, which forwards them to uvicorn for a graceful shutdown.
set -euo pipefail

die() { echo "start_tracking_server: $*" >&2; exit 2; }
redact() { sed -E 's#(://[^:/@]+:)[^@]*@#\1***@#' <<<"$1"; }

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi

[[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]] || die "MLFLOW_BACKEND_STORE_URI is not set (postgresql://user:pw@host:5432/mlflow)"
[[ -n "${MLFLOW_ARTIFACTS_DESTINATION:-}" ]] || die "MLFLOW_ARTIFACTS_DESTINATION is not set (shared dir or s3://bucket/prefix)"

case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql://*) MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_BACKEND_STORE_URI#postgresql://}" ;;
  postgres://*)   MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_BACKEND_STORE_URI#postgres://}" ;;
  postgresql+*://*|mysql*://*|mssql*://*) ;;
  sqlite:///*) echo "start_tracking_server: WARNING: SQLite backend: fine for one user, not for a team server or parallel Airflow tasks" >&2 ;;
  file:*|/*|./*) die "a file store is not supported for the tracking server; use postgresql:// (or sqlite:/// for a single user)" ;;
  *) die "unsupported MLFLOW_BACKEND_STORE_URI scheme: $(redact "${MLFLOW_BACKEND_STORE_URI%%://*}://...")" ;;
esac

case "$MLFLOW_ARTIFACTS_DESTINATION" in
  *://*) ;;  # s3://, gs://, wasbs://, ... (credentials come from the usual provider env/role)
  /*) mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION" || die "cannot create $MLFLOW_ARTIFACTS_DESTINATION"
      [[ -w "$MLFLOW_ARTIFACTS_DESTINATION" ]] || die "$MLFLOW_ARTIFACTS_DESTINATION is not writable" ;;
  *) die "MLFLOW_ARTIFACTS_DESTINATION must be an absolute path or a URI" ;;
esac

export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
export MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_WORKERS="${MLFLOW_WORKERS:-4}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
if [[ -z "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" && -n "${MLFLOW_PUBLIC_HOSTNAME:-}" ]]; then
  h="$MLFLOW_PUBLIC_HOSTNAME"
  export MLFLOW_SERVER_ALLOWED_HOSTS="${h},${h}:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
fi
if [[ "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" == "*" ]]; then
  echo "start_tracking_server: WARNING: MLFLOW_SERVER_ALLOWED_HOSTS='*' disables Host-header validation" >&2
fi
if [[ "$MLFLOW_HOST" == "0.0.0.0" && -z "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" ]]; then
  echo "start_tracking_server: note: binding 0.0.0.0 with MLflow's default allow list (localhost + private IPs);" \
       "set MLFLOW_PUBLIC_HOSTNAME if clients use a DNS name" >&2
fi

MLFLOW_BIN="${MLFLOW_BIN:-mlflow}"
command -v "$MLFLOW_BIN" >/dev/null 2>&1 || die "'$MLFLOW_BIN' not found (activate the venv or set MLFLOW_BIN)"

echo "start_tracking_server: backend=$(redact "$MLFLOW_BACKEND_STORE_URI") artifacts=$MLFLOW_ARTIFACTS_DESTINATION" \
     "listen=$MLFLOW_HOST:$MLFLOW_PORT workers=$MLFLOW_WORKERS allowed_hosts=${MLFLOW_SERVER_ALLOWED_HOSTS:-<mlflow default>}" >&2

# Options come from the MLFLOW_* variables exported above; only non-secret flags on argv.
cmd=("$MLFLOW_BIN" server --serve-artifacts "$@")
if [[ "$DRY_RUN" == 1 ]]; then
  echo "start_tracking_server: dry run, would exec: ${cmd[*]}" >&2
  exit 0
fi
if [[ "${MLFLOW_DB_UPGRADE:-0}" == 1 ]]; then
  echo "start_tracking_server: running mlflow db upgrade" >&2
  "$MLFLOW_BIN" db upgrade "$MLFLOW_BACKEND_STORE_URI"
fi
exec "${cmd[@]}"
