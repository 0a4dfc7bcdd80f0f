"""The IBKR workflow library against the Client Portal paper stand-in (a real loopback server):
config, client (auth, search, history, portfolio, orders with the reply flow), faults, paper-only
guard, idempotent placement (including a placing process killed after the broker accepted),
risk, sensors, operators (executed directly with a real MLflow store) and the DAG template.

The Airflow end-to-end runs (``airflow dags test``) are in tests/test_ibkr_dags.py (slow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.conftest import DJ30_TEST, DJ30_VALID, REPO, require_shared_data
from tests.support.ibkr_gateway import IBKRGateway
from tests.support.stores import sqlite_store, tracking_to
from tests.support.webui import trademaster_bars
from tradeflow.ibkr import client as cp
from tradeflow.ibkr import orders
from tradeflow.ibkr import workflow as wf
from tradeflow.ibkr.strategy import DEFAULT_STRATEGY_FILE, StrategyError, load_strategy, parse_strategy
from tradeflow.ibkr.risk import assess

AS_OF = "2021-12-15T15:00:00Z"  # a Wednesday, XNYS open


@pytest.fixture(scope="module")
def bars():
    require_shared_data()
    return {s: pd.concat([trademaster_bars(DJ30_VALID, s), trademaster_bars(DJ30_TEST, s)]) for s in ("AAPL", "MSFT")}


@pytest.fixture(scope="module")
def _module_store(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module (creating one costs seconds of migrations)."""
    return sqlite_store(tmp_path_factory.mktemp("ibkr-mlflow"), "ibkr_test")


@pytest.fixture
def ibkr_experiment(_module_store, monkeypatch):
    with tracking_to(_module_store, monkeypatch) as uri:
        yield uri


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    """Each test its own allocation lock and intent book (``tradeflow.ibkr.ledger``)."""
    monkeypatch.setenv("IBKR_STATE_DIR", str(tmp_path / "ibkr-state"))


@pytest.fixture
def gateway(bars, monkeypatch):
    with IBKRGateway(bars=bars) as gw:
        monkeypatch.setenv("IBKR_API_URL", gw.url)
        for name in ("IBKR_ACCOUNT_ID", "IBKR_ALLOW_LIVE", "IBKR_VERIFY_TLS"):
            monkeypatch.delenv(name, raising=False)
        yield gw


def strategy(**overrides):
    return parse_strategy({"name": "test_swing", "symbols": ["AAPL"], **overrides})


def client(**overrides) -> cp.ClientPortal:
    return wf.open_client(strategy(**overrides))


def ticket(gw: IBKRGateway, coid: str = "tf-AAPL-B-test", qty: int = 10, stop: float | None = 150.0) -> cp.OrderTicket:
    return cp.OrderTicket(symbol="AAPL", conid=gw.conid("AAPL"), side="BUY", quantity=qty, coid=coid, stop_price=stop)


def parents(gw: IBKRGateway) -> list[dict]:
    return [o for o in gw.orders() if o["parentId"] is None]


# --- config ---------------------------------------------------------------------------------------

def test_example_strategy_is_valid_and_paper():
    s = load_strategy(DEFAULT_STRATEGY_FILE)
    assert s.symbols == ("AAPL", "MSFT") and s.exchange == "XNYS"
    assert s.broker.allow_live is False and s.signal.review.provider == "rules"


@pytest.mark.parametrize("raw, fragment", [
    ({"name": "x", "symbols": ["AAPL"], "risk": {"max_risk_per_trade": 0.5}}, "risk.max_risk_per_trade"),
    ({"name": "x", "symbols": ["AAPL"], "exchange": "NOPE"}, "exchange: 'NOPE' is not an exchange_calendars"),
    ({"name": "x", "symbols": ["AAPL", "aapl"]}, "symbols: symbols are listed twice"),
    ({"name": "x", "symbols": ["AAPL"], "brokr": {}}, "brokr"),
    ({"name": "x", "symbols": ["AAPL"], "risk": {"max_position_pct": 0.9, "max_total_exposure_pct": 0.5}},
     "max_position_pct exceeds"),
])
def test_bad_strategy_is_one_line_naming_the_field(raw, fragment):
    with pytest.raises(StrategyError) as err:
        parse_strategy(raw, where="s.yaml")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unreadable_strategy_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(StrategyError, match="not valid YAML"):
        load_strategy(tmp_path / "bad.yaml")
    with pytest.raises(StrategyError, match="cannot read"):
        load_strategy(tmp_path / "missing.yaml")


