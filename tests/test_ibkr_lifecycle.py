"""The reproductions of issue 25, each against the Client Portal stand-in (working orders, brackets as
OCA groups, cancellation, delayed fills, questions by id and text, 30 positions per page, what-if,
429/503, competing sessions): the order lifecycle, limits that hold across runs and pending orders,
questions by allow-list, rejections that are final, one session classification, paging.

The allocation step (``workflow.allocate_and_place``) is called with a fixed signal (no review team:
the operator chain in tests/test_ibkr.py covers that), so each case takes well under a second.
"""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.conftest import DJ30_TEST, DJ30_VALID, require_shared_data
from tests.support.ibkr_gateway import CATALOG, IBKRGateway
from tests.support.stores import sqlite_store, tracking_to
from tests.support.webui import trademaster_bars
from tradeflow.ibkr import client as cp
from tradeflow.ibkr import workflow as wf
from tradeflow.ibkr.strategy import parse_strategy

SYMBOLS = ("AAPL", "MSFT", "AMGN", "AXP", "BA", "CAT")
SESSION = "2021-12-15"
FAST = {"fill_timeout_s": 2.0, "poll_s": 0.05}
QUESTION_O354 = ("o354", "You are submitting an order without market data. Are you sure?")


@pytest.fixture(scope="module")
def bars():
    require_shared_data()
    return {s: pd.concat([trademaster_bars(DJ30_VALID, s), trademaster_bars(DJ30_TEST, s)]) for s in SYMBOLS}


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("IBKR_STATE_DIR", str(tmp_path / "ibkr-state"))
    for name in ("IBKR_ACCOUNT_ID", "IBKR_ALLOW_LIVE", "IBKR_VERIFY_TLS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gateway(bars, monkeypatch):
    with IBKRGateway(bars=bars) as gw:
        monkeypatch.setenv("IBKR_API_URL", gw.url)
        yield gw


def strategy(name: str = "swing", **overrides):
    broker = {**FAST, **overrides.pop("broker", {})}
    return parse_strategy({"name": name, "symbols": list(SYMBOLS), "broker": broker, **overrides})


def last_close(bars, symbol: str) -> float:
    return float(bars[symbol]["close"].iloc[-1])


def allocate(gw, bars, symbol: str, action: str = "BUY", *, s=None, take_profit: float | None = None,
             session: str = SESSION, atr: float = 3.0) -> dict:
    s = s or strategy()
    price = last_close(bars, symbol)
    sig = {"symbol": symbol, "action": action, "confidence": 0.8, "entry": price,
           "take_profit": take_profit if take_profit is not None else round(price * 1.07, 2)}
    with wf.open_client(s) as c:
        return wf.allocate_and_place(s, sig, {"close": price, "atr_14": atr}, gw.conid(symbol), c, session=session)


def posts(gw) -> list[dict]:
    return [r for r in gw.requests if r["method"] == "POST" and r["path"].endswith("/orders")]


def exposure(gw, bars, equity: float = 1_000_000.0) -> dict[str, float]:
    return {s: abs(q) * last_close(bars, s) / equity for s, q in gw.positions().items()}


# --- 1. stops die with their position ---------------------------------------------------------------

def test_closing_cancels_the_positions_stop_and_take_profit_so_the_next_bar_cannot_open_a_short(gateway, bars):
    """Issue 25 repro 1: BUY with a GTC stop, then a SELL closes the position. Before, the old SELL
    stop stayed working (and the close placed a new BUY stop): the next bar hit it, -69 AAPL short."""
    opened = allocate(gateway, bars, "AAPL")
    assert opened["status"] == "Filled" and opened["intent"] == "open_long" and opened["final"]
    entry, stop, target = gateway.orders()
    assert (stop["origOrderType"], stop["side"], stop["status"]) == ("STP", "SELL", "Submitted")
    assert (target["origOrderType"], target["side"], target["status"]) == ("LMT", "SELL", "Submitted")
    assert stop["parentId"] == target["parentId"] == entry["orderId"]  # one bracket, one OCA group
    held = gateway.positions()["AAPL"]

    closed = allocate(gateway, bars, "AAPL", "SELL")
    assert closed["status"] == "Filled" and closed["intent"] == "close_long"
    assert {c["status"] for c in closed["cancelled"]} == {"Cancelled"} and len(closed["cancelled"]) == 2
    close_order = gateway.orders()[-1]
    assert (close_order["side"], close_order["totalSize"], close_order["parentId"]) == ("SELL", held, None)
    assert len(gateway.orders()) == 4  # the close has no children: no new BUY stop
    deletes = [r for r in gateway.requests if r["method"] == "DELETE"]
    assert deletes and gateway.requests.index(deletes[-1]) < gateway.requests.index(posts(gateway)[-1])

    gateway.move_price("AAPL", stop["price"] - 20)  # the next bar falls through the old stop level
    gateway.move_price("AAPL", target["price"] + 20)  # and rallies through the old target
    assert gateway.positions() == {}  # flat: never short
    with wf.open_client(strategy()) as c:
        snapshot = wf.portfolio(strategy(), c)
    assert snapshot["alerts"] == [] and snapshot["working_orders"] == []


def test_the_take_profit_filling_cancels_its_stop(gateway, bars):
    allocate(gateway, bars, "AAPL")
    _, stop, target = gateway.orders()
    gateway.move_price("AAPL", target["price"] + 0.5)
    statuses = {o["origOrderType"]: o["status"] for o in gateway.orders()[1:]}
    assert statuses == {"STP": "Cancelled", "LMT": "Filled"} and gateway.positions() == {}


def test_monitoring_alerts_on_a_net_short_and_the_stop_that_made_it(gateway, bars):
    """What the old code did (a close placed beside a working stop) is now an alert, not 0 alerts."""
    allocate(gateway, bars, "AAPL")
    held = gateway.positions()["AAPL"]
    with wf.open_client(strategy()) as c:  # a close sent by hand, without cancelling the bracket
        c.place_order(cp.OrderTicket(symbol="AAPL", conid=gateway.conid("AAPL"), side="SELL", quantity=int(held),
                                     coid="manual-close"))
        before_short = wf.portfolio(strategy(), c)
        gateway.move_price("AAPL", gateway.orders()[1]["price"] - 1)
        after = wf.portfolio(strategy(), c)
    assert any("working SELL exits" in a and "orphaned stop" in a for a in before_short["alerts"])
    assert gateway.positions() == {"AAPL": -held}
    assert any(f"AAPL is NET SHORT {-held:g}" in a for a in after["alerts"])
    refused = allocate(gateway, bars, "AAPL", "SELL")  # the next run names the short, not "no long"
    assert refused["status"] == "not_placed" and "NET SHORT" in refused["reason"]


# --- 2. limits that hold ----------------------------------------------------------------------------

def test_three_concurrent_runs_stay_within_every_cap(gateway, bars):
    """Issue 25 repro 2: three runs at once put MSFT at 19.5 % and 29.3 % against a 10 % cap. Runs of
    one strategy share one key (one order); three strategies on the account share the lock and
    count each other's still-working orders (fills delayed)."""
    gateway.set_fault("delay_fills", reads=None)
    results: list[dict] = []
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results.append(allocate(gateway, bars, "MSFT", s=strategy(name, broker={"fill_timeout_s": 0.2})))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("swing", "swing", "swing", "other", "third")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    parents = [o for o in gateway.orders() if o["parentId"] is None]
    assert len(parents) == 1, [(o["order_ref"], o["status"]) for o in parents]
    assert sorted(r["status"] for r in results).count("not_placed") == 2  # the other strategies: no room
    assert all("max_position_pct" in r["reason"] for r in results if r["status"] == "not_placed")
    gateway.fill_pending()
    assert exposure(gateway, bars)["MSFT"] <= 0.10


def test_back_to_back_runs_with_pending_fills_place_one_order_per_symbol(gateway, bars):
    """Issue 25 repro 2: a second run while the first run's orders were PreSubmitted placed two per
    symbol (19.9 %). The second run finds the first run's orders by the session's key."""
    gateway.set_fault("delay_fills", reads=None)
    s = strategy(broker={"fill_timeout_s": 0.2})
    first = [allocate(gateway, bars, sym, s=s) for sym in ("AAPL", "MSFT")]
    assert [r["status"] for r in first] == ["PreSubmitted", "PreSubmitted"] and not any(r["final"] for r in first)
    second = [allocate(gateway, bars, sym, s=s) for sym in ("AAPL", "MSFT")]
    assert all(r["already_placed"] for r in second) and len(posts(gateway)) == 2
    gateway.fill_pending()
    assert all(v <= 0.10 for v in exposure(gateway, bars).values())


def test_six_buys_in_one_run_stay_under_the_gross_cap_counting_this_runs_working_orders(gateway, bars):
    """Issue 25 repro 2: six BUY symbols each checked before any order: 59.6 % gross against 30 %."""
    gateway.set_fault("delay_fills", reads=None)  # nothing fills during the run: the caps see working orders
    s = strategy(risk={"max_position_pct": 0.10, "max_total_exposure_pct": 0.30}, broker={"fill_timeout_s": 0.1})
    results = [allocate(gateway, bars, sym, s=s) for sym in SYMBOLS]
    placed = [r for r in results if r["status"] != "not_placed"]
    assert 3 <= len(placed) <= 4 and any("max_total_exposure_pct" in r["reason"] for r in results if r not in placed)
    gateway.fill_pending()
    gross = sum(exposure(gateway, bars).values())
    assert 0.25 < gross <= 0.30 and all(v <= 0.10 for v in exposure(gateway, bars).values())


def test_a_fill_the_positions_cache_has_not_seen_still_counts(gateway, bars):
    """IBKR answers positions from a backend cache: a run right after another run's fill saw no
    position and no working order (it filled) and placed a second one. The allocation invalidates
    the cache first, so the second strategy on the account finds no room."""
    gateway.set_fault("cached_positions")
    first = allocate(gateway, bars, "MSFT", s=strategy("swing"))
    assert first["status"] == "Filled"
    second = allocate(gateway, bars, "MSFT", s=strategy("other"))
    assert second["status"] == "not_placed" and "max_position_pct" in second["reason"]
    assert len([o for o in gateway.orders() if o["parentId"] is None]) == 1
    assert exposure(gateway, bars)["MSFT"] <= 0.10
    assert any(r["path"].endswith("/positions/invalidate") for r in gateway.requests)


# --- 3. questions by allow-list ---------------------------------------------------------------------

@pytest.mark.parametrize("question, fragment", [
    (("o451", CATALOG["o451"]), "exceeds the Total Value Limit"),
    (("o2137", CATALOG["o2137"]), "LIVE account"),
    (("o9999", "Something IBKR never asked before. Are you sure?"), "o9999 is not in broker.accept_questions"),
])
def test_a_question_not_on_the_allow_list_refuses_the_order_with_its_text(bars, monkeypatch, question, fragment):
    """Issue 25 repro 3: every question was answered yes, o451 and "routed to a LIVE account" included."""
    with IBKRGateway(bars=bars, questions=[QUESTION_O354, question]) as gw:
        monkeypatch.setenv("IBKR_API_URL", gw.url)
        result = allocate(gw, bars, "AAPL")
        assert result["status"] == "Rejected" and result["final"] and fragment in result["reason"]
        assert question[1][:40] in result["reason"]  # the question's own text, as IBKR asked it
        assert gw.orders() == [] and gw.confirmed == ["o354"]  # only the allow-listed one was answered yes
        assert allocate(gw, bars, "AAPL")["resent"] is False and len(posts(gw)) == 1  # final: not re-sent


def test_a_configured_question_is_accepted(bars, monkeypatch):
    with IBKRGateway(bars=bars, questions=[("o163", CATALOG["o163"])]) as gw:
        monkeypatch.setenv("IBKR_API_URL", gw.url)
        result = allocate(gw, bars, "AAPL", s=strategy(broker={"accept_questions": ["o163"]}))
        assert result["status"] == "Filled" and result["replies"] == ["o163"] and gw.confirmed == ["o163"]
        assert result["questions"][0]["text"].startswith("The following order exceeds the price percentage")


# --- 4. fills followed; 5. rejections final, 429 -----------------------------------------------------

def test_a_delayed_fill_is_followed_until_filled(gateway, bars):
    """Issue 25 repro 4: a delayed fill stayed "PreSubmitted, filled 0" in MLflow and the WebUI."""
    gateway.set_fault("delay_fills", reads=3)
    result = allocate(gateway, bars, "AAPL")
    assert result["status"] == "Filled" and result["final"] and result["filled_quantity"] == gateway.positions()["AAPL"]
    status_reads = [r for r in gateway.requests if "/order/status/" in r["path"]]
    assert 1 <= len(status_reads) <= 5  # bounded polling


def test_a_rejection_is_final_and_never_resent(gateway, bars):
    """Issue 25 repro 5: a margin rejection was re-sent by Airflow's retry and filled on try 2."""
    gateway.set_fault("reject_orders", message="Order rejected - reason: insufficient margin")
    first = allocate(gateway, bars, "AAPL")
    assert first["status"] == "Rejected" and "insufficient margin" in first["reason"]
    gateway.set_fault(None)  # the margin is back: a re-send would fill now
    again = allocate(gateway, bars, "AAPL")  # the retry / the next run of the session
    assert again["status"] == "Rejected" and again["resent"] is False
    assert gateway.orders() == [] and len(posts(gateway)) == 1


def test_429_is_rate_limiting_not_a_rejection(gateway, bars):
    """Issue 25 repro 5: a 429 was reported as "rejected: Too many requests"."""
    gateway.set_fault("rate_limited", times=1, path="/orders")
    with pytest.raises(cp.RateLimited, match="rate limiting") as err:
        allocate(gateway, bars, "AAPL")
    assert not isinstance(err.value, cp.OrderRejected) and gateway.orders() == []
    assert allocate(gateway, bars, "AAPL")["status"] == "Filled"  # not recorded as final: the retry places it


# --- 6. sessions --------------------------------------------------------------------------------------

class _TI:
    def __init__(self, store: dict):
        self.store = store

    def xcom_pull(self, task_ids: str):
        return self.store.get(task_ids)


@pytest.fixture(scope="module")
def _store(tmp_path_factory) -> str:
    return sqlite_store(tmp_path_factory.mktemp("ibkr-lifecycle-mlflow"), "ibkr_lifecycle")


def test_one_session_classification_drives_the_sensor_and_lands_on_the_run(gateway, tmp_path, _store, monkeypatch):
    """Issue 25 repro 6: a 503 failed the sensor on its first poke, a logged-out session was never
    re-authenticated, and a competing session gave a successful run that traded nothing."""
    import yaml
    from mlflow.tracking import MlflowClient

    from tradeflow.ibkr import mlflow_run
    from tradeflow.ibkr.airflow.sensors import IBKRAuthSensor

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "swing", "symbols": ["AAPL"]}))
    with tracking_to(_store, monkeypatch):
        ref = mlflow_run.open_run(experiment="ibkr_lifecycle", dag_id="dag", execution_id="manual__s", strategy="swing",
                                  kind="trading", params={})
        context = {"ti": _TI({"start_tracking": ref})}
        monkeypatch.setattr(cp, "RETRY", cp.RetryPolicy(attempts=1, backoff_s=0.0))
        tags = lambda: MlflowClient().get_run(ref["run_id"]).data.tags  # noqa: E731

        gateway.set_fault("unavailable", times=5)
        assert IBKRAuthSensor(task_id="a1", strategy_file=str(path)).poke(context) is False  # waits
        assert tags()["tradeflow.ibkr.session"].startswith("down: ") and "503" in tags()["tradeflow.ibkr.session"]
        gateway.set_fault(None)

        gateway.set_fault("unauthenticated", reauth=True)
        assert IBKRAuthSensor(task_id="a2", strategy_file=str(path)).poke(context) is True  # restored
        assert any(r["path"].endswith("/iserver/reauthenticate") for r in gateway.requests)
        assert tags()["tradeflow.ibkr.session"] == "ready"

        gateway.set_fault("competing")
        sensor = IBKRAuthSensor(task_id="ibkr_auth", strategy_file=str(path), mode="poke", poke_interval=0.1, timeout=5)
        with pytest.raises(cp.CompetingSession, match="competes"):
            sensor.execute(context)
        assert "competes for this login" in tags()["tradeflow.failed.ibkr_auth"]
        assert mlflow_run.finish_run(ref["run_id"]) == ["ibkr_auth"]  # the run fails, naming the sensor
    from tradeflow.ibkr.errors import session_state

    assert [session_state(e) for e in (None, cp.GatewayDown("x"), cp.NotAuthenticated("x"), cp.CompetingSession("x"),
                                       cp.RateLimited("x"), cp.OrderRejected("x"))] == [
        "ready", "down", "unauthenticated", "competing", "rate_limited", "error"]


