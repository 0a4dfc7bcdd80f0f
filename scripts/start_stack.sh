#!/usr/bin/env bash
# The production topology on this machine, in the background, everything on 127.0.0.1:
# PostgreSQL 15 (Airflow metadata + MLflow store), Redis, SeaweedFS S3 (bucket mlflow), mlflow server
# with S3 artifacts, Airflow api-server / scheduler / dag-processor on CeleryExecutor and N Celery
# workers, each in its own directory (scripts/stack.py says how; docs/production.md why).
#
#   scripts/start_stack.sh DIR [--workers 2] [--artifacts direct|proxied]
#   eval "$(.venv/bin/python scripts/stack.py env --dir DIR)"     # a client's MLFLOW_*/AWS_* exports
#   scripts/stop_stack.sh DIR
#
# DIR must be new (or empty): it holds every service's data and logs (DIR/logs, DIR/launcher.log).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/start_stack.sh DIR [--workers N] [--artifacts direct|proxied]" >&2; exit 2; }
DIR=$(mkdir -p "$1" && cd "$1" && pwd); shift
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "start_stack: no $PY (run scripts/setup.sh first)" >&2; exit 2; }
bash scripts/install_stack_deps.sh
nohup "$PY" scripts/stack.py up --dir "$DIR" "$@" >"$DIR/launcher.log" 2>&1 </dev/null &
launcher=$!
for _ in $(seq 1 600); do
  if [ -f "$DIR/stack.json" ]; then
    tail -n 1 "$DIR/launcher.log"
    exit 0
  fi
  if ! kill -0 "$launcher" 2>/dev/null; then
    echo "start_stack: the stack did not start:" >&2
    tail -n 40 "$DIR/launcher.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "start_stack: not up after 300 s (see $DIR/launcher.log, $DIR/logs); stopping it" >&2
kill "$launcher" 2>/dev/null || true
exit 1
