"""
# TradeMaster + AutoGen pipeline, per symbol

Trains and backtests an RL trading agent, runs inference, has an AutoGen team review the evidence
and persists the decision to the trading WebUI: the MLflow `pipeline` entry point, once per symbol.

**Which symbols**

- `{"symbol": "AAPL"}`: only that symbol (its WebUI link config applies when the backend knows it).
  The WebUI auto-trigger sends `{"symbol", "conid", "workflow_symbol_id"}`.
- no `symbol`: every *enabled* WebUI Workflow Symbol with an *active* link to this DAG, by priority,
  at most `max_symbols`. None assigned: the run succeeds and says so (nothing to do).

**Per-run config** (`dag_run.conf`): `mode` (both | train_backtest | inference), `force`, and
`config`, a layer over defaults < `TRADEFLOW_*` env < the symbol's WebUI link config, e.g.
`{"config": {"trademaster": {"epochs": 5}}}`.

**Tasks**: `resolve_targets` -> `open_dag_run` (MLflow parent run of this DAG run) ->
`run_symbol` (one mapped task per symbol, child run per symbol, retried with backoff) ->
`finalize` (closes the parent; fails the DAG run naming the failed symbols).

**Where to look**: MLflow experiment `trademaster_autogen`, run `<dag_id> <run_id>` -> one
`<SYMBOL> pipeline` run per symbol -> its stage runs. WebUI: artifacts with
`execution_id` = this run id. Runbook: `docs/airflow.md`.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from tradeflow.orchestration.dag_builder import PipelineDag, build_pipeline_dag
    from tradeflow.orchestration.dag_settings import DAG_ID
except ImportError:  # the repository is deployed, not installed: its root holds `tradeflow`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tradeflow.orchestration.dag_builder import PipelineDag, build_pipeline_dag
    from tradeflow.orchestration.dag_settings import DAG_ID

workflow = build_pipeline_dag(PipelineDag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    tags=("tradeflow", "mlflow", "trademaster", "autogen"),
))
