"""The FinAgent DAG: structure (fast), its mode branching and engine pinning (fast), and real
``airflow dags test`` runs in each mode (slow) on the dj30 data.

CI has no upstream FinAgent: the slow runs use the interface double of
``tests/support/finagent_stub`` (``FINAGENT_BACKEND``), so they test the DAG, the stages and the
adapter, not upstream's numbers (the ``finagent_upstream`` tests and docs/finagent.md do that).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO, require_shared_data
from tests.support.airflow_env import airflow_stack
from tradeflow import orchestration as orch
from tradeflow.errors import ConfigError

DAG_ID = orch.FINAGENT_DAG_ID
DAG_FILE = REPO / "dags" / f"{DAG_ID}.py"
STUB_BACKEND = REPO / "tests" / "support" / "finagent_stub" / "src" / "backend"


def _load_dag():
    spec = importlib.util.spec_from_file_location("finagent_dag_under_test", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.workflow


def test_dag_structure_groups_and_trigger_rules():
    dag = _load_dag()
    assert dag.dag_id == DAG_ID == "finagent_autogen_pipeline_workflow"
    assert "# FinAgent + AutoGen pipeline" in dag.doc_md and "docs/finagent.md" in dag.doc_md
    up = {t: sorted(dag.task_dict[t].upstream_task_ids) for t in dag.task_dict}
    assert up == {
        "resolve_targets": [],
        "open_dag_run": ["resolve_targets"],
        "choose_mode": ["open_dag_run"],
        "train_backtest.run_symbol": ["choose_mode", "open_dag_run", "resolve_targets"],
        "inference.run_symbol": ["choose_mode", "open_dag_run", "resolve_targets", "train_backtest.run_symbol"],
        "finalize": ["inference.run_symbol", "open_dag_run", "resolve_targets", "train_backtest.run_symbol"],
    }
    assert set(dag.task_group.children) >= {"train_backtest", "inference"}
    for task_id in ("train_backtest.run_symbol", "inference.run_symbol"):
        assert type(dag.task_dict[task_id]).__name__.endswith("MappedOperator")
        assert dag.task_dict[task_id].max_active_tis_per_dagrun == 2
    rule = lambda t: getattr(dag.task_dict[t].trigger_rule, "value", dag.task_dict[t].trigger_rule)  # noqa: E731
    assert (rule("inference.run_symbol"), rule("finalize")) == ("all_done", "all_done")
    assert dag.params.get_param("mode").schema["enum"] == ["both", "train_backtest", "inference"]
    assert "finagent" in dag.tags


def test_mode_chooses_the_groups_and_states_combine_per_symbol():
    from tradeflow.orchestration.dag_builder import chosen_groups, combined_states

    ctx = lambda conf: orch.RunContext(DAG_ID, "r", conf=conf, params={"mode": "both"})  # noqa: E731
    assert chosen_groups(ctx({})) == ("train_backtest", "inference")
    assert chosen_groups(ctx({"mode": "inference"})) == ("inference",)
    assert chosen_groups(ctx({"mode": "train_backtest"})) == ("train_backtest",)
    states = combined_states({"train_backtest.run_symbol": {0: "success", 1: "failed"},
                              "inference.run_symbol": {0: "success", 1: "skipped"}})
    assert states == {0: "success", 1: "failed"}
    assert combined_states({"a": None, "b": {0: "skipped"}}) == {0: "skipped"}
    assert combined_states({"a": None}) is None


def test_the_dag_pins_its_engine(monkeypatch):
    target = {"symbol": "AAPL", "link_config": {"epochs": 1}}
    cfg = orch.symbol_config(target, orch.RunContext(DAG_ID, "r"))
    assert cfg.engine == "finagent" and cfg.registered_model_name == "finagent_AAPL"
    monkeypatch.setenv("TRADEFLOW_ENGINE", "builtin")  # the env layer sits below the DAG's
    assert orch.symbol_config(target, orch.RunContext(DAG_ID, "r")).engine == "finagent"
    with pytest.raises(ConfigError, match="finagent_autogen_pipeline_workflow runs engine=finagent; .* engine=builtin"):
        orch.symbol_config(target, orch.RunContext(DAG_ID, "r", conf={"config": {"engine": "builtin"}}))
    # the TradeMaster DAG is untouched: the env layer decides there
    assert orch.symbol_config(target, orch.RunContext(orch.DAG_ID, "r")).engine == "builtin"


# --- airflow dags test --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_shared_data()
    env = {"TRADEFLOW_TASK_RETRIES": "0", "TRADEFLOW_LOG_LEVEL": "INFO", "FINAGENT_BACKEND": str(STUB_BACKEND)}
    with airflow_stack(tmp_path_factory.mktemp("finagent_dag"), env=env) as stack:
        yield stack


def _dag_test(stack, conf):
    result = stack.home.dags_test(DAG_ID, conf=conf, env=stack.env)
    print(f"airflow dags test {DAG_ID} {json.dumps(conf)}: rc={result.returncode} in {result.seconds:.1f}s")
    assert result.run_id, result.tail()
    return result


def _symbol_runs(stack, airflow_run_id):
    (parent,) = stack.client.search_runs([stack.experiment_id], filter_string=(
        f"tags.`tradeflow.run_level` = 'dag_run' and tags.`tradeflow.airflow_run_id` = '{airflow_run_id}'"))
    children = stack.client.search_runs([stack.experiment_id], order_by=["attributes.start_time ASC"],
                                        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children


def _group_states(states, group: str) -> set[str]:
    """The states of a group's mapped task (skipped by the branch before or after expansion)."""
    found = {state for (task_id, _), state in states.items() if task_id == f"{group}.run_symbol"}
    assert found, f"no {group}.run_symbol task instance in {states}"
    return found


