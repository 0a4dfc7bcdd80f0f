"""A symbol linked in the WebUI starts a DAG run on Airflow 3: the test WebUI server posts the real
service's exact request (``POST /api/v1/dags/<dag>/dagRuns``, basic auth, ``{"conf": {symbol, conid,
workflow_symbol_id}}``, no ``logical_date``) to a real api-server carrying the plugin
``plugins/tradeflow_webui_trigger.py``; the scheduler runs the run. The symbol is created disabled
(the service still fires) so the run's targets are empty and it ends in seconds: what runs for an
enabled symbol is the DAG's own suite (tests/test_dag.py)."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
import requests

from tests.support.airflow_env import REPO, AirflowHome, AirflowServices
from tests.support.stores import sqlite_store
from tests.support.webui import WebUIServer

pytestmark = pytest.mark.slow

DAG = "trademaster_autogen_pipeline_workflow"
USER, PASSWORD = "airflow", "webui-trigger-test-password"


def test_a_symbol_created_in_the_webui_triggers_a_run_through_the_plugin(tmp_path):
    home = AirflowHome.create(tmp_path / "airflow")
    uri = sqlite_store(tmp_path)
    env = {"AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "MLFLOW_TRACKING_URI": uri,
           "TRADEFLOW_WEBUI_TRIGGER_USER": USER, "TRADEFLOW_WEBUI_TRIGGER_PASSWORD": PASSWORD}
    with WebUIServer() as webui:
        env["BACKEND_API_URL"] = webui.url
        with AirflowServices(home, env=env, parallelism=2) as airflow:
            base = f"http://127.0.0.1:{airflow.port}"
            webui.airflow_url = base
            webui.airflow_auth = (USER, PASSWORD)
            airflow.wait_for_dag(DAG)
            # without the right password: refused, and nothing runs
            wrong = requests.post(f"{base}/api/v1/dags/{DAG}/dagRuns", json={"conf": {"symbol": "KO"}},
                                  auth=(USER, "wrong"), timeout=30)
            assert wrong.status_code == 401
            started = time.perf_counter()
            created = requests.post(f"{webui.url}/api/workflow-symbols/", timeout=60, json={
                "symbol": "KO", "conid": 8894, "enabled": False, "workflows": [{"dag_id": DAG}]})
            assert created.status_code == 201
            trigger = webui.auto_triggers[0]
            assert trigger["airflow_status"] == 200, trigger
            answer = json.loads(trigger["airflow_answer"])
            assert answer["dag_id"] == DAG and answer["state"] == "queued" and answer["logical_date"]
            assert answer["conf"] == {"symbol": "KO", "conid": 8894, "workflow_symbol_id": 1}
            state = airflow.wait(DAG, answer["dag_run_id"], timeout=600)
            print(f"WebUI trigger -> run {state} in {time.perf_counter() - started:.1f} s")
    assert state == "success"
    with sqlite3.connect(home.db_path) as db:
        rows = db.execute("SELECT run_id, run_type FROM dag_run WHERE dag_id = ?", (DAG,)).fetchall()
    assert rows == [(answer["dag_run_id"], "manual")]  # the wrong password started nothing
    log = "\n".join(p.read_text(errors="replace") for p in (home.home / "logs").rglob("*.log")
                    if "resolve_targets" in str(p))
    assert "KO" in log and "disabled" in log.lower(), log[-3000:]
