#!/usr/bin/env bash
# Build .venv-tm: the project environment plus upstream TradeMaster (TradeMaster-NTU/TradeMaster,
# pinned at commit c1c4838b518a85ecec6d4ded40be8815ade5f41d) for `engine=trademaster`.
#
# Upstream is not on PyPI and its requirements.txt does not install on Python 3.11 (ray 1.13,
# tensorflow 2.11, pydantic 1.10, mmcv 1.7 against a current setuptools). This installs only what
# its algorithmic-trading DQN path imports, at versions verified together (docs/trademaster_engine.md):
#
#   torch 2.13.0 (CPU)  mmcv 1.7.1 (built with setuptools 69.5.1 and yapf 0.40.1, no build
#   isolation; pulls opencv-python)  gym 0.26.2  statsmodels 0.15.0  tslearn 0.10.0  fastdtw 0.3.4
#   iopath 0.1.10  plotly 7.1.0; with numpy 2.4.6, pandas 3.1.1, scipy 1.17.1, scikit-learn 1.9.1,
#   prettytable 3.18.0 as resolved from requirements.txt
#
# ray is NOT installed: tradeflow/engines/trademaster/compat.py puts a stand-in module in place
# for the import (only the portfolio-management trainers use ray).
#
# Usage:  bash scripts/install_trademaster.sh
# Environment:
#   TM_VENV          venv to create/update (default: .venv-tm in the repo root)
#   TM_SRC           an upstream checkout to install from; cloned (sparse, no data) when absent
#                    (default: ~/.cache/tradeflow/TradeMaster-c1c4838)
#   TM_REPO_URL      where to clone from (default: the GitHub repository)
#   TORCH_INDEX_URL  where to get the torch 2.13.0 CPU wheel when no local wheel is configured
#                    (default: the PyTorch CPU index; a plain PyPI torch on Linux is a CUDA build)
#   SKIP_AIRFLOW=1   leave the apache-airflow* requirements out (not needed by the engine)
#
# Not run by CI: CI tests the project without upstream (tests/test_trademaster_engine.py skips).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

