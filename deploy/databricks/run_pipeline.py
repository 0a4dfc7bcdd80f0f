"""Databricks side of TRADEFLOW_EXECUTOR=databricks: the job's ``spark_python_task``.

Databricks checks the repository out at the commit Airflow submitted (``git_source``) and runs
this file with the arguments Airflow built::

    run_pipeline.py --entry-point pipeline --experiment-id E --parent-run-id P -P symbol=AAPL -P config={...} ...

It runs that MLproject entry point on the cluster's driver (``mlflow.projects.run``, local env
manager) as a child of the DAG-run parent run P, on the shared tracking server
(``MLFLOW_TRACKING_URI``), and exits non-zero when the run fails, so the Databricks run's result
state is FAILED and Airflow retries or reports the symbol.
"""

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    ROOT = Path(__file__).resolve().parents[2]
except NameError:  # some runners exec the file without __file__: the checkout is the cwd
    ROOT = Path(os.getcwd())
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def child_main(argv: Sequence[str] | None = None) -> int:
    """``python deploy/databricks/run_pipeline.py --entry-point pipeline --experiment-id E
    --parent-run-id P -P key=value ...``: run the entry point here as a child of P."""
    parser = argparse.ArgumentParser(description="run one MLproject entry point as a child of a parent run")
    parser.add_argument("--entry-point", default="pipeline")
    parser.add_argument("--experiment-id", required=True)
    parser.add_argument("--parent-run-id", required=True)
    parser.add_argument("-P", "--param", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-P {item!r}: expected KEY=VALUE")
        params[key] = value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tradeflow.runs.projects import run_entry_point
    from tradeflow.runs.tracking import configure_tracking

    configure_tracking()
    outcome = run_entry_point(args.entry_point, params, experiment_id=args.experiment_id,
                              parent_run_id=args.parent_run_id, project_uri=ROOT,
                              run_name=f"{params.get('symbol', '')} {args.entry_point}".strip())
    print(f"{args.entry_point} run {outcome.run_id} {outcome.status}"
          + (f": {outcome.failure}" if outcome.failure else ""), flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
