#!/usr/bin/env bash
# The main job on the embedded default: one symbol's whole pipeline (train_backtest -> inference
# -> review -> persist) as MLflow child runs in a SQLite store inside the project folder.
#   bash scripts/demo.sh                     # offline: SYNTHETIC prices (labelled as such)
#   bash scripts/demo.sh AAPL csv:../shared/data/trademaster/portfolio_management/dj30/valid.csv,../shared/data/trademaster/portfolio_management/dj30/test.csv
set -euo pipefail
cd "$(dirname "$0")/.."
SYMBOL=${1:-DEMO}
DATA_SOURCE=${2:-synthetic}
bash scripts/setup.sh
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns.db}
.venv/bin/python -c "from tradeflow.tracking import configure_tracking, ensure_experiment; configure_tracking(); ensure_experiment('trademaster_autogen')"
if [ "$DATA_SOURCE" = "synthetic" ]; then
  echo "NOTE: running on SYNTHETIC prices (generated, not market data). Real data: bash scripts/demo.sh AAPL csv:<path>"
fi
PATH="$PWD/.venv/bin:$PATH" mlflow run . -e pipeline --env-manager local \
  -P symbol="$SYMBOL" -P data_source="$DATA_SOURCE" ${EXTRA_PARAMS:-}
echo
echo "Runs are in $MLFLOW_TRACKING_URI. Browse them: .venv/bin/mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"
