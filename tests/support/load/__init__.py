"""Load and fault-injection helpers: concurrent DAG runs, kills, audits of the MLflow store and
the WebUI, peak memory. Used by ``tests/test_load_faults.py`` and ``bench/bench_load.py``.

    env = {**fast_python_env(), **tiny_config_env(), "MLFLOW_TRACKING_URI": ..., "BACKEND_API_URL": ...}
    runs = [DagTest.start(clone_airflow_home(template, tmp / f"h{i}"), env=env) for i in range(3)]
    results = [run.wait() for run in runs]                      # concurrent `airflow dags test`
    store = StoreAudit.collect(MlflowClient(url))               # every run, every experiment
    chains = store.dag_run(results[0].run_id, symbols)          # one FINISHED chain per symbol?
    webui = ArtifactAudit.collect(server.artifacts(), client)   # one signal + llm per (execution, symbol)?

The same orchestration functions the DAG tasks call can be driven without Airflow, with ``P``
worker processes per DAG run (what ``max_active_tis_per_dagrun = TRADEFLOW_PARALLEL_SYMBOLS``
gives a real executor; ``airflow dags test`` runs mapped tasks one at a time)::

    python -m tests.support.load dag-run --run-id load-1 --parallel 2 [--symbol AAPL ...]

Everything runs on 127.0.0.1; nothing here starts a server (see ``tests/support/servers.py``).
One module a concern: ``env``, ``processes``, ``audit``, ``driver`` (+ ``__main__``), ``summary``
(the pytest plugin).
"""

from .audit import ArtifactAudit, Chain, DagRunAudit, StoreAudit
from .driver import drive_dag_run
from .env import (
    DAG_ID,
    DJ30_TICKERS,
    EXPERIMENT,
    REQUIRED_ARTIFACTS,
    STAGES,
    fast_python_env,
    subprocess_env,
    tiny_config_env,
)
from .processes import (
    DagTest,
    MlflowRun,
    PeakMemory,
    clone_airflow_home,
    find_processes,
    kill_processes,
    wait_for,
)
from .summary import SummaryPlugin

__all__ = [
    "DAG_ID", "DJ30_TICKERS", "EXPERIMENT", "REQUIRED_ARTIFACTS", "STAGES", "ArtifactAudit", "Chain", "DagRunAudit",
    "DagTest", "MlflowRun", "PeakMemory", "StoreAudit", "SummaryPlugin", "clone_airflow_home", "drive_dag_run",
    "fast_python_env", "find_processes", "kill_processes", "subprocess_env", "tiny_config_env", "wait_for",
]