# --- client: session, data, portfolio --------------------------------------------------------------

def test_auth_search_history_portfolio(gateway):
    with client() as c:
        assert c.ensure_authenticated()["authenticated"] is True
        conid = c.search("AAPL")
        assert conid == gateway.conid("AAPL") and isinstance(conid, int)  # the search answers a string
        data = c.history(conid, period="1y")
        assert len(data) > 200 and set(data[0]) >= {"t", "o", "h", "l", "c"}
        assert c.schedule("AAPL")[0]["schedules"][0]["tradingtimes"][0]["openingTime"] == "0930"
        account = c.trading_account()
        assert account == "DU1234567" and c.positions(account) == []
        assert c.summary(account)["netliquidation"] == 1_000_000.0
        with pytest.raises(cp.BrokerError, match="no contract|No symbol found"):
            c.search("ZZZZ")
    paths = [r["path"] for r in gateway.requests]
    assert paths.index("/v1/api/portfolio/accounts") < paths.index("/v1/api/portfolio/DU1234567/positions/0")


def test_not_authenticated_and_gateway_down(gateway, monkeypatch):
    gateway.set_fault("unauthenticated")
    with client() as c, pytest.raises(cp.NotAuthenticated, match="not authenticated"):
        c.ensure_authenticated()
    with client() as c, pytest.raises(cp.NotAuthenticated, match="401"):
        c.search("AAPL")
    gateway.set_fault(None)
    gateway.stop()
    monkeypatch.setattr(cp, "RETRY", cp.RetryPolicy(attempts=3, backoff_s=0.01))
    with client() as c, pytest.raises(cp.GatewayDown, match="cannot be reached .* is it running"):
        c.auth_status()


# --- client: orders --------------------------------------------------------------------------------

def test_order_with_two_confirmation_questions_fills_on_paper(bars, monkeypatch):
    with IBKRGateway(bars=bars, questions=2) as gw:
        monkeypatch.setenv("IBKR_API_URL", gw.url)
        with client() as c:
            result = c.place_order(ticket(gw))
        assert result.status == "Filled" and result.replies == ["o354", "o10331"] and not result.already_placed
        assert [o["order_ref"] for o in gw.orders()] == ["tf-AAPL-B-test", "tf-AAPL-B-test-SL"]
        assert gw.orders()[1]["status"] == "Submitted" and gw.orders()[1]["side"] == "SELL"  # the working stop
        assert gw.positions() == {"AAPL": 10.0}


def test_retry_after_success_finds_the_order(gateway):
    with client() as c:
        first = c.place_order(ticket(gateway))
    with client() as c:  # a new session, as a retried task has: the orders list warms up first
        again = c.place_order(ticket(gateway))
    assert again.already_placed and again.order_id == first.order_id
    assert len(parents(gateway)) == 1
    posts = [r for r in gateway.requests if r["path"].endswith("/orders") and r["method"] == "POST"]
    assert len(posts) == 1


def test_rejected_order_places_nothing(gateway):
    gateway.set_fault("reject_orders", message="Order rejected - reason: insufficient buying power")
    with client() as c, pytest.raises(cp.OrderRejected, match="insufficient buying power"):
        c.place_order(ticket(gateway))
    assert gateway.orders() == []


def test_500_after_accepting_is_resolved_by_cOID_not_resent(gateway):
    gateway.set_fault("error_after_accept", times=1)
    with client() as c:
        result = c.place_order(ticket(gateway))
    assert result.status == "Filled" and len(parents(gateway)) == 1


def test_reply_timeout_then_retry_places_exactly_one(gateway):
    gateway.set_fault("reply_timeout", delay_s=3.0)
    with wf.open_client(strategy(broker={"timeout_s": 1.0})) as c, pytest.raises(cp.OutcomeUnknown, match="retried safely"):
        c.place_order(ticket(gateway))
    assert gateway.orders() == []
    gateway.set_fault(None)
    time.sleep(2.5)  # the stalled reply lands on an expired reply id
    with client() as c:
        assert c.place_order(ticket(gateway)).status == "Filled"
    assert len(parents(gateway)) == 1


def test_concurrent_placements_of_one_cOID_place_one_order(gateway):
    results, errors = [], []

    def place():
        try:
            with client() as c:
                results.append(c.place_order(ticket(gateway)))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=place) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(parents(gateway)) == 1 and len({r.order_id for r in results}) == 1


