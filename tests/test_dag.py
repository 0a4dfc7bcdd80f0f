"""The Airflow DAG ``trademaster_autogen_pipeline_workflow`` and ``tradeflow.orchestration``.

End to end (``-m slow``; the fast tests of the orchestration package are
``tests/test_orchestration.py``): real ``airflow dags test`` subprocesses on a temp AIRFLOW_HOME (SQLite
metadata DB, migrated once per module), a real MLflow SQLite store, the WebUI contract server and
real dj30 data, one scenario per run:

1. a bad ``mode`` is refused at trigger time by Airflow's param validation;
2. single symbol, mode ``train_backtest`` (config layering env < link config < conf);
3. a batch: the WebUI lists 7 symbols; disabled, inactive-link and other-DAG ones are left out,
   ``max_symbols`` cuts the lowest priority; AAPL runs mode ``both`` (its training reused from 2),
   ZZZZ (absent from the data) fails and is retried once with the same execution id, KO (a bad
   link config) fails at once; the DAG run fails naming exactly ZZZZ and KO;
4. single symbol, mode ``inference`` on the model trained in 2;
5. an empty batch succeeds (downstream skipped); an unreachable backend fails the DAG run.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.conftest import require_shared_data
from tests.support.airflow_env import airflow_stack
from tests.support.webui import WebUIServer
from tests.test_orchestration import seed_batch
from tradeflow import orchestration as orch

DAG_ID = orch.DAG_ID


# --- end to end: airflow dags test -------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Airflow home (migrated once), MLflow store (created before any fan-out), WebUI server."""
    require_shared_data()
    env = {
        "TRADEFLOW_EPOCHS": "1",
        "TRADEFLOW_SEED": "3",  # < link seed 7 < conf seed 11
        "TRADEFLOW_TASK_RETRIES": "1",
        "TRADEFLOW_RETRY_DELAY_S": "0",
        "TRADEFLOW_LOG_LEVEL": "INFO",
    }
    with airflow_stack(tmp_path_factory.mktemp("dag_e2e"), env=env, seed=seed_batch) as stack:
        yield stack


def _dag_test(stack, conf) -> SimpleNamespace:
    result = stack.home.dags_test(DAG_ID, conf=conf, env=stack.env)
    print(f"airflow dags test {json.dumps(conf)}: rc={result.returncode} in {result.seconds:.1f}s")
    assert result.run_id, result.tail()
    return result