def test_a_session_in_use_is_kept_alive(gateway, monkeypatch):
    """Each task's client tickles before its first call (the step before may have idled the session
    past IBKR's ~5 minutes), then again whenever it was idle longer than TICKLE_S."""
    def paths(start: int = 0) -> list[str]:
        return [r["path"].rsplit("/api", 1)[1] for r in gateway.requests[start:]]

    with wf.open_client(strategy()) as c:
        c.search("AAPL")
        c.search("MSFT")
    assert paths() == ["/tickle", "/iserver/secdef/search", "/iserver/secdef/search"]
    start = len(gateway.requests)
    monkeypatch.setattr(cp, "TICKLE_S", 0.0)
    with wf.open_client(strategy()) as c:
        c.search("AAPL")
        c.search("MSFT")
    assert paths(start) == ["/tickle", "/iserver/secdef/search"] * 2


# --- 7. paging; 8. what-if and the live warning -----------------------------------------------------------

def test_positions_past_30_are_all_seen_by_risk_and_monitoring(gateway, bars):
    """Issue 25 repro 7: positions paged by 100 while IBKR pages by 30: the 31st and later were unseen."""
    gateway.seed_positions({f"Z{i:02d}": (100, 50.0) for i in range(34)} | {"MSFT": (300, last_close(bars, "MSFT"))})
    with wf.open_client(strategy()) as c:
        rows = c.positions(c.trading_account())
        snapshot = wf.portfolio(strategy(), c)
    assert len(rows) == 35 and snapshot["positions"][-1]["symbol"] == "Z33"
    pages = [r["path"] for r in gateway.requests if r["path"].rsplit("/", 1)[1].isdigit() and "/positions/" in r["path"]]
    assert [p.rsplit("/", 1)[1] for p in pages[:2]] == ["0", "1"]
    result = allocate(gateway, bars, "MSFT")
    assert result["allocation"]["checks"]["symbol_exposure"] == pytest.approx(300 * last_close(bars, "MSFT"))
    assert result["allocation"]["checks"]["gross_exposure"] >= 34 * 100 * 50.0