_KILLED_PLACER = textwrap.dedent("""
    import sys
    from tradeflow.ibkr.client import ClientPortal, GatewaySettings, OrderTicket
    c = ClientPortal(GatewaySettings(base_url=sys.argv[1], timeout_s=60))
    c.place_order(OrderTicket(symbol="AAPL", conid=int(sys.argv[2]), side="BUY", quantity=7, coid="tf-AAPL-B-kill"))
    print("placer finished (it should have been killed)")
""")


@pytest.mark.slow  # starts a Python subprocess
def test_placer_killed_after_broker_accepted_then_retried_places_one_order(gateway):
    """The duplicate-submission scenario: the broker accepts, the process dies before it hears back."""
    gateway.set_fault("hang_after_accept", delay_s=600.0)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PLACER, gateway.url, str(gateway.conid("AAPL"))],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # generous: a loaded machine starts Python slowly
    while not gateway.orders() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.orders(), f"the placer never reached the broker (exit code {proc.poll()})"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with client() as c:  # the retry
        result = c.place_order(cp.OrderTicket(symbol="AAPL", conid=gateway.conid("AAPL"), side="BUY", quantity=7,
                                              coid="tf-AAPL-B-kill"))
    assert result.already_placed and result.status == "Filled"
    assert [o["order_ref"] for o in gateway.orders()] == ["tf-AAPL-B-kill"]


def test_client_order_id_is_one_per_strategy_session_symbol_and_intent():
    """Not per DAG run: two runs (scheduled, manual, a second scheduler) of one session are one key."""
    a = orders.client_order_id("example_swing", "2021-12-15", "AAPL", "open_long")
    assert a == orders.client_order_id("example_swing", "2021-12-15", "AAPL", "open_long")
    assert a != orders.client_order_id("example_swing", "2021-12-16", "AAPL", "open_long")
    assert a != orders.client_order_id("example_swing", "2021-12-15", "AAPL", "close_long")
    assert a != orders.client_order_id("other", "2021-12-15", "AAPL", "open_long")
    assert a.startswith("tf-AAPL-OL-") and len(a) <= 32
    assert [orders.intent_of(*x) for x in (("BUY", 0), ("SELL", 5), ("SELL", 0), ("BUY", -3))] == [
        "open_long", "close_long", "open_short", "close_short"]


# --- paper only, dry run ---------------------------------------------------------------------------

def test_live_account_is_refused_without_both_explicit_settings(bars, monkeypatch):
    with IBKRGateway(bars=bars, accounts=["U7654321"]) as gw:
        monkeypatch.setenv("IBKR_API_URL", gw.url)
        for allow_live, env in ((False, None), (False, "true"), (True, None), (True, "false")):
            if env is None:
                monkeypatch.delenv("IBKR_ALLOW_LIVE", raising=False)
            else:
                monkeypatch.setenv("IBKR_ALLOW_LIVE", env)
            with wf.open_client(strategy(broker={"allow_live": allow_live})) as c, \
                    pytest.raises(cp.LiveTradingRefused, match="LIVE account"):
                c.place_order(ticket(gw))
        assert gw.orders() == []
        monkeypatch.setenv("IBKR_ALLOW_LIVE", "true")
        with wf.open_client(strategy(broker={"allow_live": True})) as c:
            assert c.place_order(ticket(gw)).status == "Filled"  # only with both


def test_dry_run_records_and_sends_nothing(gateway):
    with client() as c:
        result = c.place_order(ticket(gateway), dry_run=True)
    assert result.dry_run and result.status == "dry_run" and result.request["orders"][0]["cOID"] == "tf-AAPL-B-test"
    assert gateway.orders() == [] and not any(r["method"] == "POST" and "orders" in r["path"] for r in gateway.requests)


# --- risk ------------------------------------------------------------------------------------------

def _assess(**kw):
    base = dict(symbol="AAPL", action="BUY", confidence=0.8, entry_price=100.0, atr=2.0, equity=100_000.0,
                positions={}, prices={}, limits=strategy().risk)
    return assess(**{**base, **kw})


def test_risk_sizes_from_equity_and_atr_stop():
    d = _assess()  # budget 1000, stop distance 4 -> 250 shares; symbol cap 10% -> 100 shares
    assert d.approved and d.quantity == 100 and d.binding_limit == "max_position_pct" and d.stop_price == 96.0
    d = _assess(atr=10.0)  # stop distance 20 -> 50 shares by risk
    assert d.quantity == 50 and d.binding_limit == "risk_per_trade" and d.risk_amount == 1000.0


