"""The three IBKR DAGs under real ``airflow dags test`` (slow): a temp AIRFLOW_HOME (SQLite, migrated
once per module), the Client Portal paper stand-in and the WebUI contract server on 127.0.0.1,
a real MLflow SQLite store, real dj30 bars, the rules reviewer (offline).

1. Load + end to end + duplicate submission, in one scenario to keep CI short: three
   ``ibkr_trading_strategy`` runs at once (separate Airflow homes, one gateway), each from bars to a
   portfolio update; the gateway never answers after accepting the order, whose task is killed by
   its execution timeout and retried while the other runs wait on the allocation lock: every run
   finds the order by its cOID (one per strategy, session, symbol, intent). One order (issue 25:
   concurrent runs once each placed their own and exceeded the caps), MLflow and WebUI complete.
2. ``ibkr_market_data_collection`` and ``ibkr_portfolio_monitoring``, side by side.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import DJ30_TEST, DJ30_VALID, require_shared_data
from tests.support.airflow_env import AirflowHome
from tests.support.ibkr_gateway import IBKRGateway
from tests.support.webui import WebUIServer, trademaster_bars

pytestmark = pytest.mark.slow

AS_OF = "2021-12-15T15:00:00Z"
EXPERIMENT = "ibkr_trading_workflows"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> AirflowHome:
    require_shared_data()
    return AirflowHome.create(tmp_path_factory.mktemp("ibkr-airflow"))


@pytest.fixture(scope="module")
def bars():
    return {"AAPL": pd.concat([trademaster_bars(DJ30_VALID, "AAPL"), trademaster_bars(DJ30_TEST, "AAPL")])}


@pytest.fixture
def store(tmp_path) -> str:
    """A fresh MLflow store with the experiment, created here before any Airflow process starts."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    return uri


def write_strategy(path: Path, **overrides) -> Path:
    raw = {"name": "test_swing", "symbols": ["AAPL"], "schedule": {"trading": None, "market_data": None, "monitoring": None},
           "airflow": {"retries": 1, "retry_delay_s": 0, "execution_timeout_s": 120, "sensor_poke_s": 1,
                       "sensor_timeout_s": 30},
           "tracking": {"experiment": EXPERIMENT}}
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(raw))
    return path


def env_for(gateway: IBKRGateway, webui: WebUIServer, store: str, strategy: Path) -> dict[str, str]:
    return {"IBKR_API_URL": gateway.url, "BACKEND_API_URL": webui.url, "MLFLOW_TRACKING_URI": store,
            "IBKR_STRATEGY_FILE": str(strategy), "IBKR_STATE_DIR": str(strategy.parent / "ibkr-state")}