def _tree(stack, airflow_run_id: str) -> SimpleNamespace:
    """The MLflow tree of one DAG run: parent -> latest symbol run per symbol (+ all attempts)."""
    client = stack.client
    (parent,) = client.search_runs([stack.experiment_id], filter_string=(
        f"tags.`tradeflow.run_level` = 'dag_run' and tags.`tradeflow.airflow_run_id` = '{airflow_run_id}'"))
    children = client.search_runs([stack.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    attempts: dict[str, list] = {}
    for child in children:
        attempts.setdefault(child.data.tags["tradeflow.symbol"], []).append(child)
    return SimpleNamespace(parent=parent, attempts=attempts, latest={s: runs[-1] for s, runs in attempts.items()})


def _assert_stages(stack, symbol_run, stages: tuple[str, ...]) -> None:
    for stage in stages:
        run_id = symbol_run.data.tags.get(f"tradeflow.stage.{stage}.run_id")
        assert run_id, f"{symbol_run.data.tags.get('tradeflow.symbol')}: no {stage} stage"
        assert stack.client.get_run(run_id).info.status == "FINISHED"
    present = {k.split(".")[2] for k in symbol_run.data.tags if k.startswith("tradeflow.stage.") and k.endswith(".run_id")}
    assert present == set(stages)


def _artifacts(stack, execution_id: str) -> list[dict]:
    return [a for a in stack.server.artifacts() if a.get("execution_id") == execution_id]


@pytest.mark.slow
def test_bad_mode_is_rejected_at_trigger(stack):
    result = stack.home.dags_test(DAG_ID, conf={"mode": "bogus"}, env=stack.env)
    assert result.returncode != 0
    assert "Invalid input for param mode: 'bogus' is not one of ['both', 'train_backtest', 'inference']" in result.output
    assert "[DAG TEST] running task" not in result.output  # nothing ran


@pytest.fixture(scope="module")
def trained_aapl(stack):
    """Single symbol, mode train_backtest: the model later scenarios use."""
    result = _dag_test(stack, {"symbol": "AAPL", "mode": "train_backtest", "config": {"seed": 11}})
    assert result.ok, result.tail()
    return result


@pytest.mark.slow
def test_single_symbol_train_backtest(stack, trained_aapl):
    tree = _tree(stack, trained_aapl.run_id)
    parent = tree.parent
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tradeflow.dag_id"] == DAG_ID and parent.data.tags["tradeflow.symbol_count"] == "1"
    assert parent.data.tags["tradeflow.failed_symbols"] == ""
    assert list(tree.attempts) == ["AAPL"] and len(tree.attempts["AAPL"]) == 1
    aapl = tree.latest["AAPL"]
    assert aapl.info.status == "FINISHED"
    assert aapl.data.tags["tradeflow.execution_id"] == trained_aapl.run_id
    assert aapl.data.tags["tradeflow.airflow_try_number"] == "1"
    _assert_stages(stack, aapl, ("train_backtest",))
    # defaults < env (epochs 1, seed 3) < link (seed 7, hidden 16,16) < conf (seed 11, mode)
    params = aapl.data.params
    assert (params["cfg.seed"], params["cfg.trademaster.epochs"], params["cfg.trademaster.hidden_dims"],
            params["cfg.mode"]) == ("11", "1", "16,16", "train_backtest")
    assert _artifacts(stack, trained_aapl.run_id) == []  # train_backtest persists nothing
    states = stack.home.task_states(DAG_ID, trained_aapl.run_id)
    assert set(states.values()) == {"success"}


@pytest.mark.slow
def test_batch_runs_exactly_the_assigned_symbols_and_names_the_failures(stack, trained_aapl):
    result = _dag_test(stack, {"max_symbols": 3, "config": {"seed": 11}})
    assert result.returncode != 0, result.tail()
    assert "2 of 3 symbol(s) failed: ZZZZ: " in result.output
    assert "KO: WebUI link config of KO: unknown parameter 'not_a_parameter'" in result.output
    assert stack.home.dag_run_state(DAG_ID, result.run_id) == "failed"
    states = stack.home.task_states(DAG_ID, result.run_id)
    assert {k: v for k, v in states.items() if k[0] == "run_symbol"} == {
        ("run_symbol", 0): "success", ("run_symbol", 1): "failed", ("run_symbol", 2): "failed"}
    assert states[("finalize", -1)] == "failed"

    tree = _tree(stack, result.run_id)
    assert tree.parent.info.status == "FAILED"
    assert tree.parent.data.tags["tradeflow.symbols"] == "AAPL,ZZZZ,KO"
    assert tree.parent.data.tags["tradeflow.failed_symbols"] == "ZZZZ,KO"
    assert set(tree.attempts) == {"AAPL", "ZZZZ", "KO"}  # not JPM (max_symbols), INTC, IBM, CSCO
    aapl = tree.latest["AAPL"]
    assert aapl.info.status == "FINISHED" and aapl.data.params["cfg.mode"] == "both"
    _assert_stages(stack, aapl, ("train_backtest", "inference", "review", "persist"))
    print("AAPL stages reused:", {k: v for k, v in aapl.data.tags.items() if k.endswith(".reused")})
    # ZZZZ: retried once by Airflow, both attempts under the same parent with the same execution id
    zzzz = tree.attempts["ZZZZ"]
    assert [r.info.status for r in zzzz] == ["FAILED", "FAILED"]
    assert [r.data.tags["tradeflow.execution_id"] for r in zzzz] == [result.run_id] * 2
    assert [r.data.tags["tradeflow.airflow_try_number"] for r in zzzz] == ["1", "2"]
    assert "ZZZZ" in zzzz[-1].data.tags["tradeflow.failure_reason"]
    (ko,) = tree.attempts["KO"]  # a config error is not retried
    assert ko.info.status == "FAILED" and "unknown parameter 'not_a_parameter'" in ko.data.tags["tradeflow.failure_reason"]

    artifacts = _artifacts(stack, result.run_id)
    assert {a["symbol"] for a in artifacts} == {"AAPL"}
    assert "signal" in {a["type"] for a in artifacts}
    identities = [(a["type"], a["symbol"], a["step_name"]) for a in artifacts]
    assert len(identities) == len(set(identities)), "duplicated WebUI artifacts"
    for artifact in artifacts:
        assert (artifact["dag_id"], artifact["task_id"]) == (DAG_ID, "run_symbol")
        assert artifact["experiment_id"] == stack.experiment_id and artifact["run_id"]


@pytest.mark.slow
def test_single_symbol_inference_on_the_trained_model(stack, trained_aapl):
    result = _dag_test(stack, {"symbol": "aapl", "mode": "inference", "config": {"seed": 11}})
    assert result.ok, result.tail()
    tree = _tree(stack, result.run_id)
    assert tree.parent.info.status == "FINISHED"
    aapl = tree.latest["AAPL"]
    assert aapl.info.status == "FINISHED" and aapl.data.params["cfg.mode"] == "inference"
    _assert_stages(stack, aapl, ("inference", "review", "persist"))
    artifacts = _artifacts(stack, result.run_id)
    assert {a["symbol"] for a in artifacts} == {"AAPL"} and "signal" in {a["type"] for a in artifacts}
    signal = next(a for a in artifacts if a["type"] == "signal")
    assert signal["action"] in ("BUY", "SELL", "HOLD") and 0 <= signal["confidence"] <= 1


@pytest.mark.slow
def test_empty_batch_succeeds_and_an_unreachable_backend_fails(stack):
    from tests.support.servers import free_port

    with WebUIServer() as empty:
        result = stack.home.dags_test(DAG_ID, conf={}, env={**stack.env, "BACKEND_API_URL": empty.url})
    assert result.ok, result.tail()
    assert stack.home.task_states(DAG_ID, result.run_id) == {
        ("resolve_targets", -1): "success", ("open_dag_run", -1): "skipped", ("run_symbol", -1): "skipped",
        ("finalize", -1): "success"}
    assert "empty batch: no enabled symbol with an active link to trademaster_autogen_pipeline_workflow" in result.output
    assert not stack.client.search_runs([stack.experiment_id], filter_string=(
        f"tags.`tradeflow.airflow_run_id` = '{result.run_id}'"))  # no MLflow run for nothing

    dead = f"http://127.0.0.1:{free_port()}"
    result = stack.home.dags_test(DAG_ID, conf={}, env={**stack.env, "BACKEND_API_URL": dead,
                                                        "TRADEFLOW_TASK_RETRIES": "0"})
    assert result.returncode != 0
    assert stack.home.task_states(DAG_ID, result.run_id) == {
        ("resolve_targets", -1): "failed", ("open_dag_run", -1): "upstream_failed",
        ("run_symbol", -1): "upstream_failed", ("finalize", -1): "failed"}
    assert f"WebUI backend at {dead} unreachable after 4 tries: GET /api/workflow-symbols/" in result.output
    assert "no targets: task resolve_targets failed" in result.output
