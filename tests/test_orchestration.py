"""``tradeflow.orchestration`` and the pipeline DAG file, in seconds (no ``airflow dags test``).

The DAG file (import with the network blocked, import time, structure), target resolution against
the real WebUI contract server, config layering, the DAG-run parent run and ``finalize``'s verdict on
a real MLflow store, and Databricks scale-out against a loopback stand-in of the Jobs API. The same
DAG run end to end through ``airflow dags test`` is ``tests/test_dag.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.fake_databricks import FakeDatabricks
from tests.support.webui import WebUIServer
from tradeflow import orchestration as orch
from tradeflow.errors import ConfigError
from tradeflow.names import SYMBOL_PATTERN

DAG_FILE = REPO / "dags" / "trademaster_autogen_pipeline_workflow.py"
DAG_ID = orch.DAG_ID
HEAVY_MODULES = ("mlflow", "pandas", "numpy", "torch", "requests", "tradeflow.webui", "tradeflow.runs.projects",
                 "tradeflow.runs.tracking", "airflow.providers.databricks")


# --- the DAG file ---------------------------------------------------------------------------

_IMPORT_PROBE = textwrap.dedent(r"""
    import importlib.util, json, socket, statistics, sys, time

    calls = []
    def blocked(*args, **kwargs):
        calls.append(repr(args)[:200])
        raise OSError("network blocked by test_dag")
    socket.socket.connect = blocked
    socket.socket.connect_ex = blocked
    socket.create_connection = blocked
    socket.getaddrinfo = blocked

    import airflow.sdk  # the warm interpreter: Airflow's own import is not the DAG file's cost
    before = set(sys.modules)
    calls.clear()

    def load(index):
        spec = importlib.util.spec_from_file_location(f"tradeflow_dag_{index}", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    times = []
    for index in range(9):
        started = time.perf_counter()
        module = load(index)
        times.append(time.perf_counter() - started)
    dag = module.workflow
    run_symbol = dag.task_dict["run_symbol"]
    print("RESULT " + json.dumps({
        "calls": calls,
        "first_s": times[0],
        "median_s": statistics.median(times[1:]),
        "new_heavy": sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("mlflow", "pandas", "numpy", "torch", "requests")
                            or m in ("tradeflow.webui", "tradeflow.runs.projects", "tradeflow.runs.tracking")
                            or m.startswith("airflow.providers.databricks")),
        "dag_id": dag.dag_id,
        "schedule": dag.schedule if dag.schedule is None or isinstance(dag.schedule, str) else repr(dag.schedule),
        "catchup": dag.catchup,
        "doc_md": dag.doc_md or "",
        "params": {key: dag.params.get_param(key).schema for key in dag.params.keys()},
        "param_defaults": {key: dag.params[key] for key in dag.params.keys()},
        "tasks": sorted(dag.task_dict),
        "upstream": {t: sorted(dag.task_dict[t].upstream_task_ids) for t in dag.task_dict},
        "finalize_trigger_rule": getattr(dag.task_dict["finalize"].trigger_rule, "value", dag.task_dict["finalize"].trigger_rule),
        "run_symbol_mapped": type(run_symbol).__name__,
        "max_active_tis_per_dagrun": run_symbol.max_active_tis_per_dagrun,
        "retries": run_symbol.retries,
        "retry_exponential_backoff": run_symbol.retry_exponential_backoff,
        "execution_timeout_s": run_symbol.execution_timeout.total_seconds(),
        "resolve_retries": dag.task_dict["resolve_targets"].retries,
        "max_active_runs": dag.max_active_runs,
    }))