@pytest.mark.parametrize("kw, reason", [
    ({"action": "HOLD"}, "signal is HOLD"),
    ({"confidence": 0.4}, "confidence 0.40 is below min_confidence 0.60"),
    ({"atr": None}, "no ATR"),
    ({"action": "SELL"}, "SELL without a long position"),
    ({"positions": {"AAPL": 100}, "prices": {"AAPL": 100.0}}, "AAPL exposure 10,000 leaves no room"),
    ({"positions": {"MSFT": 500}, "prices": {"MSFT": 100.0}}, "gross exposure 50,000 leaves no room"),
])
def test_risk_refusals_say_why(kw, reason):
    d = _assess(**kw)
    assert not d.approved and reason in d.reason and d.quantity == 0


def test_risk_sell_closes_a_long_position():
    d = _assess(action="SELL", positions={"AAPL": 40}, prices={"AAPL": 100.0})
    assert d.approved and d.side == "SELL" and d.quantity == 40 and d.stop_price == 104.0


# --- sensors and operators (executed directly) ------------------------------------------------------

@pytest.mark.parametrize("at, is_open", [("2021-12-15T15:00:00Z", True), ("2021-12-15T22:00:00Z", False),
                                          ("2021-12-24T15:00:00Z", False), ("2021-12-18T15:00:00Z", False)])
def test_market_open_sensor_uses_the_exchange_calendar(at, is_open):
    from tradeflow.ibkr.airflow.sensors import MarketOpenSensor

    sensor = MarketOpenSensor(task_id="market_open", exchange="XNYS", as_of=at)
    assert "as_of" in sensor.template_fields and sensor.poke({}) is is_open
    assert MarketOpenSensor(task_id="m2", as_of=at, enabled=False).poke({}) is True


def _strategy_file(tmp_path: Path, **extra) -> str:
    import yaml

    path = tmp_path / "strategy.yaml"
    path.write_text(yaml.safe_dump({"name": "test_swing", "symbols": ["AAPL"], **extra}))
    return str(path)


def test_auth_and_data_sensors(gateway, tmp_path):
    from tradeflow.ibkr.airflow.sensors import DataAvailabilitySensor, IBKRAuthSensor

    path = _strategy_file(tmp_path)
    assert IBKRAuthSensor(task_id="a", strategy_file=path).poke({}) is True
    assert DataAvailabilitySensor(task_id="d", strategy_file=path, symbol="AAPL", as_of=AS_OF).poke({}) is True
    # the stand-in's history ends 2021-12-31: a run acting on 2022-01-10 waits for newer bars
    assert DataAvailabilitySensor(task_id="d2", strategy_file=path, symbol="AAPL", as_of="2022-01-10T15:00:00Z").poke({}) is False
    gateway.set_fault("unauthenticated")
    assert IBKRAuthSensor(task_id="a2", strategy_file=path).poke({}) is False
    gateway.stop()
    assert IBKRAuthSensor(task_id="a3", strategy_file=path).poke({}) is False


class _TI:
    def __init__(self, store: dict):
        self.store = store

    def xcom_pull(self, task_ids: str):
        return self.store.get(task_ids)


def _trading_run(path: str, execution_id: str) -> tuple[dict, dict, dict, dict]:
    """A trading run opened as the DAG's first task does, the xcom store and context the operators
    read, and their common arguments: ``(ref, store, context, common)``."""
    from tradeflow.ibkr import mlflow_run

    ref = mlflow_run.open_run(experiment="ibkr_test", dag_id="dag", execution_id=execution_id, strategy="test_swing",
                              kind="trading", params={})
    store = {"start_tracking": ref}
    context = {"ti": _TI(store), "dag_run": SimpleNamespace(dag_id="dag", run_id=execution_id)}
    return ref, store, context, {"strategy_file": path, "as_of": AS_OF, "symbol": "AAPL"}


def _through_risk(store: dict, context: dict, common: dict) -> None:
    """AAPL's market data -> indicators -> signal -> risk tasks, each reading the one before from
    ``store`` (what the order step then reads)."""
    from tradeflow.ibkr.airflow import operators as ops

    store["AAPL.market_data"] = ops.IBKRMarketDataOperator(task_id="md", **common).execute(context)
    store["AAPL.indicators"] = ops.TechnicalIndicatorsOperator(task_id="ind", market_data_task_id="AAPL.market_data",
                                                               **common).execute(context)
    store["AAPL.signal"] = ops.LLMSignalOperator(task_id="sig", market_data_task_id="AAPL.market_data",
                                                 **common).execute(context)
    store["AAPL.risk"] = ops.RiskAssessmentOperator(task_id="risk", signal_task_id="AAPL.signal",
                                                    indicators_task_id="AAPL.indicators", **common).execute(context)


