#!/usr/bin/env bash
# Stop the stack scripts/start_stack.sh started in DIR: workers first, the stores last; anything
# left after that is killed. Its data stays in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: scripts/stop_stack.sh DIR" >&2; exit 2; }
exec "${PYTHON:-.venv/bin/python}" scripts/stack.py down --dir "$1"
