#!/usr/bin/env bash
# The main job on the embedded default: one symbol's whole pipeline (train_backtest -> inference
# -> review -> persist) as MLflow child runs of one parent run, in the experiment
# `trademaster_autogen` of a SQLite store inside the project folder (artifacts beside it).
# Real market data by default: AAPL daily bars 2020-2021 shipped in data/trademaster/ (TradeMaster,
# Apache-2.0). Synthetic prices only when asked for by name.
#   bash scripts/demo.sh                                   # AAPL on the shipped real data
#   bash scripts/demo.sh MSFT                              # MSFT (or JPM) from the same file
#   bash scripts/demo.sh BTC csv:data/trademaster/btc_2018_2021.csv
#   bash scripts/demo.sh DEMO synthetic                    # generated prices (labelled as such)
set -euo pipefail
cd "$(dirname "$0")/.."
SYMBOL=${1:-AAPL}
DATA_SOURCE=${2:-csv:data/trademaster/dj30_2020_2021.csv}
bash scripts/setup.sh
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns.db}
started=$(date +%s.%N)
# The stages' warm process (mlflow, torch & co. imported once, docs/performance.md) starts now, in
# the background: its imports overlap the store set-up and `mlflow run`'s own start.
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m entrypoints.pipeline --warm-only &
# The SQLite store needs no separate creation step: `mlflow run` creates it (one process), then the
# pipeline its experiment, before any stage starts (a new SQLite DB must not be created in parallel).
if [ "$DATA_SOURCE" = "synthetic" ]; then
  echo "NOTE: running on SYNTHETIC prices (generated, not market data). Real data: bash scripts/demo.sh AAPL"
else
  echo "Data: $SYMBOL from $DATA_SOURCE"
fi
# No --experiment-name: tradeflow records the runs in its configured experiment (trademaster_autogen).
PATH="$PWD/.venv/bin:$PATH" mlflow run . -e pipeline --env-manager local \
  -P symbol="$SYMBOL" -P data_source="$DATA_SOURCE" ${EXTRA_PARAMS:-}
echo
echo "pipeline part (from after set-up to the end of mlflow run): $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
echo "Runs are in experiment trademaster_autogen of $MLFLOW_TRACKING_URI. Browse them:"
echo "  .venv/bin/mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"
