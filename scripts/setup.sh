#!/usr/bin/env bash
# Create (or update) the project environment in .venv: Python 3.11, torch 2.13.0 CPU, the pinned
# requirements and this project (editable). Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
# An absolute path: from a bare environment (env -i: PATH not exported) Python cannot find its own
# executable from a bare name, and `python -m venv` then refuses to run.
PYTHON=${PYTHON:-$(command -v python3 || true)}
[ -n "$PYTHON" ] || { echo "setup: no python3 on PATH (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check uv
# torch first, with pip: it takes the local CPU wheel (uv would download a multi-GB CUDA build).
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
# --system-certs: trust the OS certificate store (as pip does via /etc/pip.conf), so a proxy CA works.
# --compile-bytecode: uv writes no .pyc by default; with PYTHONDONTWRITEBYTECODE=1 (set on these
# machines) every stage process would then recompile mlflow from source: `import mlflow` 20+ s
# instead of ~4 s (docs/performance.md).
.venv/bin/uv pip install --quiet --system-certs --compile-bytecode --python .venv/bin/python -r requirements.txt -e .
echo "environment ready: $(.venv/bin/python --version), $(.venv/bin/python -c 'import mlflow; print("mlflow", mlflow.__version__)')"