def _stages(run) -> set[str]:
    return {k.split(".")[2] for k in run.data.tags if k.startswith("tradeflow.stage.") and k.endswith(".run_id")}


@pytest.fixture(scope="module")
def both_aapl(stack):
    result = _dag_test(stack, {"symbol": "AAPL", "mode": "both"})
    assert result.ok, result.tail()
    return result


@pytest.mark.slow
def test_mode_both_trains_then_infers_reviews_and_persists(stack, both_aapl):
    parent, children = _symbol_runs(stack, both_aapl.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["tradeflow.dag_id"] == DAG_ID
    assert [c.data.params["cfg.mode"] for c in children] == ["train_backtest", "inference"]
    assert [_stages(c) for c in children] == [{"train_backtest"}, {"inference", "review", "persist"}]
    assert all(c.info.status == "FINISHED" and c.data.params["cfg.engine"] == "finagent" for c in children)
    train = stack.client.get_run(children[0].data.tags["tradeflow.stage.train_backtest.run_id"])
    assert train.data.tags["tradeflow.model_name"] == "finagent_AAPL"
    assert {"test_total_return", "test_benchmark_total_return", "upstream_rule_test_total_return"} <= set(train.data.metrics)
    review_id = children[1].data.tags["tradeflow.stage.review.run_id"]
    from pathlib import Path

    local = Path(stack.client.download_artifacts(review_id, "autogen_conversation.jsonl"))
    lines = [json.loads(line) for line in local.read_text().splitlines()]
    assert [line["agent"] for line in lines][:5] == ["user", "forecaster", "technical_analyst", "risk_reviewer",
                                                      "decision_maker"]
    states = stack.home.task_states(DAG_ID, both_aapl.run_id)
    assert states[("train_backtest.run_symbol", 0)] == "success" and states[("inference.run_symbol", 0)] == "success"
    signals = [a for a in stack.server.artifacts() if a.get("execution_id") == both_aapl.run_id and a["type"] == "signal"]
    assert [s["symbol"] for s in signals] == ["AAPL"]


@pytest.mark.slow
def test_mode_inference_skips_training_and_uses_the_registered_model(stack, both_aapl):
    result = _dag_test(stack, {"symbol": "AAPL", "mode": "inference"})
    assert result.ok, result.tail()
    _, children = _symbol_runs(stack, result.run_id)
    assert [_stages(c) for c in children] == [{"inference", "review", "persist"}]
    states = stack.home.task_states(DAG_ID, result.run_id)
    assert _group_states(states, "train_backtest") == {"skipped"} and states[("inference.run_symbol", 0)] == "success"


@pytest.mark.slow
def test_mode_train_backtest_skips_inference_and_a_foreign_engine_fails_clearly(stack):
    result = _dag_test(stack, {"symbol": "MSFT", "mode": "train_backtest", "config": {"engine": "builtin"}})
    assert result.returncode != 0
    assert "MSFT: finagent_autogen_pipeline_workflow runs engine=finagent" in result.output
    states = stack.home.task_states(DAG_ID, result.run_id)
    assert states[("train_backtest.run_symbol", 0)] == "failed"
    assert _group_states(states, "inference") == {"skipped"} and states[("finalize", -1)] == "failed"
    parent, children = _symbol_runs(stack, result.run_id)
    assert parent.info.status == "FAILED" and [c.info.status for c in children] == ["FAILED"]


@pytest.mark.slow
def test_an_engine_that_is_not_installed_fails_the_task_at_once_without_retries(tmp_path_factory):
    """Upstream FinAgent absent (no FINAGENT_BACKEND): with retries configured the task still ends
    on its first try, naming the cause, instead of three tries and their retry waits."""
    require_shared_data()
    env = {"TRADEFLOW_TASK_RETRIES": "2", "TRADEFLOW_RETRY_DELAY_S": "60", "TRADEFLOW_LOG_LEVEL": "INFO"}
    with airflow_stack(tmp_path_factory.mktemp("finagent_missing"), env=env) as missing:
        result = _dag_test(missing, {"symbol": "AAPL", "mode": "train_backtest"})
        assert result.returncode != 0
        states = missing.home.task_states(DAG_ID, result.run_id)
        assert states[("train_backtest.run_symbol", 0)] == "failed", states
        assert "not retried: " in result.output and "finagent" in result.output.lower()
        assert result.seconds < 60 + 60, f"{result.seconds:.0f} s: a retry wait happened"  # no 60 s retry delay
        parent, children = _symbol_runs(missing, result.run_id)
        assert [c.info.status for c in children] == ["FAILED"]  # one attempt