def test_a_live_order_is_previewed_and_announced(bars, monkeypatch, caplog):
    with IBKRGateway(bars=bars, accounts=["U7654321"]) as gw:
        monkeypatch.setenv("IBKR_API_URL", gw.url)
        monkeypatch.setenv("IBKR_ALLOW_LIVE", "true")
        with caplog.at_level(logging.WARNING, logger="tradeflow.ibkr.client"):
            result = allocate(gw, bars, "AAPL", s=strategy(broker={"allow_live": True}))
        assert result["status"] == "Filled" and result["whatif"]["amount"]["commission"] == "1.00 USD"
        assert len(gw.whatifs) == 1 and gw.whatifs[0]["cOID"] == result["coid"]
        assert any("LIVE ACCOUNT U7654321" in r.getMessage() and "REAL" in r.getMessage() for r in caplog.records)


def test_a_paper_order_is_not_previewed_unless_asked(gateway, bars):
    allocate(gateway, bars, "AAPL")
    assert gateway.whatifs == []
    allocate(gateway, bars, "MSFT", s=strategy(broker={"preview": "always"}))
    assert len(gateway.whatifs) == 1


def test_exits_of_one_bracket_count_once():
    live = [{"orderId": 1, "ticker": "A", "side": "BUY", "status": "Filled", "parentId": None, "totalSize": 10},
            {"orderId": 2, "ticker": "A", "side": "SELL", "status": "Submitted", "parentId": 1, "totalSize": 10},
            {"orderId": 3, "ticker": "A", "side": "SELL", "status": "Submitted", "parentId": 1, "totalSize": 10},
            {"orderId": 4, "ticker": "A", "side": "SELL", "status": "Submitted", "parentId": None, "totalSize": 5},
            {"orderId": 5, "ticker": "A", "side": "BUY", "status": "PreSubmitted", "parentId": None, "totalSize": 7},
            {"orderId": 6, "ticker": "A", "side": "SELL", "status": "PreSubmitted", "parentId": 5, "totalSize": 7}]
    assert wf.exit_quantity(wf.working_exits(live, "A", "SELL")) == 15  # the OCA pair once, + the lone 5
    pending, unpriced = wf.working_exposure(live, {"A": 10.0}, {})
    assert pending == {"A": 120.0}  # every working entry counts, whatever its side (conservative)
    assert unpriced == []
    live[4]["filledQuantity"] = 3  # the entry filled in part: its child may work on those shares
    assert wf.exit_quantity(wf.working_exits(live, "A", "SELL")) == 22
