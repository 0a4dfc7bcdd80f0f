"""Databricks side of TRADEFLOW_EXECUTOR=databricks: the job's ``spark_python_task``.

Databricks checks the repository out at the commit Airflow submitted (``git_source``) and runs
this file with the arguments Airflow built::

    run_pipeline.py --entry-point pipeline --experiment-id E --parent-run-id P -P symbol=AAPL -P config={...} ...

It runs that MLproject entry point on the cluster's driver (``mlflow.projects.run``, local env
manager) as a child of the DAG-run parent run P, on the shared tracking server
(``MLFLOW_TRACKING_URI``), and exits non-zero when the run fails, so the Databricks run's result
state is FAILED and Airflow retries or reports the symbol.
"""

import os
import sys
from pathlib import Path

try:
    ROOT = Path(__file__).resolve().parents[2]
except NameError:  # some runners exec the file without __file__: the checkout is the cwd
    ROOT = Path(os.getcwd())
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from tradeflow.orchestration import child_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