TM_COMMIT=c1c4838b518a85ecec6d4ded40be8815ade5f41d
TM_VENV=${TM_VENV:-$REPO_ROOT/.venv-tm}
TM_SRC=${TM_SRC:-$HOME/.cache/tradeflow/TradeMaster-${TM_COMMIT:0:7}}
TM_REPO_URL=${TM_REPO_URL:-https://github.com/TradeMaster-NTU/TradeMaster.git}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
PYTHON=${PYTHON:-python3}

PY="$TM_VENV/bin/python"
UV="$TM_VENV/bin/uv"
say() { printf '\n== %s\n' "$*"; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "needs Python 3.11 (set PYTHON=...); got $("$PYTHON" --version)" >&2; exit 1; }

# --- 1. the upstream source, at the pinned commit -----------------------------------------------
if [ ! -f "$TM_SRC/trademaster/environments/algorithmic_trading/environment.py" ]; then
  say "cloning upstream TradeMaster @ ${TM_COMMIT:0:12} into $TM_SRC (code only, no data)"
  mkdir -p "$(dirname "$TM_SRC")"
  git clone --quiet --filter=blob:none --no-checkout "$TM_REPO_URL" "$TM_SRC"
  git -C "$TM_SRC" sparse-checkout set --no-cone '/trademaster/' '!/trademaster/**/*.ipynb' '/setup.py' '/README.md' '/LICENSE'
  git -C "$TM_SRC" checkout --quiet "$TM_COMMIT"
fi
if git -C "$TM_SRC" rev-parse HEAD >/dev/null 2>&1; then
  head=$(git -C "$TM_SRC" rev-parse HEAD)
  [ "$head" = "$TM_COMMIT" ] || { echo "$TM_SRC is at $head, not $TM_COMMIT" >&2; exit 1; }
fi
# A git checkout or a plain tree (a copy, an unpacked archive): either way the files installed
# must be the pinned commit's, byte for byte, and nothing else (scripts/trademaster-c1c4838.sha256,
# generated from the commit's git objects).
bash scripts/verify_source_tree.sh "$TM_SRC" "scripts/trademaster-${TM_COMMIT:0:7}.sha256" trademaster \
  || { echo "refusing to install $TM_SRC: it is not upstream TradeMaster @ ${TM_COMMIT:0:12}" >&2; exit 1; }

# --- 2. venv + torch (CPU) with pip -------------------------------------------------------------
[ -x "$PY" ] || { say "creating $TM_VENV"; "$PYTHON" -m venv "$TM_VENV"; }
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
  say "torch 2.13.0 (CPU)"
  # "+cpu" pins the CPU build: from pip's configured indexes/wheelhouse if one has it, else from the
  # PyTorch CPU index. Never a plain `pip install torch` (on Linux, PyPI's torch is a CUDA build).
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0+cpu" 2>/dev/null \
    || "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0+cpu" --extra-index-url "$TORCH_INDEX_URL"
fi
"$PY" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"

# uv from here on; the constraint keeps the installed CPU torch (uv never swaps it for a CUDA build)
CONSTRAINTS=$(mktemp); trap 'rm -f "$CONSTRAINTS" "${REQS:-}"' EXIT
echo "torch==2.13.0" >"$CONSTRAINTS"
uvi() { "$UV" pip install --quiet --python "$PY" -c "$CONSTRAINTS" "$@"; }

# --- 3. the project's own requirements (and the project, editable) -----------------------------
say "project requirements"
REQS=$(mktemp)
if [ "${SKIP_AIRFLOW:-0}" = 1 ]; then grep -v '^apache-airflow' requirements.txt >"$REQS"; else cp requirements.txt "$REQS"; fi
uvi -r "$REQS" -e .

# --- 4. mmcv 1.7.1 (upstream's Config/Registry): its setup.py needs setuptools<70, yapf 0.40.1 --
if ! "$PY" -c 'import mmcv, sys; sys.exit(0 if mmcv.__version__ == "1.7.1" else 1)' 2>/dev/null; then
  say "mmcv 1.7.1 (pure-Python build, no CUDA ops)"
  uvi "setuptools==69.5.1" "wheel" "yapf==0.40.1" "addict==2.4.0"
  MMCV_WITH_OPS=0 uvi --no-build-isolation "mmcv==1.7.1"
fi

# --- 5. what upstream's algorithmic-trading import path needs (nothing of ray/tensorflow) -------
say "upstream runtime dependencies"
# (pinned: what only upstream needs; unpinned: what the project's requirements already resolve)
uvi "yapf==0.40.1" "addict==2.4.0" "gym==0.26.2" "statsmodels==0.15.0" "tslearn==0.10.0" \
    "fastdtw==0.3.4" "iopath==0.1.10" "plotly==7.1.0" prettytable scikit-learn scipy psutil

# --- 6. upstream itself, from the pinned checkout, without its requirements ---------------------
say "trademaster @ ${TM_COMMIT:0:12}"
uvi --no-deps --reinstall-package trademaster "$TM_SRC"

# --- 7. check -----------------------------------------------------------------------------------
say "check"
"$PY" - <<'EOF'
import torch
from tradeflow.engines.trademaster.compat import import_trademaster
tm = import_trademaster()
assert torch.version.cuda is None, "torch is a CUDA build; reinstall the CPU wheel"
print(f"ok: trademaster importable ({tm.origin}), torch {torch.__version__}, mmcv {tm.mmcv_version}")
EOF
echo "use it:  PATH=$TM_VENV/bin:\$PATH $TM_VENV/bin/mlflow run . -e train_backtest --env-manager local -P engine=trademaster -P symbol=BTC ..."
