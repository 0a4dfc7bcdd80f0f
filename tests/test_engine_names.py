"""Two engines trained for one symbol never serve, gate or alias each other's models.

Both engines train AAPL (dj30) into one real SQLite store: ``builtin`` (one small epoch) and
``finagent`` on the interface double of upstream (``tests/support/finagent_stub``, what CI has).
Each registers under its own name (``builtin_AAPL``, ``finagent_AAPL``); what inference resolves
and loads for each config is that engine's model; an explicit URI of the other engine's model is
refused in one line; the gate's champion replay treats another engine's champion as absent. The
last test is a registry written before per-engine names: a builtin version under
``trademaster_AAPL`` is never served to ``engine=trademaster``.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DJ30_SOURCE, REPO, require_shared_data
from tradeflow.config import resolve_config

pytestmark = pytest.mark.slow

STUB_BACKEND = REPO / "tests" / "support" / "finagent_stub" / "src" / "backend"
COMMON = {"symbol": "AAPL", "data_source": DJ30_SOURCE, "trademaster": {"epochs": 1, "hidden_dims": "32,32"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One store, both engines trained for AAPL (in-process: the step as the entry point runs it)."""
    require_shared_data()
    import mlflow

    from tests.support.stores import sqlite_store
    from tradeflow.engines.finagent import compat
    from tradeflow.steps.train_backtest import train_backtest_step

    mp = pytest.MonkeyPatch()
    uri = sqlite_store(tmp_path_factory.mktemp("store"))
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv(compat.ENV_BACKEND, str(STUB_BACKEND))
    mlflow.set_tracking_uri(uri)
    compat._once.reset()
    try:
        cfgs = {engine: resolve_config({**COMMON, "engine": engine}) for engine in ("builtin", "finagent")}
        summaries = {engine: train_backtest_step(cfg) for engine, cfg in cfgs.items()}
        yield cfgs, summaries
    finally:
        compat._once.reset()
        mlflow.set_tracking_uri(None)
        mp.undo()


def test_each_engine_registers_under_its_own_name_and_inference_serves_its_own(trained):
    from tradeflow.model import load_logged_model, resolve_model

    cfgs, summaries = trained
    assert {e: s["registered_model"] for e, s in summaries.items()} == {"builtin": "builtin_AAPL",
                                                                        "finagent": "finagent_AAPL"}
    client = MlflowClient()
    for engine, cfg in cfgs.items():
        resolved = resolve_model(cfg, None, client)  # what inference resolves without a model_uri
        assert resolved.registered_name == f"{engine}_AAPL"
        assert resolved.training_run_id == summaries[engine]["run_id"]
        assert client.get_model_version(resolved.registered_name, resolved.version).tags["engine"] == engine
        served = load_logged_model(resolved.uri).unwrap_python_model()
        assert served.meta["engine"] == engine
        assert type(served.agent).__module__.startswith(f"tradeflow.engines.{engine}.")


def test_each_model_records_the_implementation_that_produced_it(trained):
    """The FinAgent model trained on the interface double says so, everywhere a reader looks."""
    cfgs, summaries = trained
    client = MlflowClient()
    expected = {"builtin": ("builtin", "builtin (tradeflow env + stable-baselines3"),
                "finagent": ("test_double", "test double tests/support/finagent_stub/src/backend (NOT upstream")}
    for engine, (implementation, label) in expected.items():
        version = client.get_model_version(f"{engine}_AAPL", summaries[engine]["model_version"])
        run = client.get_run(summaries[engine]["run_id"])
        assert version.tags["implementation"] == implementation
        assert run.data.tags["tradeflow.engine_implementation"].startswith(label)
        assert label in version.description and label in run.data.tags["mlflow.note.content"]
    finagent_run = client.get_run(summaries["finagent"]["run_id"]).data.tags
    assert "rule search" in finagent_run["mlflow.runName"] and " ep" not in finagent_run["mlflow.runName"]
    (agent_line,) = [line for line in finagent_run["mlflow.note.content"].splitlines() if line.startswith("**Agent**")]
    assert "no epochs, no RL" in agent_line and "dqn" not in agent_line.lower() and "epoch " not in agent_line


def test_an_explicit_uri_of_the_other_engine_is_refused_in_one_line(trained):
    from tradeflow.model import EngineMismatch, resolve_model

    cfgs, summaries = trained
    MlflowClient().set_registered_model_alias("finagent_AAPL", "champion", summaries["finagent"]["model_version"])
    for uri in (f"models:/finagent_AAPL/{summaries['finagent']['model_version']}", "models:/finagent_AAPL@champion",
                f"runs:/{summaries['finagent']['run_id']}/model"):
        with pytest.raises(EngineMismatch) as caught:
            resolve_model(cfgs["builtin"], uri)
        message = str(caught.value)
        assert "\n" not in message and "'finagent', not 'builtin'" in message and "-P engine=finagent" in message


def test_the_gate_never_compares_a_champion_of_another_engine(trained):
    from tradeflow.features import compute_features, split_for_run
    from tradeflow.data import load_market_data
    from tradeflow.model import champion_return_on

    cfgs, summaries = trained
    for engine in ("builtin", "finagent"):  # champions whatever the gate said (here: both replayable)
        MlflowClient().set_registered_model_alias(f"{engine}_AAPL", "champion", summaries[engine]["model_version"])
    frame = split_for_run(compute_features(load_market_data(cfgs["builtin"]).bars), cfgs["builtin"]).valid
    # its own champion replays on the builtin validation window ...
    assert champion_return_on("builtin_AAPL", "champion", frame, cfgs["builtin"]) is not None
    # ... another engine's champion (what a shared name used to hand the gate) counts as absent
    assert champion_return_on("finagent_AAPL", "champion", frame, cfgs["builtin"]) is None


def test_a_builtin_version_under_the_old_shared_name_is_not_served_to_trademaster(trained):
    """Before per-engine names, builtin models were registered as ``trademaster_<SYMBOL>``."""
    from tradeflow.model import EngineMismatch, register_model, resolve_model

    cfgs, summaries = trained
    register_model(summaries["builtin"]["model_uri"], "trademaster_AAPL", "champion",
                   tags={"engine": "builtin", "symbol": "AAPL"})
    upstream_cfg = resolve_config({**COMMON, "engine": "trademaster"})
    assert upstream_cfg.registered_model_name == "trademaster_AAPL"
    with pytest.raises(EngineMismatch, match="trained by engine 'builtin', not 'trademaster'"):
        resolve_model(upstream_cfg, None)
    # the builtin config still loads it by URI (what the migration in docs/engine.md relies on)
    assert resolve_model(cfgs["builtin"], "models:/trademaster_AAPL/1").registered_name == "trademaster_AAPL"
