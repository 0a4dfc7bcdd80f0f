"""
# FinAgent + AutoGen pipeline, per symbol

Upstream FinAgent's technical-analysis agent (akshata29/finagent @ aa7fe01), calibrated per symbol,
backtested against buy-and-hold and registered as `finagent_<SYMBOL>`; then inference on the latest
bars, an AutoGen review (with a forecaster role on upstream's forecaster prompt) and the WebUI
signal. Every run uses `engine=finagent` (a conf or link config asking for another engine fails).
Needs upstream on the worker: `bash scripts/install_finagent.sh` (.venv-fa).

**Which symbols**: `{"symbol": "AAPL"}` runs that symbol; without `symbol`, every *enabled* WebUI
Workflow Symbol with an *active* link to this DAG (by priority, at most `max_symbols`).

**Mode** (`dag_run.conf.mode`) picks the TaskGroups: `both` = `train_backtest` then `inference`,
`train_backtest` or `inference` alone (the other group is skipped). `config` is a layer over
defaults < `TRADEFLOW_*` env < the symbol's WebUI link config, e.g.
`{"config": {"finagent": {"lookback_bars": 90}}}`.

**Tasks**: `resolve_targets` -> `open_dag_run` (MLflow parent run) -> `choose_mode` ->
`train_backtest.run_symbol` / `inference.run_symbol` (one mapped task per symbol each, a child run
per symbol and stage) -> `finalize`. Runbook: `docs/finagent.md`.
"""
# An Airflow DAG file (Airflow only parses files that mention "airflow" and "dag"): the DAG is
# built by tradeflow.orchestration.dag_builder, shared with trademaster_autogen_pipeline_workflow.

from __future__ import annotations

import sys
from pathlib import Path

try:
    from tradeflow.orchestration.dag_builder import PipelineDag, build_pipeline_dag
    from tradeflow.orchestration.dag_settings import FINAGENT_DAG_ID
except ImportError:  # the repository is deployed, not installed: its root holds `tradeflow`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tradeflow.orchestration.dag_builder import PipelineDag, build_pipeline_dag
    from tradeflow.orchestration.dag_settings import FINAGENT_DAG_ID

workflow = build_pipeline_dag(PipelineDag(
    dag_id=FINAGENT_DAG_ID,
    doc_md=__doc__,
    tags=("tradeflow", "mlflow", "finagent", "autogen"),
    staged=True,
))
