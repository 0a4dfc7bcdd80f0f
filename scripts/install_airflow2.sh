#!/usr/bin/env bash
# Build the second Airflow environment: Airflow 2.10.5 (the version the trading WebUI's own stack
# deploys) + MLflow 3.17.2 + the light libraries the DAG files and tasks import, exactly the set
# pinned in scripts/airflow2-constraints.txt (ours, not Apache's: see its header). The DAGs run on it
# through tradeflow/airflow_compat.py; tests/test_airflow2.py uses it and skips, saying why, without it.
#
# Only the Airflow process lives here. The stages (`python -m entrypoints...`, torch, the review
# team) run in the project's .venv: the Airflow 2 worker puts .venv/bin first on PATH (docs/airflow.md).
#
# Usage:  bash scripts/install_airflow2.sh
# Environment:
#   AIRFLOW2_VENV  where to build it (default: ~/.cache/tradeflow/airflow2-venv; the tests read the same)
#   PYTHON         a Python 3.11 (default: python3)
# Idempotent: a venv built from the same pin file (stamp in the venv) returns in well under a second.
# Exits 0 with a note when Python 3.11 or PyPI are missing (tests/test_airflow2.py then skips).
set -euo pipefail
cd "$(dirname "$0")/.."
AIRFLOW2_VENV=${AIRFLOW2_VENV:-$HOME/.cache/tradeflow/airflow2-venv}
PINS=scripts/airflow2-constraints.txt
PYTHON=${PYTHON:-$(command -v python3 || true)}
note() { echo "note: $*; tests/test_airflow2.py will skip" >&2; exit 0; }

stamp=$(sha256sum "$PINS" | cut -c1-16)
if [ -x "$AIRFLOW2_VENV/bin/airflow" ] && [ "$(cat "$AIRFLOW2_VENV/tradeflow-pins" 2>/dev/null || true)" = "$stamp" ]; then
  echo "Airflow 2 environment up to date in $AIRFLOW2_VENV (pins $stamp)"; exit 0
fi
[ -n "$PYTHON" ] || note "no python3 on PATH (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || note "needs Python 3.11 (set PYTHON=...); got $("$PYTHON" --version 2>&1)"
# uv from the project's environment (scripts/setup.sh installs it), else pip's
UV=.venv/bin/uv
[ -x "$UV" ] || UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --user "uv==0.13.9" >/dev/null 2>&1 \
    || note "no uv and pip cannot install it (offline?)"
  UV=$("$PYTHON" -c 'import site, os; print(os.path.join(site.getuserbase(), "bin", "uv"))')
fi
[ -x "$AIRFLOW2_VENV/bin/python" ] || "$UV" venv --quiet --python "$PYTHON" "$AIRFLOW2_VENV"
echo "installing Airflow 2.10.5 + MLflow 3.17.2 into $AIRFLOW2_VENV (pins $PINS)..."
# sync: exactly the pinned set (a package left over from another pin file is removed).
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE=1 every `airflow` command would otherwise
# recompile Airflow and MLflow from source.
if ! "$UV" pip sync --quiet --system-certs --compile-bytecode --python "$AIRFLOW2_VENV/bin/python" "$PINS"; then
  note "could not install $PINS (PyPI unreachable?)"
fi
"$AIRFLOW2_VENV/bin/python" -c 'import airflow, mlflow; assert airflow.__version__ == "2.10.5", airflow.__version__' \
  || { echo "install_airflow2: $AIRFLOW2_VENV does not import Airflow 2.10.5 + MLflow" >&2; exit 1; }
echo "$stamp" >"$AIRFLOW2_VENV/tradeflow-pins"
echo "Airflow 2 environment ready: $("$AIRFLOW2_VENV/bin/python" -c 'import airflow, mlflow; print("airflow", airflow.__version__, "mlflow", mlflow.__version__)') in $AIRFLOW2_VENV"
