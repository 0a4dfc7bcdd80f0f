#!/usr/bin/env bash
# Build .venv-fa: the project environment plus upstream FinAgent (akshata29/finagent, MIT, pinned at
# commit aa7fe01525fe8880c7eafa1a81e6031b2fad3f36, Feb 2025) for `engine=finagent`.
#
# Upstream has no setup.py and flat imports under src/backend (`agents`, `helpers`, `config`, ...):
# it cannot be pip-installed. This script exports that one directory at the pinned commit and records
# where it is in "$FA_VENV/finagent-upstream.json"; tradeflow/engines/finagent/compat.py puts it on
# sys.path only while importing upstream (so `config`/`models` never shadow anything else) and
# checks the recorded commit. Upstream's requirements.txt (fastapi, opentelemetry, langchain,
# reportlab, ...) is not installed: only what its technical-analysis and forecaster modules import
# (agents/technical_analysis.py, agents/forecaster.py and their imports), at versions verified here:
#
#   ta 0.11.0  yfinance 1.7.0 (imported, never called: bars come from our data layer)
#   azure-identity 1.27.0  azure-cosmos 4.17.1  azure-monitor-events-extension 0.1.0
#   sec-api 1.0.36  python-dotenv 1.2.4  (+ autogen-core/-ext 0.7.5 from the project requirements)
#
# No stand-in modules are needed: every import above is the real package. What the adapter guards
# (docs/finagent.md): upstream's config.py runs load_dotenv(".env", override=True) at import (the
# environment is restored after import) and creates an Azure credential object (never used); while
# upstream code runs, sockets are blocked and its yfinance helper is replaced by our bars.
#
# Usage:  bash scripts/install_finagent.sh
# Environment:
#   FA_VENV      venv to create/update (default: .venv-fa in the repo root)
#   FA_SRC       where the upstream tree is (default: ~/.cache/tradeflow/finagent-aa7fe01); filled when absent
#   FA_GIT_DIR   a local git repository (or mirror) holding the commit, exported with `git archive`
#   FA_REPO_URL  else cloned from here (default: the GitHub repository)
#   SKIP_AIRFLOW=1  leave the apache-airflow* requirements out
#
# Not run by CI: CI tests the project without upstream (tests/test_finagent_engine.py stubs it, and
# its real-upstream tests skip with the reason).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

FA_COMMIT=aa7fe01525fe8880c7eafa1a81e6031b2fad3f36
FA_VENV=${FA_VENV:-$REPO_ROOT/.venv-fa}
FA_SRC=${FA_SRC:-$HOME/.cache/tradeflow/finagent-${FA_COMMIT:0:7}}
FA_REPO_URL=${FA_REPO_URL:-https://github.com/akshata29/finagent.git}
PYTHON=${PYTHON:-python3}
PY="$FA_VENV/bin/python"
say() { printf '\n== %s\n' "$*"; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "needs Python 3.11 (set PYTHON=...); got $("$PYTHON" --version)" >&2; exit 1; }

# --- 1. upstream's src/backend at the pinned commit -----------------------------------------------
if [ ! -f "$FA_SRC/src/backend/agents/technical_analysis.py" ]; then
  mkdir -p "$FA_SRC"
  if [ -n "${FA_GIT_DIR:-}" ]; then
    say "exporting upstream FinAgent @ ${FA_COMMIT:0:12} from $FA_GIT_DIR"
    git --git-dir="$FA_GIT_DIR" archive "$FA_COMMIT" src/backend LICENSE | tar -x -C "$FA_SRC"
  else
    say "cloning upstream FinAgent @ ${FA_COMMIT:0:12} into $FA_SRC (src/backend only)"
    tmp=$(mktemp -d)
    git clone --quiet --filter=blob:none --no-checkout "$FA_REPO_URL" "$tmp/repo"
    git -C "$tmp/repo" archive "$FA_COMMIT" src/backend LICENSE | tar -x -C "$FA_SRC"
    rm -rf "$tmp"
  fi
  echo "$FA_COMMIT" >"$FA_SRC/COMMIT"
fi
[ "$(cat "$FA_SRC/COMMIT" 2>/dev/null || true)" = "$FA_COMMIT" ] \
  || { echo "$FA_SRC does not hold commit $FA_COMMIT (no COMMIT file or another commit)" >&2; exit 1; }
# The COMMIT file is only a claim: the exported files must be the pinned commit's, byte for byte, and
# nothing else (scripts/finagent-aa7fe01.sha256, generated from the commit's git objects). The adapter
# measures the same at every import and records it in the model (tradeflow/engines/provenance.py).
bash scripts/verify_source_tree.sh "$FA_SRC" "scripts/finagent-${FA_COMMIT:0:7}.sha256" src/backend \
  || { echo "refusing to install $FA_SRC: it is not upstream FinAgent @ ${FA_COMMIT:0:12}" >&2; exit 1; }

# --- 2. venv + torch (CPU, pip: the project requirements need it) --------------------------------
[ -x "$PY" ] || { say "creating $FA_VENV"; "$PYTHON" -m venv "$FA_VENV"; }
"$PY" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  say "torch 2.13.0 (CPU)"
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
CONSTRAINTS=$(mktemp); REQS=$(mktemp); trap 'rm -f "$CONSTRAINTS" "$REQS"' EXIT
echo "torch==2.13.0" >"$CONSTRAINTS"
uvi() { "$FA_VENV/bin/uv" pip install --quiet --system-certs --python "$PY" -c "$CONSTRAINTS" "$@"; }

# --- 3. the project (editable) and its requirements -----------------------------------------------
say "project requirements"
if [ "${SKIP_AIRFLOW:-0}" = 1 ]; then grep -v '^apache-airflow' requirements.txt >"$REQS"; else cp requirements.txt "$REQS"; fi
uvi -r "$REQS" -e .

# --- 4. what upstream's technical-analysis and forecaster import paths need -----------------------
say "upstream runtime dependencies"
uvi "ta==0.11.0" "yfinance==1.7.0" "azure-identity==1.27.0" "azure-cosmos==4.17.1" \
    "azure-monitor-events-extension==0.1.0" "sec-api==1.0.36" "python-dotenv==1.2.4"

# --- 5. where upstream is, for the adapter ---------------------------------------------------------
"$PY" - "$FA_VENV/finagent-upstream.json" "$FA_SRC" "$FA_COMMIT" <<'EOF'
import json, sys
path, src, commit = sys.argv[1:]
json.dump({"repository": "akshata29/finagent", "commit": commit, "backend": f"{src}/src/backend"}, open(path, "w"), indent=2)
EOF

# --- 6. check ------------------------------------------------------------------------------------
say "check"
"$PY" - <<'EOF'
from tradeflow.engines.finagent.compat import import_finagent
fa = import_finagent()
assert fa.provenance.implementation == "upstream", fa.provenance.label
print(f"ok: finagent importable from {fa.origin} @ {fa.commit[:12]}; ta {fa.ta_version}; {fa.provenance.label}")
EOF
echo "use it:  PATH=$FA_VENV/bin:\$PATH $FA_VENV/bin/mlflow run . -e train_backtest --env-manager local -P engine=finagent -P symbol=AAPL ..."
