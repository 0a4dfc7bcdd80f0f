"""Which symbols a DAG run runs: WebUI auto-triggers are checked against the WebUI (enabled symbol,
active link), a person's conf.symbol runs and is told, scheduled batches honour each link's session.
Against the contract server (tests/support/webui/)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from tests.support.webui import webui_server  # noqa: F401 - fixture
from tradeflow import orchestration as orch
from tradeflow.sessions import Session, SessionError

DAG_ID = orch.DAG_ID
WEDNESDAY_10_NY = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)  # 10:00 in New York, 00:00 Thursday in Tokyo
SATURDAY_10_NY = datetime(2026, 12, 5, 15, 0, tzinfo=UTC)


def _ctx(conf=None, run_id="manual__2026-12-02T15:00:00+00:00") -> orch.RunContext:
    params = {"mode": "both", "symbol": None, "max_symbols": 50, "config": {}, "force": False}
    return orch.RunContext(dag_id=DAG_ID, run_id=run_id, conf=conf or {}, params=params)


def _fail_exception():
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException


@pytest.fixture
def webui(webui_server, monkeypatch):
    monkeypatch.setenv("BACKEND_API_URL", webui_server.url)
    return webui_server


def test_auto_trigger_of_a_disabled_symbol_or_inactive_link_runs_nothing_and_says_why(webui, caplog):
    jpm = webui.seed_symbol("JPM", enabled=False)
    ibm = webui.seed_symbol("IBM", is_active=False)
    ko = webui.seed_symbol("KO")
    with caplog.at_level(logging.WARNING, logger="tradeflow.orchestration"):
        assert orch.resolve_targets(_ctx({"symbol": "JPM", "workflow_symbol_id": jpm["id"]})) == []
        assert orch.resolve_targets(_ctx({"symbol": "IBM", "workflow_symbol_id": ibm["id"]})) == []
    assert "auto-trigger for JPM not run: JPM is disabled in the WebUI" in caplog.text
    assert f"auto-trigger for IBM not run: IBM's link to {DAG_ID} is inactive in the WebUI" in caplog.text
    ran = orch.resolve_targets(_ctx({"symbol": "KO", "conid": 8894, "workflow_symbol_id": ko["id"]}))
    assert [(t["symbol"], t["workflow_symbol_id"], t["conid"]) for t in ran] == [("KO", ko["id"], 8894)]


def test_the_real_trigger_path_fires_for_a_disabled_symbol_and_the_dag_run_declines(webui):
    import requests

    created = requests.post(f"{webui.url}/api/workflow-symbols/", timeout=5, json={
        "symbol": "JPM", "enabled": False, "workflows": [{"dag_id": DAG_ID, "is_active": True}]})
    assert created.status_code == 201
    [trigger] = webui.auto_triggers  # the service fired although the symbol is disabled
    assert orch.resolve_targets(_ctx(trigger["conf"])) == []


def test_a_manual_run_of_a_disabled_symbol_runs_and_says_so(webui, caplog):
    webui.seed_symbol("JPM", enabled=False, config={"seed": 3})
    with caplog.at_level(logging.WARNING, logger="tradeflow.orchestration"):
        [target] = orch.resolve_targets(_ctx({"symbol": "jpm"}))
    assert target["symbol"] == "JPM" and target["link_config"] == {"seed": 3}
    assert "JPM is disabled in the WebUI; running it anyway because conf.symbol asked for it" in caplog.text


def test_inconsistent_or_mistyped_trigger_conf_fails_in_one_line(webui):
    ko = webui.seed_symbol("KO")
    with pytest.raises(_fail_exception(), match=r"workflow_symbol_id=999 is not KO's id in the WebUI \(1\)"):
        orch.resolve_targets(_ctx({"symbol": "KO", "workflow_symbol_id": 999}))
    with pytest.raises(_fail_exception(), match="workflow_symbol_id must be an integer, got '1; DROP TABLE'"):
        orch.resolve_targets(_ctx({"symbol": "KO", "workflow_symbol_id": "1; DROP TABLE"}))
    with pytest.raises(_fail_exception(), match="max_symbols must be an integer"):
        orch.resolve_targets(_ctx({"max_symbols": "many"}))
    for bad in (".", "..", "-", "^"):
        with pytest.raises(_fail_exception(), match="at least one letter or digit"):
            orch.resolve_targets(_ctx({"symbol": bad}))
    assert ko["id"] == 1


def test_auto_trigger_without_a_backend_cannot_be_checked(monkeypatch):
    monkeypatch.delenv("BACKEND_API_URL", raising=False)
    with pytest.raises(_fail_exception(), match="BACKEND_API_URL is not set: cannot check that KO is enabled"):
        orch.resolve_targets(_ctx({"symbol": "KO", "workflow_symbol_id": 1}))


def _seed_sessions(server) -> None:
    server.seed_symbol("AAPL", priority=5)  # the contract's defaults: 09:30-16:00 America/New_York, weekdays
    server.seed_symbol("SONY", priority=4, workflows=[{
        "dag_id": DAG_ID, "is_active": True, "timezone": "Asia/Tokyo", "session_start": "09:00",
        "session_end": "15:00", "allow_weekend": False}])
    server.seed_symbol("BTC", priority=3, workflows=[{
        "dag_id": DAG_ID, "is_active": True, "timezone": "UTC", "session_start": "22:00",
        "session_end": "18:00", "allow_weekend": True}])  # overnight, weekends too
    server.seed_symbol("BAD", priority=2, workflows=[{
        "dag_id": DAG_ID, "is_active": True, "timezone": "Mars/Olympus", "session_start": "09:30"}])


def test_scheduled_batches_honour_each_links_session(webui, caplog):
    _seed_sessions(webui)
    scheduled = "scheduled__2026-12-02T15:00:00+00:00"
    with caplog.at_level(logging.INFO, logger="tradeflow.orchestration"):
        wednesday = orch.resolve_targets(_ctx(run_id=scheduled), now=WEDNESDAY_10_NY)
        saturday = orch.resolve_targets(_ctx(run_id=scheduled), now=SATURDAY_10_NY)
        forced = orch.resolve_targets(_ctx({"force": True}, run_id=scheduled), now=SATURDAY_10_NY)
        manual = orch.resolve_targets(_ctx(), now=SATURDAY_10_NY)
    assert [t["symbol"] for t in wednesday] == ["AAPL", "BTC"]  # SONY: midnight in Tokyo
    assert [t["symbol"] for t in saturday] == ["BTC"]  # the only one that trades on weekends
    assert [t["symbol"] for t in forced] == [t["symbol"] for t in manual] == ["AAPL", "SONY", "BTC"]
    assert "SONY skipped: Thu 00:00 Asia/Tokyo is outside its session 09:00-15:00" in caplog.text
    assert "AAPL skipped: it is the weekend (Sat 10:00 America/New_York)" in caplog.text
    assert "BAD skipped: WebUI link of BAD.timezone 'Mars/Olympus' is not a known IANA time zone" in caplog.text
    assert "AAPL runs although it is the weekend" in caplog.text and "(force)" in caplog.text


def test_session_rules():
    ny = Session.from_link({"timezone": "America/New_York", "session_start": "09:30", "session_end": "16:00",
                            "allow_weekend": False})
    assert ny.outside(datetime(2026, 12, 2, 14, 30, tzinfo=UTC)) is None  # 09:30 opens
    assert "outside its session" in ny.outside(datetime(2026, 12, 2, 21, 0, tzinfo=UTC))  # 16:00 closes
    assert ny.outside(datetime(2026, 7, 1, 13, 30, tzinfo=UTC)) is None  # 09:30 EDT in summer
    overnight = Session.from_link({"timezone": "UTC", "session_start": "22:00", "session_end": "06:00"})
    assert overnight.outside(datetime(2026, 12, 2, 23, 0, tzinfo=UTC)) is None
    assert overnight.outside(datetime(2026, 12, 2, 12, 0, tzinfo=UTC)) is not None
    assert Session.from_link({}).outside(SATURDAY_10_NY) is None  # no constraint
    for link, field in (({"session_start": "9:30", "session_end": "16:00"}, "session_start"),
                        ({"session_start": "09:30", "session_end": 1600}, "session_end"),
                        ({"allow_weekend": "no"}, "allow_weekend"), ({"timezone": 5}, "timezone"),
                        ({"session_start": "09:30"}, "both be set")):
        with pytest.raises(SessionError, match=field):
            Session.from_link(link)
