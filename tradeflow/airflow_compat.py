"""The one place that knows which Airflow runs the DAGs: 3.x (``airflow.sdk``, the project's .venv)
or 2.10.5 (the trading WebUI stack's version; scripts/install_airflow2.sh). Everything else imports
Airflow's authoring names from here, so the DAG files, the pipeline DAG builder and the IBKR
operators parse and run on both (docs/airflow.md, "Airflow 2.10.5").

What differs, and what this module gives for it:

* authoring names (``dag``, ``task``, ``TaskGroup``, ``DAG``, ``Param``, ``get_current_context``,
  ``BaseOperator``, ``BaseSensorOperator``, ``BaseHook``): ``airflow.sdk`` on 3.x, their 2.x homes;
* task control exceptions (``AirflowFailException``: fail without retries, ``AirflowSkipException``,
  ``AirflowRescheduleException``): ``airflow.sdk.exceptions`` on 3.x, ``airflow.exceptions`` on 2.x
  (the same classes the 2.x task runner catches, so "fail at once" stays "fail at once");
* ``default_args``: ``retry_exponential_backoff`` is the multiplier on 3.x and a bool on 2.x (whose
  backoff doubles): ``RETRY_BACKOFF_DOUBLING``; a scheduled 2.x DAG needs a ``start_date``:
  ``DAG_DATES`` (catchup stays off, so only the latest interval runs);
* ``task_states``: a mapped task's per-index states in this DAG run. 3.x asks the Execution API
  (``ti.get_task_states``, no DB access from a task); 2.x has no such call, and a 2.x task may read
  the metadata DB, so it reads the task instances through the ORM.

It sits below ``tradeflow.orchestration`` and ``tradeflow.ibkr`` (siblings that may not import each
other) and imports Airflow at import time: import it only where Airflow is being used.
"""

from __future__ import annotations

from typing import Any

from airflow import __version__ as AIRFLOW_VERSION

#: 2 or 3
AIRFLOW_MAJOR = int(AIRFLOW_VERSION.split(".", 1)[0])
AIRFLOW_2 = AIRFLOW_MAJOR < 3

if AIRFLOW_2:  # pragma: no cover - exercised by tests/test_airflow2.py in the Airflow 2 environment
    from airflow.decorators import dag, task
    from airflow.exceptions import AirflowFailException, AirflowRescheduleException, AirflowSkipException
    from airflow.hooks.base import BaseHook
    from airflow.models.baseoperator import BaseOperator
    from airflow.models.dag import DAG
    from airflow.models.param import Param
    from airflow.operators.python import get_current_context
    from airflow.sensors.base import BaseSensorOperator
    from airflow.utils.task_group import TaskGroup
else:
    from airflow.sdk import (
        DAG,
        BaseHook,
        BaseOperator,
        BaseSensorOperator,
        Param,
        TaskGroup,
        dag,
        get_current_context,
        task,
    )
    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowSkipException

#: ``retry_exponential_backoff`` that doubles the delay each try
RETRY_BACKOFF_DOUBLING: bool | float = True if AIRFLOW_2 else 2.0
#: extra ``DAG(...)`` arguments: 2.x refuses a schedule without a start date; 3.x needs none
DAG_DATES: dict[str, Any] = {}
if AIRFLOW_2:  # pragma: no cover - Airflow 2 environment
    from datetime import datetime, timezone

    DAG_DATES = {"start_date": datetime(2024, 1, 1, tzinfo=timezone.utc)}

__all__ = [
    "AIRFLOW_2", "AIRFLOW_MAJOR", "AIRFLOW_VERSION", "DAG", "DAG_DATES", "RETRY_BACKOFF_DOUBLING", "AirflowFailException", "AirflowRescheduleException",
    "AirflowSkipException", "BaseHook", "BaseOperator", "BaseSensorOperator", "Param", "TaskGroup", "dag",
    "get_current_context", "task", "task_states",
]


def task_states(ti: Any, *, dag_id: str, task_id: str, run_id: str) -> dict[int, str]:
    """``{map_index: state}`` of ``task_id``'s task instances in one DAG run (a state never set: ``"None"``)."""
    if AIRFLOW_2:  # pragma: no cover - Airflow 2 environment
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.query(TaskInstance.map_index, TaskInstance.state).filter(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id).all()
        # unexpanded (map index -1) left out, as the Execution API's answer has it on 3.x
        return {int(index): str(getattr(state, "value", state)) for index, state in rows if index >= 0}
    states = ti.get_task_states(dag_id=dag_id, task_ids=[task_id], run_ids=[run_id])
    out: dict[int, str] = {}
    for key, state in (states.get(run_id) or {}).items():
        prefix, _, index = key.rpartition("_")
        if prefix == task_id and index.isdigit():
            out[int(index)] = str(state)
    return out