""")


def _probe_dag_file(extra_env: dict[str, str] | None = None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEFLOW_", "AIRFLOW"))}
    env.update({"PYTHONPATH": str(REPO), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **(extra_env or {})})
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(DAG_FILE)], capture_output=True, text=True,
                          env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_dag_file_imports_fast_without_network_or_heavy_modules():
    probe = _probe_dag_file()
    assert probe["calls"] == [], f"the DAG file touched the network at import: {probe['calls']}"
    assert probe["new_heavy"] == [], f"heavy modules imported at parse time: {probe['new_heavy']}"
    print(f"DAG file import: first {probe['first_s'] * 1000:.1f} ms, then median {probe['median_s'] * 1000:.1f} ms")
    assert probe["median_s"] < 0.3, probe
    assert probe["first_s"] < 1.5, probe  # includes tradeflow.orchestration + tradeflow.config

    assert probe["dag_id"] == DAG_ID == "trademaster_autogen_pipeline_workflow"
    assert probe["schedule"] is None and probe["catchup"] is False and probe["max_active_runs"] == 1
    assert "# TradeMaster + AutoGen pipeline" in probe["doc_md"] and "docs/airflow.md" in probe["doc_md"]
    assert probe["tasks"] == ["finalize", "open_dag_run", "resolve_targets", "run_symbol"]
    assert probe["upstream"]["run_symbol"] == ["open_dag_run", "resolve_targets"]
    assert probe["upstream"]["finalize"] == ["open_dag_run", "resolve_targets", "run_symbol"]
    assert probe["finalize_trigger_rule"] == "all_done"
    assert probe["run_symbol_mapped"].endswith("MappedOperator")
    assert probe["max_active_tis_per_dagrun"] == 2
    assert probe["retries"] == 2 and probe["resolve_retries"] == 2 and probe["retry_exponential_backoff"] == 2.0
    assert probe["execution_timeout_s"] == 180 * 60

    params = probe["params"]
    assert set(params) == {"mode", "engine", "symbol", "max_symbols", "config", "force", "conid", "workflow_symbol_id"}
    assert params["mode"]["enum"] == ["both", "train_backtest", "inference"]
    assert params["engine"]["enum"] == [None, "builtin", "trademaster", "finagent"]
    assert probe["param_defaults"]["engine"] is None  # unset: the link config's or the default engine
    assert probe["param_defaults"]["mode"] == "both" and probe["param_defaults"]["force"] is False
    assert params["symbol"]["type"] == ["null", "string"] and params["symbol"]["pattern"] == SYMBOL_PATTERN
    from tradeflow.config import MAX_SYMBOLS

    assert (params["max_symbols"]["minimum"], params["max_symbols"]["maximum"]) == (1, MAX_SYMBOLS)
    assert params["config"]["type"] == "object" and params["force"]["type"] == "boolean"


def test_dag_settings_come_from_the_environment():
    settings = orch.DagSettings.from_env({})
    assert settings.schedule is None and settings.parallel_symbols == 2 and settings.retries == 2
    custom = orch.DagSettings.from_env({"TRADEFLOW_DAG_SCHEDULE": "0 10 * * 1-5", "TRADEFLOW_PARALLEL_SYMBOLS": "3",
                                        "TRADEFLOW_POOL": "trading", "TRADEFLOW_TASK_RETRIES": "0",
                                        "TRADEFLOW_SYMBOL_TIMEOUT_MIN": "30"})
    assert custom.schedule == "0 10 * * 1-5" and custom.retries == 0
    args = custom.symbol_task_args()
    assert args["max_active_tis_per_dagrun"] == 3 and args["pool"] == "trading"
    assert args["execution_timeout"].total_seconds() == 1800
    assert custom.default_args()["retry_exponential_backoff"] == 2.0
    assert orch.DagSettings.from_env({"TRADEFLOW_DAG_SCHEDULE": "none"}).schedule is None
    for bad in ({"TRADEFLOW_PARALLEL_SYMBOLS": "0"}, {"TRADEFLOW_PARALLEL_SYMBOLS": "two"},
                {"TRADEFLOW_TASK_RETRIES": "99"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            orch.DagSettings.from_env(bad)


def test_dag_id_matches_the_webui_client():
    from tradeflow.webui import DAG_ID as WEBUI_DAG_ID

    assert WEBUI_DAG_ID == DAG_ID


# --- targets, config layering ------------------------------------------------------------------


def _ctx(conf=None, params=None, **kwargs) -> orch.RunContext:
    defaults = {"mode": "both", "symbol": None, "max_symbols": 50, "config": {}, "force": False}
    return orch.RunContext(dag_id=DAG_ID, run_id=kwargs.pop("run_id", "manual__2026-11-23T10:00:00+00:00"),
                           conf=conf or {}, params={**defaults, **(params or {})}, **kwargs)


def seed_batch(server: WebUIServer) -> None:
    """The WebUI of the batch scenario: 4 assigned, 3 that must not run."""
    server.seed_symbol("AAPL", priority=5, conid=265598,
                       config={"mode": "both", "seed": 7, "trademaster": {"hidden_dims": [16, 16]}})
    server.seed_symbol("ZZZZ", priority=4)  # not in the dj30 data: its pipeline fails
    server.seed_symbol("KO", priority=3, config={"not_a_parameter": 1})  # invalid link config
    server.seed_symbol("JPM", priority=1)  # cut by max_symbols=3
    server.seed_symbol("INTC", priority=9, enabled=False)
    server.seed_symbol("IBM", priority=9, is_active=False)
    server.seed_symbol("CSCO", priority=9, dag_id="some_other_dag")


def test_resolve_targets_batch_single_and_empty(webui_server, monkeypatch):
    monkeypatch.setenv("BACKEND_API_URL", webui_server.url)
    assert orch.resolve_targets(_ctx()) == []  # empty batch is an answer, not an error

    seed_batch(webui_server)
    targets = orch.resolve_targets(_ctx(conf={"max_symbols": 3}))
    assert [t["symbol"] for t in targets] == ["AAPL", "ZZZZ", "KO"]
    assert targets[0]["link_config"]["seed"] == 7 and targets[0]["conid"] == 265598
    assert [t["symbol"] for t in orch.resolve_targets(_ctx())] == ["AAPL", "ZZZZ", "KO", "JPM"]

    # the WebUI auto-trigger's conf; lower case accepted
    single = orch.resolve_targets(_ctx(conf={"symbol": "aapl", "conid": 265598, "workflow_symbol_id": 1}))
    assert single == [{"symbol": "AAPL", "link_config": targets[0]["link_config"], "conid": 265598,
                       "workflow_symbol_id": 1, "priority": None}]
    assert orch.resolve_targets(_ctx(conf={"symbol": "NVDA"}))[0]["link_config"] is None  # unknown to the WebUI
    assert orch.resolve_targets(_ctx(conf={"symbol": "BRK.B"}))[0]["symbol"] == "BRK.B"  # WebUI refuses it: 400

    monkeypatch.delenv("BACKEND_API_URL")
    assert orch.resolve_targets(_ctx(conf={"symbol": "MSFT"}))[0]["link_config"] is None  # works without a backend
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="BACKEND_API_URL is not set"):
        orch.resolve_targets(_ctx())


def test_unreachable_backend_fails_the_task(webui_server, monkeypatch):
    from tradeflow.webui import WebUIError

    monkeypatch.setenv("BACKEND_API_URL", webui_server.url)
    webui_server.stop()
    with pytest.raises(WebUIError, match="unreachable"):  # after the client's own retries
        orch.resolve_targets(_ctx())


def test_config_layers_defaults_env_link_conf(monkeypatch):
    monkeypatch.setenv("TRADEFLOW_SEED", "3")
    monkeypatch.setenv("TRADEFLOW_EPOCHS", "2")
    monkeypatch.setenv("TRADEFLOW_LEARNING_RATE", "0.01")
    target = {"symbol": "AAPL", "link_config": {"seed": 7, "mode": "inference", "trademaster": {"epochs": 4}}}

    cfg = orch.symbol_config(target, _ctx(conf={"config": {"seed": 11}}))
    assert (cfg.seed, cfg.trademaster.epochs, cfg.trademaster.learning_rate, cfg.mode) == (11, 4, 0.01, "inference")
    assert cfg.trademaster.backward_num_day == 10  # default
    # the form's default mode (params) does not override the link; an explicit conf mode does
    assert orch.symbol_config(target, _ctx(params={"mode": "both"})).mode == "inference"
    assert orch.symbol_config(target, _ctx(conf={"mode": "both"})).mode == "both"
    # engine: a top-level trigger param like mode, validated like every config value
    assert orch.symbol_config(target, _ctx(conf={"engine": "finagent"})).engine == "finagent"
    assert orch.symbol_config(target, _ctx()).engine == "builtin"
    with pytest.raises(ConfigError, match="engine"):
        orch.symbol_config(target, _ctx(conf={"engine": "dqn"}))
    # caps clamp
    assert orch.symbol_config(target, _ctx(conf={"config": {"trademaster": {"epochs": 10_000}}})).trademaster.epochs == 50

    params = orch.pipeline_parameters(cfg, _ctx(task_id="run_symbol"), force=True)
    assert params == {"symbol": "AAPL", "mode": "inference", "execution_id": "manual__2026-11-23T10:00:00+00:00",
                      "force": "true", "dag_id": DAG_ID, "task_id": "run_symbol", "config": cfg.to_json()}

    with pytest.raises(ConfigError) as bad:
        orch.symbol_config({"symbol": "KO", "link_config": {"not_a_parameter": 1}}, _ctx())
    assert str(bad.value) == "WebUI link config of KO: unknown parameter 'not_a_parameter'"


# --- the DAG-run parent run and the final verdict ---------------------------------------------


def _child(client, parent: dict, symbol: str, status: str, reason: str | None = None) -> str:
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    tags = {MLFLOW_PARENT_RUN_ID: parent["run_id"], "tradeflow.symbol": symbol}
    if reason:
        tags["tradeflow.failure_reason"] = reason
    run = client.create_run(parent["experiment_id"], tags=tags)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_parent_run_symbol_failures_and_finalize(tracking_store):
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ctx = _ctx(conf={"max_symbols": 4})
    targets = [{"symbol": s, "link_config": {}} for s in ("AAPL", "ZZZZ", "MSFT")]
    targets.append({"symbol": "KO", "link_config": {"not_a_parameter": 1}})

    with pytest.raises(AirflowSkipException, match="empty batch"):
        orch.open_dag_run([], ctx)
    parent = orch.open_dag_run(targets, ctx)
    assert orch.open_dag_run(targets, ctx) == parent  # a task retry finds the same parent
    run = client.get_run(parent["run_id"])
    assert run.info.status == "RUNNING"
    assert run.data.tags["tradeflow.run_level"] == "dag_run"
    assert run.data.tags["tradeflow.airflow_run_id"] == ctx.run_id == run.data.tags["tradeflow.execution_id"]
    assert run.data.tags["tradeflow.dag_id"] == DAG_ID
    assert run.data.tags["tradeflow.symbol_count"] == "4" and run.data.tags["tradeflow.symbols"] == "AAPL,ZZZZ,MSFT,KO"

    # an invalid link config fails only KO, at once (no retry), and is visible in MLflow
    with pytest.raises(AirflowFailException, match="KO: WebUI link config of KO: unknown parameter"):
        orch.run_symbol(targets[3], parent, _ctx(task_id="run_symbol", map_index=3))

    aapl = _child(client, parent, "AAPL", "FINISHED")
    _child(client, parent, "ZZZZ", "FAILED", "data: no rows for ZZZZ")  # try 1
    _child(client, parent, "ZZZZ", "FAILED", "data: no rows for ZZZZ (again)")  # try 2: the latest counts
    msft = _child(client, parent, "MSFT", "FINISHED")  # MLflow says fine, but its task failed afterwards
    results = [{"symbol": "AAPL", "run_id": aapl, "status": "FINISHED"}]
    with pytest.raises(AirflowFailException) as failed:
        orch.finalize(targets, parent, results, ctx, task_states={0: "success", 1: "failed", 2: "failed", 3: "failed"})
    message = str(failed.value)
    assert message.startswith("3 of 4 symbol(s) failed: ZZZZ: data: no rows for ZZZZ (again); MSFT: task run_symbol[2]")
    assert "KO: WebUI link config of KO: unknown parameter 'not_a_parameter'" in message and "AAPL" not in message
    run = client.get_run(parent["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["tradeflow.failed_symbols"] == "ZZZZ,MSFT,KO"
    assert run.data.tags["tradeflow.succeeded_symbols"] == "AAPL"
    assert run.data.metrics["symbols_failed"] == 3
    # the description reads as the batch: one row per symbol, its outcome, a link to its run
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"**DAG run** `{ctx.run_id}` of `{DAG_ID}`: 4 symbol(s), **3 failed**.")
    assert f"| AAPL | finished | [" in note and f"/runs/{aapl})" in note
    assert "| ZZZZ | FAILED: data: no rows for ZZZZ (again) |" in note
    assert "| KO | FAILED: " in note and "WebUI link config of KO: unknown parameter" in note
    del msft

    # without task states (older SDK), XComs and MLflow still decide; all fine -> FINISHED
    ok_ctx = _ctx(run_id="manual__ok")
    ok_parent = orch.open_dag_run(targets[:1], ok_ctx)
    run_id = _child(client, ok_parent, "AAPL", "FINISHED")
    summary = orch.finalize(targets[:1], ok_parent, [{"symbol": "AAPL", "run_id": run_id, "status": "FINISHED"}], ok_ctx)
    assert summary == {"symbols": 1, "failed": [], "succeeded": ["AAPL"]}
    assert client.get_run(ok_parent["run_id"]).info.status == "FINISHED"
    assert "1 symbol(s), all finished." in client.get_run(ok_parent["run_id"]).data.tags["mlflow.note.content"]
    # a symbol whose task died before any MLflow run
    lost_parent = orch.open_dag_run(targets[:1], _ctx(run_id="manual__lost"))
    with pytest.raises(AirflowFailException, match="AAPL: no pipeline run was recorded"):
        orch.finalize(targets[:1], lost_parent, [], _ctx(run_id="manual__lost"))

    # empty batch: success with a message; unresolved targets / no parent: fail
    assert "empty batch" in orch.finalize([], None, [], ctx)["message"]
    with pytest.raises(AirflowFailException, match="resolve_targets failed"):
        orch.finalize(None, None, [], ctx)
    with pytest.raises(AirflowFailException, match="open_dag_run failed"):
        orch.finalize(targets, None, [], ctx)


# --- Databricks --------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_git_source_is_the_current_commit(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "MLproject").write_text("name: x\n")
    _git(repo, "add", "MLproject")
    _git(repo, "commit", "-q", "-m", "one")
    _git(repo, "remote", "add", "origin", "git@github.com:acme/tradeflow.git")
    head = _git(repo, "rev-parse", "HEAD")
    assert orch.git_source(repo, {}) == {"git_url": "https://github.com/acme/tradeflow.git",
                                         "git_provider": "gitHub", "git_commit": head}
    (repo / "MLproject").write_text("name: y\n")  # dirty: still the commit (a warning says so)
    assert orch.git_source(repo, {})["git_commit"] == head
    assert orch.git_source(repo, {"TRADEFLOW_GIT_COMMIT": "abc123", "TRADEFLOW_GIT_URL": "https://git.example.com/r.git",
                                  "TRADEFLOW_GIT_PROVIDER": "gitLab"}) == {
        "git_url": "https://git.example.com/r.git", "git_provider": "gitLab", "git_commit": "abc123"}
    with pytest.raises(orch.OrchestrationError, match="TRADEFLOW_GIT_PROVIDER"):
        orch.git_source(repo, {"TRADEFLOW_GIT_URL": "https://git.example.com/r.git"})
    with pytest.raises(orch.OrchestrationError, match="TRADEFLOW_GIT_COMMIT"):
        orch.git_source(tmp_path / "nowhere", {})


@pytest.mark.parametrize("life, result, status", [
    ("TERMINATED", "SUCCESS", "FINISHED"), ("TERMINATED", "FAILED", "FAILED"), ("TERMINATED", "TIMEDOUT", "FAILED"),
    ("TERMINATED", "CANCELED", "FAILED"), ("INTERNAL_ERROR", "FAILED", "FAILED"), ("SKIPPED", "", "FAILED"),
])
def test_databricks_result_states_map(life, result, status):
    mapped, reason = orch.databricks_outcome(life, result, "message\nwith lines")
    assert mapped == status
    assert (reason is None) == (status == "FINISHED")
    if reason:
        assert reason == f"Databricks run ended {life}/{result or '-'}: message with lines"


def test_databricks_executor_submits_the_project_and_maps_the_result(tracking_store, monkeypatch):
    """run_symbol with TRADEFLOW_EXECUTOR=databricks against a loopback Jobs API that records the
    payload and plays the remote run (writing its MLflow child run like the cluster would)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ctx = _ctx(conf={"symbol": "AAPL", "mode": "inference", "config": {"seed": 11}}, task_id="run_symbol",
               map_index=0, try_number=2)
    target = {"symbol": "AAPL", "link_config": {"trademaster": {"epochs": 2}}}
    parent = orch.open_dag_run([target], ctx)
    remote = {"status": "FINISHED"}

    def play_remote_run(body: dict):
        args = body["tasks"][0]["spark_python_task"]["parameters"]
        assert args[args.index("--parent-run-id") + 1] == parent["run_id"]
        _child(client, parent, "AAPL", remote["status"], None if remote["status"] == "FINISHED" else "stage review failed")
        return None

    try:
        head = _git(REPO, "rev-parse", "HEAD")
    except subprocess.CalledProcessError:  # a checkout without commits: say which commit to run
        head = "0123456789abcdef0123456789abcdef01234567"
        monkeypatch.setenv("TRADEFLOW_GIT_COMMIT", head)
    with FakeDatabricks(on_submit=play_remote_run, running_polls=2) as api:
        monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_DEFAULT", api.connection_json())
        monkeypatch.setenv("TRADEFLOW_EXECUTOR", "databricks")
        monkeypatch.setenv("TRADEFLOW_DATABRICKS_POLL_S", "0.05")
        monkeypatch.setenv("TRADEFLOW_GIT_URL", "https://github.com/acme/tradeflow.git")
        monkeypatch.setenv("TRADEFLOW_EPOCHS", "1")

        result = orch.run_symbol(target, parent, ctx)
        assert result["status"] == "FINISHED" and result["executor"] == "databricks" and result["try_number"] == 2
        child = client.get_run(result["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent["run_id"]
        assert child.data.tags["tradeflow.databricks_run_id"] == "1001"
        assert child.data.tags["tradeflow.airflow_try_number"] == "2"

        body = api.submitted[0]
        assert body["git_source"] == {"git_url": "https://github.com/acme/tradeflow.git", "git_provider": "gitHub",
                                      "git_commit": head}
        assert body["run_name"] == f"tradeflow AAPL {ctx.run_id}" and len(body["idempotency_token"]) == 64
        assert not any(key.startswith("_") for key in body)
        (task,) = body["tasks"]
        assert task["spark_python_task"]["python_file"] == "deploy/databricks/run_pipeline.py"
        assert task["spark_python_task"]["source"] == "GIT"
        assert (REPO / task["spark_python_task"]["python_file"]).is_file()
        cluster = task["new_cluster"]
        assert cluster["spark_version"] and cluster["node_type_id"] and cluster["num_workers"] == 0
        assert cluster["spark_env_vars"]["MLFLOW_TRACKING_URI"] == "databricks"
        assert all(v.startswith("{{secrets/") for k, v in cluster["spark_env_vars"].items()
                   if "TOKEN" in k or "KEY" in k), "secrets must be secret references"
        args = task["spark_python_task"]["parameters"]
        assert args[:6] == ["--entry-point", "pipeline", "--experiment-id", parent["experiment_id"],
                            "--parent-run-id", parent["run_id"]]
        params = dict(item.split("=", 1) for item in args[7::2])
        assert set(args[6::2]) == {"-P"}
        assert {k: params[k] for k in ("symbol", "mode", "execution_id", "force", "dag_id", "task_id")} == {
            "symbol": "AAPL", "mode": "inference", "execution_id": ctx.run_id, "force": "false", "dag_id": DAG_ID,
            "task_id": "run_symbol"}
        config = json.loads(params["config"])
        assert (config["seed"], config["trademaster"]["epochs"], config["mode"]) == (11, 2, "inference")
        assert api.authorizations[0] == "Bearer fake-databricks-token"

        # the remote run fails: the task raises (Airflow retries it) naming the symbol and the state
        remote["status"] = "FAILED"
        api.outcome = ("TERMINATED", "FAILED", "Task pipeline failed with message: stage review failed")
        with pytest.raises(RuntimeError, match=r"AAPL: pipeline FAILED \(run \w+\): Databricks run ended "
                                               r"TERMINATED/FAILED: Task pipeline failed"):
            orch.run_symbol(target, parent, ctx.__class__(**{**ctx.__dict__, "try_number": 3}))
        assert len(api.submitted) == 2 and api.submitted[1]["idempotency_token"] != body["idempotency_token"]
        assert api.cancelled == []


def test_databricks_runner_script_parses_its_arguments():
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "databricks" / "run_pipeline.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--parent-run-id" in proc.stdout


def test_the_conf_keys_refused_as_unknown_are_exactly_the_dags_params():
    """``check_conf`` refuses what is not a trigger param (issue 28): the two lists are one list."""
    from tradeflow.orchestration.context import CONF_KEYS

    assert set(orch.DagSettings.from_env({}).params()) == set(CONF_KEYS)
