"""A symbol linked in the WebUI starts a DAG run on Airflow 3: the test WebUI server posts the real
service's exact request (``POST /api/v1/dags/<dag>/dagRuns``, basic auth, ``{"conf": {symbol, conid,
workflow_symbol_id}}``, no ``logical_date``) to a real api-server carrying the plugin
``plugins/tradeflow_webui_trigger.py``; the scheduler (LocalExecutor) runs the run. One Airflow for
the module (its start is most of the cost):

1. a disabled symbol (the service still fires): refused with a wrong password, then the run's
   targets are empty and it ends in seconds;
2. an enabled symbol (AAPL, real dj30 bars, 1 epoch): the whole pipeline runs in that DAG run and
   the WebUI server ends up holding AAPL's signal, llm and chart artifacts of that execution, whose
   lineage names the pipeline run the trigger started."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tests.conftest import require_shared_data
from tests.support.airflow_env import DJ30_SOURCE, REPO, AirflowHome, AirflowServices
from tests.support.stores import EXPERIMENT, sqlite_store
from tests.support.webui import WebUIServer

pytestmark = pytest.mark.slow

DAG = "trademaster_autogen_pipeline_workflow"
USER, PASSWORD = "airflow", "webui-trigger-test-password"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Test WebUI server -> real api-server (plugin) + scheduler + dag-processor, an MLflow SQLite store."""
    tmp = tmp_path_factory.mktemp("webui_trigger")
    home = AirflowHome.create(tmp / "airflow")
    uri = sqlite_store(tmp)
    env = {"AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "MLFLOW_TRACKING_URI": uri,
           "TRADEFLOW_WEBUI_TRIGGER_USER": USER, "TRADEFLOW_WEBUI_TRIGGER_PASSWORD": PASSWORD,
           "TRADEFLOW_DATA_SOURCE": DJ30_SOURCE, "TRADEFLOW_EPOCHS": "1", "TRADEFLOW_TASK_RETRIES": "0"}
    with WebUIServer() as webui:
        env["BACKEND_API_URL"] = webui.url
        with AirflowServices(home, env=env, parallelism=2) as services:
            base = f"http://127.0.0.1:{services.port}"
            webui.airflow_url = base
            webui.airflow_auth = (USER, PASSWORD)
            services.wait_for_dag(DAG)
            yield SimpleNamespace(home=home, services=services, base=base, webui=webui, uri=uri)


def _create(airflow, body: dict) -> dict:
    """Create a symbol in the WebUI as a person does; the service's auto-trigger answer, parsed."""
    before = len(airflow.webui.auto_triggers)
    created = requests.post(f"{airflow.webui.url}/api/workflow-symbols/", timeout=60, json=body)
    assert created.status_code == 201, created.text
    trigger = airflow.webui.auto_triggers[before]
    assert trigger["airflow_status"] == 200, trigger
    answer = json.loads(trigger["airflow_answer"])
    assert answer["dag_id"] == DAG and answer["state"] == "queued" and answer["logical_date"]
    assert answer["conf"] == {"symbol": body["symbol"], "conid": body["conid"], "workflow_symbol_id": created.json()["id"]}
    return answer


def _dag_runs(airflow) -> list[tuple[str, str]]:
    with sqlite3.connect(airflow.home.db_path) as db:
        return db.execute("SELECT run_id, run_type FROM dag_run WHERE dag_id = ? ORDER BY id", (DAG,)).fetchall()


def test_a_disabled_symbol_created_in_the_webui_triggers_a_run_that_runs_nothing(airflow):
    base = airflow.base
    # without the right password: refused, and nothing runs
    wrong = requests.post(f"{base}/api/v1/dags/{DAG}/dagRuns", json={"conf": {"symbol": "KO"}},
                          auth=(USER, "wrong"), timeout=30)
    assert wrong.status_code == 401
    runs_before = _dag_runs(airflow)
    started = time.perf_counter()
    answer = _create(airflow, {"symbol": "KO", "conid": 8894, "enabled": False, "workflows": [{"dag_id": DAG}]})
    state = airflow.services.wait(DAG, answer["dag_run_id"], timeout=600)
    print(f"WebUI trigger (disabled KO) -> run {state} in {time.perf_counter() - started:.1f} s")
    assert state == "success"
    assert _dag_runs(airflow) == [*runs_before, (answer["dag_run_id"], "manual")]  # the wrong password started nothing
    log = "\n".join(p.read_text(errors="replace") for p in (airflow.home.home / "logs").rglob("*.log")
                    if "resolve_targets" in str(p) and answer["dag_run_id"] in str(p))
    assert "KO" in log and "disabled" in log.lower(), log[-3000:]
    assert not [a for a in airflow.webui.artifacts() if a.get("execution_id") == answer["dag_run_id"]]


def test_an_enabled_symbol_created_in_the_webui_runs_its_pipeline_and_holds_its_artifacts(airflow):
    require_shared_data()
    from mlflow.tracking import MlflowClient

    started = time.perf_counter()
    answer = _create(airflow, {"symbol": "AAPL", "conid": 265598, "enabled": True, "workflows": [{"dag_id": DAG}]})
    execution = answer["dag_run_id"]
    state = airflow.services.wait(DAG, execution, timeout=900)
    seconds = time.perf_counter() - started
    print(f"WebUI trigger (enabled AAPL) -> run {state} in {seconds:.1f} s")
    assert state == "success", airflow.home.task_states(DAG, execution)
    assert set(airflow.home.task_states(DAG, execution).values()) == {"success"}

    # the pipeline run the trigger started: AAPL's symbol run under this DAG run's parent run
    client = MlflowClient(airflow.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], filter_string=(
        f"tags.`tradeflow.run_level` = 'dag_run' and tags.`tradeflow.airflow_run_id` = '{execution}'"))
    (pipeline,) = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert pipeline.info.status == "FINISHED" and pipeline.data.tags["tradeflow.symbol"] == "AAPL"
    assert pipeline.data.tags["tradeflow.execution_id"] == execution
    for stage in ("train_backtest", "inference", "review", "persist"):  # all four ran, none reused (fresh store)
        assert client.get_run(pipeline.data.tags[f"tradeflow.stage.{stage}.run_id"]).info.status == "FINISHED"
        assert pipeline.data.tags.get(f"tradeflow.stage.{stage}.reused", "false") == "false"
    review_run = pipeline.data.tags["tradeflow.stage.review.run_id"]

    ours = [a for a in airflow.webui.artifacts() if a.get("execution_id") == execution]
    assert sorted(a["type"] for a in ours) == ["chart", "llm", "signal"]
    by_type = {a["type"]: a for a in ours}
    for artifact in ours:
        assert artifact["symbol"] == "AAPL" and artifact["dag_id"] == DAG and artifact["task_id"] == "run_symbol"
        assert (artifact["run_id"], artifact["experiment_id"]) == (review_run, experiment)
    links = by_type["signal"]["signal_data"]["mlflow"]
    assert links["pipeline_run"] == f"runs:/{pipeline.info.run_id}"  # the run this trigger started
    assert by_type["signal"]["action"] in ("BUY", "SELL", "HOLD")
    assert f"runs:/{pipeline.info.run_id}" in by_type["llm"]["response"]
    chart = by_type["chart"]
    assert chart["chart_data"]["bars_count"] and chart["metadata"]["mlflow_run_id"] == review_run
    image = requests.get(f"{airflow.webui.url}/api/artifacts/{chart['id']}/image", timeout=30)
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.content == Path(chart["image_path"]).read_bytes()  # the store's plot, served as is
