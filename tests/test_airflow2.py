"""The DAGs on Airflow 2.10.5, the version the trading WebUI's own stack deploys (the rest of the
suite runs Airflow 3.3.2 from .venv). The Airflow 2 environment is scripts/install_airflow2.sh's
(Airflow 2.10.5 + MLflow 3.17.2 from scripts/airflow2-constraints.txt); the stages still run in
.venv (its ``bin`` first on PATH), as on a 2.x worker. One Airflow 2 home (SQLite metadata DB,
migrated once) for the module:

1. every DAG file of ``dags/`` imports (``airflow dags list-import-errors`` is empty, ``dags list``
   names all five DAGs);
2. ``airflow dags test`` of ``trademaster_autogen_pipeline_workflow`` (AAPL, mode both) and of
   ``finagent_autogen_pipeline_workflow`` (AAPL, mode both, the FinAgent interface double): the DAG
   run succeeds, the DAG-run parent and the symbol's pipeline runs are FINISHED with their stage
   runs, and the signal reaches the WebUI server;
3. the WebUI backend's exact trigger request (``POST /api/v1/dags/<dag>/dagRuns``, basic auth,
   ``{"conf": {symbol, conid, workflow_symbol_id}}``, no ``logical_date``) against a real 2.10.5
   webserver (``auth_backends = airflow.api.auth.backend.basic_auth``) + scheduler: the run starts
   and succeeds. The symbol is created disabled (the service still fires), so the run's batch is
   empty and ends in seconds; what runs for an enabled symbol is 2.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from tests.conftest import REPO, require_shared_data
from tests.support.airflow_env import AirflowServices, airflow2_bin, airflow2_missing, airflow_stack
from tradeflow import orchestration as orch

pytestmark = pytest.mark.slow

STUB_BACKEND = REPO / "tests" / "support" / "finagent_stub" / "src" / "backend"
DAG_IDS = {orch.DAG_ID, orch.FINAGENT_DAG_ID, "ibkr_trading_strategy", "ibkr_market_data_collection",
           "ibkr_portfolio_monitoring"}
USER, PASSWORD = "airflow", "webui-trigger-test-password"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = airflow2_missing()
    if missing:
        pytest.skip(missing)
    require_shared_data()
    env = {"TRADEFLOW_EPOCHS": "1", "TRADEFLOW_TASK_RETRIES": "0", "TRADEFLOW_LOG_LEVEL": "INFO",
           "FINAGENT_BACKEND": str(STUB_BACKEND)}
    with airflow_stack(tmp_path_factory.mktemp("airflow2"), env=env, airflow=airflow2_bin()) as stack:
        assert stack.home.major == 2
        yield stack


def _airflow(stack, *args: str, timeout: float = 180) -> str:
    proc = subprocess.run([stack.home.bin, *args], env=stack.home.env(stack.env), capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def _json_rows(output: str) -> list[dict]:
    """The JSON table of ``airflow ... -o json`` (Airflow prints log lines, ``[<time>] ...``, before it)."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("[{") or line.strip() == "[]":
            return json.loads(line)
    raise AssertionError(f"no JSON table in: {output[-2000:]}")


def test_every_dag_imports_on_airflow_2(stack):
    assert stack.home.major == 2  # the version itself: airflow2_missing() checked it is 2.10.5
    assert _json_rows(_airflow(stack, "dags", "list-import-errors", "-o", "json")) == []
    listed = {row["dag_id"] for row in _json_rows(_airflow(stack, "dags", "list", "-o", "json"))}
    assert listed == DAG_IDS


def _dag_run(stack, dag_id: str, conf: dict):
    result = stack.home.dags_test(dag_id, conf=conf, env=stack.env)
    print(f"Airflow 2.10.5: airflow dags test {dag_id} {json.dumps(conf)}: rc={result.returncode} "
          f"in {result.seconds:.1f}s")
    assert result.ok and result.run_id, result.tail()
    assert stack.home.dag_run_state(dag_id, result.run_id) == "success"
    (parent,) = stack.client.search_runs([stack.experiment_id], filter_string=(
        f"tags.`tradeflow.run_level` = 'dag_run' and tags.`tradeflow.airflow_run_id` = '{result.run_id}'"))
    assert parent.info.status == "FINISHED" and parent.data.tags["tradeflow.dag_id"] == dag_id
    assert parent.data.tags["tradeflow.failed_symbols"] == ""
    children = stack.client.search_runs([stack.experiment_id], order_by=["attributes.start_time ASC"],
                                        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    signals = [a for a in stack.server.artifacts() if a.get("execution_id") == result.run_id and a["type"] == "signal"]
    return result, parent, children, signals


def _stages(run) -> dict[str, str]:
    return {k.split(".")[2]: v for k, v in run.data.tags.items() if k.startswith("tradeflow.stage.") and k.endswith(".run_id")}


def _assert_finished_stages(stack, run, expected: set[str]) -> None:
    stages = _stages(run)
    assert set(stages) == expected, stages
    for stage, run_id in stages.items():
        assert stack.client.get_run(run_id).info.status == "FINISHED", stage


def test_pipeline_dag_runs_on_airflow_2(stack):
    result, parent, children, signals = _dag_run(stack, orch.DAG_ID, {"symbol": "AAPL", "mode": "both"})
    (aapl,) = children
    assert aapl.info.status == "FINISHED" and aapl.data.tags["tradeflow.execution_id"] == result.run_id
    assert aapl.data.params["cfg.mode"] == "both" and aapl.data.params["cfg.trademaster.epochs"] == "1"
    _assert_finished_stages(stack, aapl, {"train_backtest", "inference", "review", "persist"})
    states = stack.home.task_states(orch.DAG_ID, result.run_id)
    assert states == {("resolve_targets", -1): "success", ("open_dag_run", -1): "success",
                      ("run_symbol", 0): "success", ("finalize", -1): "success"}
    assert [s["symbol"] for s in signals] == ["AAPL"]
    assert signals[0]["action"] in ("BUY", "SELL", "HOLD") and signals[0]["dag_id"] == orch.DAG_ID


def test_finagent_dag_runs_on_airflow_2(stack):
    dag_id = orch.FINAGENT_DAG_ID
    result, parent, children, signals = _dag_run(stack, dag_id, {"symbol": "AAPL", "mode": "both"})
    assert [c.data.params["cfg.mode"] for c in children] == ["train_backtest", "inference"]
    assert all(c.info.status == "FINISHED" and c.data.params["cfg.engine"] == "finagent" for c in children)
    _assert_finished_stages(stack, children[0], {"train_backtest"})
    _assert_finished_stages(stack, children[1], {"inference", "review", "persist"})
    states = stack.home.task_states(dag_id, result.run_id)
    assert states[("choose_mode", -1)] == "success"
    assert states[("train_backtest.run_symbol", 0)] == "success" and states[("inference.run_symbol", 0)] == "success"
    assert states[("finalize", -1)] == "success"
    assert [s["symbol"] for s in signals] == ["AAPL"]


def test_the_webui_trigger_starts_a_run_on_an_airflow_2_webserver(stack, tmp_path):
    home = stack.home
    _airflow(stack, "users", "create", "--username", USER, "--password", PASSWORD, "--role", "Admin",
             "--firstname", "WebUI", "--lastname", "Backend", "--email", "webui@example.invalid")
    with AirflowServices(home, env=stack.env, log_dir=tmp_path / "logs") as airflow:
        base = f"http://127.0.0.1:{airflow.port}"
        stack.server.airflow_url = base
        stack.server.airflow_auth = (USER, PASSWORD)
        up = time.perf_counter()
        airflow.wait_for_dag(orch.DAG_ID)
        # what an operator does once (docs/airflow.md); through the REST API: no CLI start (~4 s)
        unpaused = requests.patch(f"{base}/api/v1/dags/{orch.DAG_ID}", json={"is_paused": False},
                                  auth=(USER, PASSWORD), timeout=30)
        assert unpaused.status_code == 200 and unpaused.json()["is_paused"] is False, unpaused.text
        print(f"Airflow 2.10.5: webserver + scheduler up, DAG parsed and unpaused in {time.perf_counter() - up:.1f} s")
        # without the right password: refused, and nothing runs
        wrong = requests.post(f"{base}/api/v1/dags/{orch.DAG_ID}/dagRuns", json={"conf": {"symbol": "KO"}},
                              auth=(USER, "wrong"), timeout=30)
        assert wrong.status_code == 401
        started = time.perf_counter()
        created = requests.post(f"{stack.server.url}/api/workflow-symbols/", timeout=60, json={
            "symbol": "KO", "conid": 8894, "enabled": False, "workflows": [{"dag_id": orch.DAG_ID}]})
        assert created.status_code == 201
        (trigger,) = stack.server.auto_triggers
        assert trigger["airflow_status"] == 200, trigger
        answer = json.loads(trigger["airflow_answer"])
        assert answer["dag_id"] == orch.DAG_ID and answer["state"] == "queued" and answer["logical_date"]
        assert answer["conf"] == {"symbol": "KO", "conid": 8894, "workflow_symbol_id": 1}
        state = airflow.wait(orch.DAG_ID, answer["dag_run_id"], timeout=300)
        print(f"Airflow 2.10.5: WebUI trigger -> run {state} in {time.perf_counter() - started:.1f} s")
    assert state == "success"
    states = home.task_states(orch.DAG_ID, answer["dag_run_id"])
    assert states[("resolve_targets", -1)] == "success" and states[("finalize", -1)] == "success"
    assert not any(run_id.startswith("scheduled__") for run_id in _run_ids(home))  # only what was asked ran
    log = "\n".join(p.read_text(errors="replace") for p in (home.home / "logs").rglob("*.log")
                    if "resolve_targets" in str(p) and answer["dag_run_id"] in str(p))
    assert "KO" in log and "disabled" in log.lower(), log[-3000:]


def _run_ids(home) -> list[str]:
    import sqlite3

    with sqlite3.connect(home.db_path) as db:
        return [row[0] for row in db.execute("SELECT run_id FROM dag_run")]