def workflow_run(store: str, dag_id: str, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`tradeflow.dag_id` = '{dag_id}'")
    matching = [r for r in runs if r.data.tags.get("tradeflow.execution_id") == run_id]
    assert len(matching) == 1, [r.data.tags for r in runs]
    return client, matching[0]


def test_concurrent_trading_runs_place_one_order_for_the_session_despite_faults(home, bars, store, tmp_path):
    """Three trading DAG runs at once, each end to end (bars -> signal -> risk -> allocation ->
    portfolio update), against one gateway that never answers after accepting the order: that
    run's order task is killed by its execution timeout and retried. One order, no duplicate."""
    strategy = write_strategy(tmp_path / "s.yaml", airflow={"order_timeout_s": 15}, broker={"timeout_s": 60},
                              risk={"max_position_pct": 0.5, "max_total_exposure_pct": 1.0})
    runs = 3
    homes = [home] + [home.clone(tmp_path / f"home{i}") for i in range(1, runs)]
    results = [None] * runs
    with IBKRGateway(bars=bars) as gateway, WebUIServer() as webui:
        gateway.set_fault("hang_after_accept", times=1, delay_s=90.0)
        env = env_for(gateway, webui, store, strategy)

        def run(i: int) -> None:
            results[i] = homes[i].dags_test("ibkr_trading_strategy", conf={"as_of": AS_OF}, env=env, timeout=900)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(runs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        orders = gateway.orders()
        positions = gateway.positions()
        artifacts = webui.artifacts()
    for result in results:
        assert result is not None and result.ok, result.tail() if result else "no result"
    print("concurrent trading dags test: " + ", ".join(f"{r.seconds:.1f} s" for r in results))
    run_ids = [r.run_id for r in results]
    assert len(set(run_ids)) == runs

    parents = [o for o in orders if o["parentId"] is None]
    assert len(parents) == 1, [o["order_ref"] for o in parents]
    assert parents[0]["status"] == "Filled" and parents[0]["order_ref"].startswith("tf-AAPL-OL-")
    children = [o for o in orders if o["parentId"] is not None]
    assert {o["origOrderType"] for o in children} <= {"STP", "LMT"} and "STP" in {o["origOrderType"] for o in children}
    assert all(o["side"] == "SELL" for o in children)
    assert positions == {"AAPL": parents[0]["totalSize"]}

    already = []
    for home_i, result in zip(homes, results):
        states = home_i.task_states("ibkr_trading_strategy", result.run_id)
        assert all(state == "success" for state in states.values()), states
        client, run = workflow_run(store, "ibkr_trading_strategy", result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["strategy"] == "test_swing" and run.data.params["risk.max_position_pct"] == "0.5"
        for key in ("AAPL.bars", "AAPL.rsi_14", "AAPL.signal_confidence", "AAPL.risk_quantity", "AAPL.order_quantity",
                    "portfolio.equity", "AAPL.market_data.seconds", "AAPL.order.seconds"):
            assert key in run.data.metrics, key
        assert run.data.metrics["portfolio.positions"] == 1
        already.append(run.data.metrics["AAPL.order_already_placed"])
        listed = {a.path for d in ("charts", "signals", "orders", "portfolio")
                  for a in client.list_artifacts(run.info.run_id, d)}
        assert {"charts/AAPL.png", "signals/AAPL.json", "orders/AAPL.json", "portfolio/positions.json"} <= listed
    # the killed attempt's retry and the other runs found the order by its cOID
    assert already.count(1.0) >= runs - 1 and set(already) <= {0.0, 1.0}

    signals = [a for a in artifacts if a["type"] == "signal"]
    assert sorted(a["execution_id"] for a in signals) == sorted(run_ids)
    for artifact in signals:
        assert artifact["signal_data"]["order"]["status"] == "Filled"
        assert artifact["signal_data"]["risk"]["approved"] is True
        assert artifact["signal_data"]["reasoning"].startswith("Order approved by risk")


def test_market_data_and_monitoring_dags(home, bars, store, tmp_path):
    """Both DAGs at once (two Airflow homes): each `airflow dags test` is mostly one busy core."""
    strategy = write_strategy(tmp_path / "s.yaml")
    homes = {"ibkr_market_data_collection": home, "ibkr_portfolio_monitoring": home.clone(tmp_path / "home2")}
    results = {}
    with IBKRGateway(bars=bars) as gateway, WebUIServer() as webui:
        env = env_for(gateway, webui, store, strategy)

        def run(dag_id: str) -> None:
            results[dag_id] = homes[dag_id].dags_test(dag_id, conf={"as_of": AS_OF}, env=env, timeout=600)

        threads = [threading.Thread(target=run, args=(dag_id,)) for dag_id in homes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert gateway.orders() == []  # neither DAG trades
    collected, monitored = results["ibkr_market_data_collection"], results["ibkr_portfolio_monitoring"]
    assert collected.ok, collected.tail()
    assert monitored.ok, monitored.tail()
    print(f"dags test, side by side: market data {collected.seconds:.1f} s, monitoring {monitored.seconds:.1f} s")
    client, run = workflow_run(store, "ibkr_market_data_collection", collected.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["AAPL.bars"] == 240
    assert {a.path for a in client.list_artifacts(run.info.run_id, "charts")} == {"charts/AAPL.png"}
    client, run = workflow_run(store, "ibkr_portfolio_monitoring", monitored.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["portfolio.equity"] == 1_000_000.0