def test_operators_chain_from_bars_to_order_and_portfolio(gateway, tmp_path, ibkr_experiment):
    """Each operator's ``execute`` on a real gateway stand-in and MLflow store, XCom by hand."""
    from mlflow.tracking import MlflowClient

    from tradeflow.ibkr import mlflow_run
    from tradeflow.ibkr.airflow import operators as ops

    path = _strategy_file(tmp_path, webui={"publish": False})
    ref = mlflow_run.open_run(experiment="ibkr_test", dag_id="dag", execution_id="manual__1", strategy="test_swing",
                            kind="trading", params={"symbols": "AAPL"})
    assert mlflow_run.open_run(experiment="ibkr_test", dag_id="dag", execution_id="manual__1", strategy="test_swing",
                             kind="trading", params={})["run_id"] == ref["run_id"]  # a retry finds it again
    store = {"start_tracking": ref}
    context = {"ti": _TI(store), "dag_run": SimpleNamespace(dag_id="dag", run_id="manual__1"), "params": {}}
    common = {"strategy_file": path, "as_of": AS_OF, "symbol": "AAPL"}
    steps = [
        ("AAPL.market_data", ops.IBKRMarketDataOperator(task_id="market_data", **common)),
        ("AAPL.indicators", ops.TechnicalIndicatorsOperator(task_id="indicators", market_data_task_id="AAPL.market_data", **common)),
        ("AAPL.chart", ops.ChartOperator(task_id="chart", market_data_task_id="AAPL.market_data",
                                         indicators_task_id="AAPL.indicators", **common)),
        ("AAPL.signal", ops.LLMSignalOperator(task_id="signal", market_data_task_id="AAPL.market_data", **common)),
        ("AAPL.risk", ops.RiskAssessmentOperator(task_id="risk", signal_task_id="AAPL.signal",
                                                 indicators_task_id="AAPL.indicators", **common)),
        ("AAPL.order", ops.OrderPlacementOperator(task_id="order", risk_task_id="AAPL.risk", market_data_task_id="AAPL.market_data",
                                                  signal_task_id="AAPL.signal", **common)),
    ]
    gateway.set_fault("delay_fills", reads=2)  # the fill arrives after placement: the order step follows it
    for key, op in steps:
        assert {"strategy_file", "as_of", "symbol"} <= set(op.template_fields)
        store[key] = op.execute(context)
        json.dumps(store[key])  # XCom-ready
    assert store["AAPL.market_data"]["last_date"] == "2021-12-14"  # nothing on or after as_of
    assert store["AAPL.signal"]["action"] == "BUY" and store["AAPL.risk"]["approved"]
    assert store["AAPL.order"]["status"] == "Filled" and store["AAPL.order"]["final"]
    assert store["AAPL.order"]["filled_quantity"] == store["AAPL.risk"]["quantity"]
    assert [o["origOrderType"] for o in gateway.orders()] == ["MKT", "STP", "LMT"]  # the bracket: stop + take-profit
    assert gateway.orders()[2]["price"] == round(store["AAPL.signal"]["take_profit"], 2)
    snapshot = ops.PortfolioUpdateOperator(task_id="portfolio_update", strategy_file=path).execute(context)
    assert snapshot["orders"][0]["status"] == "Filled" and len(snapshot["working_orders"]) == 2
    assert snapshot["positions"][0]["symbol"] == "AAPL" and snapshot["positions"][0]["quantity"] == store["AAPL.risk"]["quantity"]
    assert mlflow_run.finish_run(ref["run_id"]) == []
    run = MlflowClient().get_run(ref["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["risk.AAPL"].startswith("approved")
    assert run.data.metrics["AAPL.bars"] == 240 and run.data.metrics["portfolio.positions"] == 1
    names = {a.path for d in ("charts", "signals", "orders", "risk") for a in MlflowClient().list_artifacts(ref["run_id"], d)}
    assert {"charts/AAPL.png", "signals/AAPL.json", "signals/AAPL_transcript.jsonl", "orders/AAPL.json", "risk/AAPL.json"} <= names


@pytest.fixture
def airflow_logging():
    """Import Airflow before the test's call phase: its first import configures logging and replaces
    the root logger's handlers, pytest's capture handler (installed per phase) included, so a test
    that imported it first saw no records when run alone (and passed only after an earlier test)."""
    import tradeflow.ibkr.airflow.operators  # noqa: F401


def test_risk_refusal_is_explained_in_the_log_mlflow_and_webui(gateway, tmp_path, ibkr_experiment, monkeypatch, caplog,
                                                                 airflow_logging):
    from mlflow.tracking import MlflowClient

    from tests.support.webui import WebUIServer
    from tradeflow.ibkr.airflow import operators as ops

    path = _strategy_file(tmp_path, risk={"min_confidence": 0.9})
    ref, store, context, common = _trading_run(path, "manual__3")
    with WebUIServer() as webui:
        monkeypatch.setenv("BACKEND_API_URL", webui.url)
        with caplog.at_level("WARNING"):
            _through_risk(store, context, common)
        order = ops.OrderPlacementOperator(task_id="order", risk_task_id="AAPL.risk", market_data_task_id="AAPL.market_data",
                                           signal_task_id="AAPL.signal", **common).execute(context)
        [artifact] = webui.artifacts()
    reason = "confidence 0.75 is below min_confidence 0.90"
    assert order["status"] == "not_placed" and reason in order["reason"] and gateway.orders() == []
    assert any("REFUSED" in r.message and reason in r.message for r in caplog.records)
    assert MlflowClient().get_run(ref["run_id"]).data.tags["risk.AAPL"] == f"refused: {reason}"
    assert artifact["type"] == "signal" and artifact["execution_id"] == "manual__3" and artifact["run_id"] == ref["run_id"]
    assert artifact["signal_data"]["reasoning"].startswith(f"Order refused by risk: {reason}")
    assert artifact["signal_data"]["order"]["status"] == "not_placed"  # the order step updated the same artifact


def test_a_rejected_order_is_recorded_shown_and_not_resent_by_a_retry(gateway, tmp_path, ibkr_experiment, monkeypatch):
    """Issue 25 repro 5: Airflow's retry re-sent a margin rejection (filled on try 2) and the
    rejection vanished from MLflow. Now the order step records it, the WebUI shows it, and a retry
    of the task (the gateway would accept now) sends nothing."""
    from mlflow.tracking import MlflowClient

    from tests.support.webui import WebUIServer
    from tradeflow.ibkr.airflow import operators as ops

    path = _strategy_file(tmp_path)
    ref, store, context, common = _trading_run(path, "manual__4")
    with WebUIServer() as webui:
        monkeypatch.setenv("BACKEND_API_URL", webui.url)
        _through_risk(store, context, common)
        order_op = ops.OrderPlacementOperator(task_id="order", risk_task_id="AAPL.risk",
                                              market_data_task_id="AAPL.market_data", signal_task_id="AAPL.signal", **common)
        gateway.set_fault("reject_orders", message="Order rejected - reason: insufficient margin")
        first = order_op.execute(context)  # no exception: nothing for Airflow to retry
        gateway.set_fault(None)
        again = order_op.execute(context)  # a retry anyway (cleared task, a later run of the session)
        [artifact] = webui.artifacts()
    assert first["status"] == again["status"] == "Rejected" and again["resent"] is False
    assert gateway.orders() == [] and len([r for r in gateway.requests if r["path"].endswith("/orders")
                                           and r["method"] == "POST"]) == 1
    run = MlflowClient().get_run(ref["run_id"])
    assert "insufficient margin" in run.data.tags["order.AAPL"] and run.data.metrics["AAPL.order_rejected"] == 1.0
    assert artifact["signal_data"]["order"]["status"] == "Rejected"
    assert artifact["signal_data"]["reasoning"].startswith("Order Rejected: ")


def test_a_fill_after_the_order_step_reaches_mlflow_and_the_webui_at_the_portfolio_step(gateway, tmp_path, ibkr_experiment,
                                                                                         monkeypatch):
    """Issue 25 repro 4: a fill that came after the order step stopped following (fill_timeout_s)
    stayed "PreSubmitted, filled 0" in MLflow and the WebUI. The portfolio step looks again and
    records what it sees: the order's tag, metric and artifact, and the WebUI signal's order."""
    from mlflow.tracking import MlflowClient

    from tests.support.webui import WebUIServer
    from tradeflow.ibkr.airflow import operators as ops

    path = _strategy_file(tmp_path, broker={"fill_timeout_s": 0.2, "poll_s": 0.05})
    ref, store, context, common = _trading_run(path, "manual__5")
    with WebUIServer() as webui:
        monkeypatch.setenv("BACKEND_API_URL", webui.url)
        _through_risk(store, context, common)
        gateway.set_fault("delay_fills", reads=None)  # nothing fills while the order step follows
        store["AAPL.order"] = ops.OrderPlacementOperator(task_id="order", risk_task_id="AAPL.risk",
                                                         market_data_task_id="AAPL.market_data",
                                                         signal_task_id="AAPL.signal", **common).execute(context)
        assert store["AAPL.order"]["status"] == "PreSubmitted" and not store["AAPL.order"]["final"]
        [shown] = webui.artifacts()
        assert shown["signal_data"]["order"]["status"] == "PreSubmitted"
        gateway.fill_pending()  # the fill arrives between the order step and the portfolio step
        snapshot = ops.PortfolioUpdateOperator(task_id="portfolio_update", strategy_file=path).execute(context)
        [artifact] = webui.artifacts()
    quantity = store["AAPL.risk"]["quantity"]
    assert snapshot["orders"][0]["status"] == "Filled" and snapshot["orders"][0]["filled_quantity"] == quantity
    assert snapshot["positions"][0]["quantity"] == quantity
    run = MlflowClient().get_run(ref["run_id"])
    assert run.data.tags["order.AAPL"].startswith("Filled tf-AAPL-OL-")
    assert run.data.metrics["AAPL.order_quantity"] == quantity
    assert artifact["signal_data"]["order"]["status"] == "Filled" and artifact["signal_data"]["order"]["final"]
    assert artifact["signal_data"]["order"]["filled_quantity"] == quantity


def test_failed_operator_is_recorded_and_fails_the_run(gateway, tmp_path, ibkr_experiment):
    from mlflow.tracking import MlflowClient

    from tradeflow.ibkr import mlflow_run
    from tradeflow.ibkr.airflow import operators as ops

    path = _strategy_file(tmp_path, market_data={"min_bars": 1000})
    ref = mlflow_run.open_run(experiment="ibkr_test", dag_id="dag", execution_id="manual__2", strategy="test_swing",
                            kind="trading", params={})
    context = {"ti": _TI({"start_tracking": ref}), "dag_run": SimpleNamespace(dag_id="dag", run_id="manual__2")}
    with pytest.raises(wf.MarketDataError, match="needs market_data.min_bars=1000"):
        ops.IBKRMarketDataOperator(task_id="market_data", strategy_file=path, as_of=AS_OF, symbol="AAPL").execute(context)
    assert mlflow_run.finish_run(ref["run_id"]) == ["market_data"]
    run = MlflowClient().get_run(ref["run_id"])
    assert run.info.status == "FAILED" and "min_bars" in run.data.tags["tradeflow.failure_reason"]


# --- template generator ----------------------------------------------------------------------------

def test_shipped_dag_files_are_what_the_template_writes():
    from tradeflow.ibkr.template import KINDS, SHIPPED_IDS, render

    for kind in KINDS:
        shipped = REPO / "dags" / f"{SHIPPED_IDS[kind]}.py"
        assert shipped.read_text() == render(kind, strategy_file=None, out_dir=shipped.parent, strategy=None, shipped=True)


def test_template_writes_dags_for_a_new_strategy(tmp_path):
    from tradeflow.ibkr.template import main

    (tmp_path / "dags").mkdir()
    yaml_path = tmp_path / "dags" / "momo.yaml"
    yaml_path.write_text(DEFAULT_STRATEGY_FILE.read_text().replace("name: example_swing", "name: momo"))
    assert main([str(yaml_path), "--out", str(tmp_path / "dags")]) == 0
    files = sorted(p.name for p in (tmp_path / "dags").glob("*.py"))
    assert files == ["ibkr_market_data_momo.py", "ibkr_monitoring_momo.py", "ibkr_trading_momo.py"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("ibkr_trading_momo", tmp_path / "dags" / "ibkr_trading_momo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dag.dag_id == "ibkr_trading_momo" and len(module.dag.task_dict) == 19
    assert module.dag.task_dict["AAPL.order"].upstream_task_ids == {"AAPL.risk"}
    yaml_path.write_text("name: Bad Name\nsymbols: [AAPL]\n")
    assert main([str(yaml_path), "--out", str(tmp_path / "other")]) == 2 and not (tmp_path / "other").exists()


def test_environment_check_names_what_would_fail(tmp_path):
    from tradeflow.ibkr.template import check_environment

    problems = check_environment(strategy(broker={"allow_live": True}), {})
    assert any("IBKR_API_URL is not set" in p for p in problems)
    assert any("BACKEND_API_URL is not set" in p for p in problems)
    problems = check_environment(strategy(broker={"allow_live": True}), {
        "IBKR_API_URL": "https://localhost:5000/v1/api", "MLFLOW_TRACKING_URI": "sqlite:///x.db",
        "BACKEND_API_URL": "http://webui:8000"})
    assert problems == ["broker.allow_live is true but IBKR_ALLOW_LIVE is not: orders stay paper-only"]
    assert check_environment(strategy(), {"IBKR_API_URL": "https://localhost:5000/v1/api", "IBKR_VERIFY_TLS": "maybe",
                                          "MLFLOW_TRACKING_URI": "x", "BACKEND_API_URL": "y"}) == [
        "IBKR_VERIFY_TLS='maybe' is not a boolean (use true or false)"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ready = {"IBKR_API_URL": "https://localhost:5000/v1/api", "MLFLOW_TRACKING_URI": "x", "BACKEND_API_URL": "y"}
    assert check_environment(strategy(), {**ready, "IBKR_STATE_DIR": str(tmp_path / "state")}) == []
    [problem] = check_environment(strategy(), {**ready, "IBKR_STATE_DIR": str(blocker / "state")})
    assert problem.startswith(f"IBKR_STATE_DIR {blocker / 'state'} is not a writable directory")


def test_every_strategy_key_is_documented():
    from pydantic import BaseModel

    from tradeflow.ibkr.strategy import StrategyConfig

    text = (REPO / "docs" / "ibkr_workflow.md").read_text()
    missing = []
    for name, spec in StrategyConfig.model_fields.items():
        section = spec.annotation
        if isinstance(section, type) and issubclass(section, BaseModel) and name != "signal":
            missing += [f"{name}.{key}" for key in section.model_fields
                        if f"`{name}.{key}`" not in text and f"`{key}`" not in text]
        elif f"`{name}`" not in text and f"`{name}." not in text:
            missing.append(name)
    assert not missing, f"strategy keys missing from docs/ibkr_workflow.md: {missing}"


# --- an optional real gateway ------------------------------------------------------------------------

_REAL_GATEWAY = os.environ.get("IBKR_API_URL")  # read at import: fixtures replace it with the stand-in's


def test_real_gateway_read_only():
    url = _REAL_GATEWAY
    if not url:
        pytest.skip("no real Client Portal gateway: set IBKR_API_URL (e.g. https://localhost:5000/v1/api, "
                    "logged in) to run read-only checks against it")
    settings = cp.GatewaySettings.from_env({"IBKR_API_URL": url, "IBKR_VERIFY_TLS": os.environ.get("IBKR_VERIFY_TLS", "false")})
    with cp.ClientPortal(settings) as c:
        c.ensure_authenticated()
        assert len(c.history(c.search("AAPL"), period="1m")) > 10
        account = c.trading_account()  # refuses a live account: this check never trades
        assert c.summary(account)["netliquidation"] > 0


@pytest.mark.parametrize("execution_id", ["manual__2026-01-05T14:30:00+00:00", "manual__it's", 'scheduled__"x"'])
def test_a_retried_start_tracking_finds_its_run_whatever_the_execution_id(ibkr_experiment, execution_id):
    """The run is found again by (dag_id, execution_id) through the one safe filter quoting: a quote
    in either (the MLflow grammar has no escape character) must not open a second run."""
    from mlflow.tracking import MlflowClient

    from tradeflow.ibkr import mlflow_run

    experiment = f"ibkr_quotes_{abs(hash(execution_id))}"
    first = mlflow_run.open_run(experiment=experiment, dag_id="ibkr_trading_strategy's", execution_id=execution_id,
                                strategy="s", kind="trading", params={"symbols": "AAPL"})
    again = mlflow_run.open_run(experiment=experiment, dag_id="ibkr_trading_strategy's", execution_id=execution_id,
                                strategy="s", kind="trading", params={})
    assert again["run_id"] == first["run_id"]
    runs = MlflowClient().search_runs([first["experiment_id"]])
    assert [r.info.run_id for r in runs] == [first["run_id"]]


def test_an_execution_id_no_mlflow_filter_can_express_fails_in_one_line_and_opens_nothing(ibkr_experiment):
    from mlflow.tracking import MlflowClient

    from tradeflow.errors import InputError
    from tradeflow.ibkr import mlflow_run

    with pytest.raises(InputError, match="both quote characters"):
        mlflow_run.open_run(experiment="ibkr_quotes_both", dag_id="dag", execution_id="a'b\"c", strategy="s",
                            kind="trading", params={})
    experiment = MlflowClient().get_experiment_by_name("ibkr_quotes_both")
    assert experiment is None or not MlflowClient().search_runs([experiment.experiment_id])
