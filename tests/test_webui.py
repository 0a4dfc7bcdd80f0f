"""The WebUI client against a real HTTP server that speaks the contract, quirks and faults included."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DJ30_TEST, REPO, require_shared_data
from tests.support.webui import WebUIServer, trademaster_bars, webui_server  # noqa: F401 - fixture
from tradeflow.webui import (
    DAG_ID,
    STEP_LLM,
    STEP_SIGNAL,
    WebUIClient,
    WebUIError,
    WebUINotFoundError,
    chart_artifact,
    llm_artifact,
    signal_artifact,
)

TOKEN = "s3cr3t-token-do-not-log"


def fast_client(server: WebUIServer, **kwargs) -> WebUIClient:
    """Short timeouts and backoff, so fault tests take milliseconds."""
    options = {"timeout": (0.5, 2.0), "retries": 3, "backoff_s": 0.01, **kwargs}
    return WebUIClient(server.url, **options)


def signal_data(action: str = "BUY", score: float = 72.0) -> dict:
    band = "HIGH" if score >= 80 else "MEDIUM" if score >= 50 else "LOW"
    return {"symbol": "NVDA", "action": action, "confidence": band, "confidence_score": score,
            "reasoning": "momentum and volume confirm the breakout", "key_factors": ["trend"],
            "trend": "bullish", "support_level": 120.5, "resistance_level": 140.0,
            "suggested_entry_price": 131.2, "suggested_stop_loss": 124.0, "suggested_take_profit": 145.0,
            "r_multiple": None, "position_size_percent": None, "timeframe_analyzed": "1 day",
            "model_used": "rules", "generated_at": "2026-11-23T08:00:00Z"}


def nvda_signal(execution_id: str = "manual__2026-11-23", run_id: str = "run-1", **overrides) -> dict:
    args = {"symbol": "NVDA", "action": "BUY", "confidence": 0.72, "signal_data": signal_data(),
            "run_id": run_id, "experiment_id": 1, "execution_id": execution_id, "task_id": "persist"}
    return signal_artifact(**{**args, **overrides})


# --- workflow symbols -----------------------------------------------------------------------------


def test_assigned_symbols_keep_enabled_active_links_of_this_dag_in_priority_order(webui_server):
    server = webui_server
    server.seed_symbol("NVDA", priority=5, conid=4815747, config={"trademaster": {"epochs": 3}})
    server.seed_symbol("AAPL", priority=5, conid=265598)  # same priority: symbol order
    server.seed_symbol("MSFT", priority=9)
    server.seed_symbol("TSLA", priority=10, enabled=False)  # disabled symbol
    server.seed_symbol("AMD", priority=8, is_active=False)  # inactive link, still listed by enabled_only
    server.seed_symbol("IBM", priority=7, dag_id="some_other_dag")
    server.seed_symbol("GOOG", priority=1, workflows=[{"dag_id": "some_other_dag"},
                                                       {"dag_id": DAG_ID, "config": {"mode": "inference"}}])
    client = fast_client(server)

    listed = [row["symbol"] for row in client.list_workflow_symbols(enabled_only=True)]
    assert listed == ["MSFT", "AMD", "IBM", "AAPL", "NVDA", "GOOG"]  # TSLA is disabled; AMD's link is not
    assert "TSLA" in [row["symbol"] for row in client.list_workflow_symbols(enabled_only=False)]

    assigned = client.assigned_symbols(DAG_ID, max_symbols=10)
    assert [a["symbol"] for a in assigned] == ["MSFT", "AAPL", "NVDA", "GOOG"]
    nvda = assigned[2]
    assert nvda["conid"] == 4815747 and nvda["priority"] == 5
    assert nvda["config"] == {"trademaster": {"epochs": 3}}
    assert nvda["workflow_symbol_id"] == {row["symbol"]: row["id"] for row in server.symbols()}["NVDA"]
    assert assigned[0]["config"] == {}  # a null link config comes back as an empty layer
    assert assigned[3]["config"] == {"mode": "inference"}

    assert [a["symbol"] for a in client.assigned_symbols(DAG_ID, max_symbols=2)] == ["MSFT", "AAPL"]
    # every call used the trailing-slash URL: no 307 round trip
    assert {(r["path"], r["status"]) for r in server.requests} == {("/api/workflow-symbols/", 200)}


def test_trailing_slash_quirk_is_real_and_avoided(webui_server):
    raw = requests.get(f"{webui_server.url}/api/workflow-symbols", params={"enabled_only": "true"},
                       allow_redirects=False, timeout=5)
    assert raw.status_code == 307
    assert raw.headers["Location"].endswith("/api/workflow-symbols/?enabled_only=true")
    webui_server.clear_requests()
    assert fast_client(webui_server).list_workflow_symbols() == []
    assert [r["path"] for r in webui_server.requests] == ["/api/workflow-symbols/"]


def test_single_symbol_lookup_and_link_config(webui_server, caplog):
    webui_server.seed_symbol("NVDA", workflows=[{"dag_id": DAG_ID, "is_active": False, "config": {"epochs": 1}}])
    client = fast_client(webui_server)
    assert client.get_workflow_symbol("nvda")["symbol"] == "NVDA"  # the service upper-cases the path
    assert client.get_workflow_symbol("ZZZZ") is None
    with caplog.at_level(logging.WARNING, logger="tradeflow.webui"):
        assert client.get_workflow_symbol("BRK.B") is None
    assert "^[A-Z]{1,10}$" in caplog.text and "BRK.B" in caplog.text
    assert [r["status"] for r in webui_server.requests] == [200, 404, 400]
    assert client.link_config("NVDA", DAG_ID) == {"epochs": 1}  # inactive link: overrides still apply
    assert client.link_config("NVDA", "other_dag") is None
    assert client.link_config("ZZZZ", DAG_ID) is None


def test_creating_an_active_link_records_the_backend_auto_trigger(webui_server):
    fired = []
    webui_server.on_trigger = fired.append
    url = f"{webui_server.url}/api/workflow-symbols/"
    body = {"symbol": "nvda", "conid": 4815747, "priority": 3,
            "workflows": [{"dag_id": DAG_ID, "is_active": True}, {"dag_id": "other", "is_active": False}]}
    created = requests.post(url, json=body, timeout=5)
    assert created.status_code == 201 and created.json()["symbol"] == "NVDA"
    conf = {"symbol": "NVDA", "conid": 4815747, "workflow_symbol_id": created.json()["id"]}
    # the real service's quirk (contract): the inactive link fires too; the DAG run must check
    expected = [{"dag_id": DAG_ID, "conf": conf}, {"dag_id": "other", "conf": conf}]
    assert webui_server.auto_triggers == expected and fired == expected
    assert requests.post(url, json=body, timeout=5).status_code == 409
    assert requests.post(url, json={**body, "symbol": "BRK.B"}, timeout=5).status_code == 400
    assert requests.post(url, json={**body, "symbol": "AMD", "workflows": []}, timeout=5).status_code == 400
    assert requests.post(url, json={"symbol": "AMD"}, timeout=5).status_code == 422
    assert len(webui_server.auto_triggers) == 2  # seeding and failed creates trigger nothing


# --- artifacts ------------------------------------------------------------------------------------


def test_unknown_key_is_a_500_on_the_service_but_the_client_drops_it(webui_server, caplog):
    payload = {**nvda_signal(), "review_run_id": "abc"}
    raw = requests.post(f"{webui_server.url}/api/artifacts/", json=payload, timeout=5)
    assert (raw.status_code, raw.json()) == (500, {"detail": "'review_run_id' is an invalid keyword argument for Artifact"})
    bad_type = requests.post(f"{webui_server.url}/api/artifacts/", json={"name": "x", "type": "note"}, timeout=5)
    assert bad_type.status_code == 400

    with caplog.at_level(logging.WARNING, logger="tradeflow.webui"):
        row, created = fast_client(webui_server).upsert_artifact({**payload, "prompt": "not a signal column"})
    assert created and "review_run_id" in caplog.text and "prompt" in caplog.text
    assert "review_run_id" not in webui_server.requests[-1]["body_keys"]
    stored = webui_server.artifacts()
    assert len(stored) == 1 and stored[0]["id"] == row["id"] and stored[0]["confidence"] == 0.72


def test_a_retry_after_a_killed_attempt_waits_for_its_in_flight_post_instead_of_duplicating(webui_server):
    # the killed attempt's POST is still sleeping in the service when the retry looks (a worker
    # SIGKILLed mid-persist, the retry forked warm within seconds): stored 1 s after the look-up
    import threading

    from tradeflow.webui.payloads import clean_artifact_payload

    def post(payload: dict) -> None:  # the other process's POST (this process's identity lock is not its)
        requests.post(f"{webui_server.url}/api/artifacts/", json=clean_artifact_payload(payload), timeout=5).raise_for_status()

    late = threading.Timer(1.0, post, args=(nvda_signal(run_id="killed-try"),))
    late.start()
    row, created = fast_client(webui_server, settle_s=10).upsert_artifact(nvda_signal(run_id="retry"), settle_first=True)
    late.join()
    assert not created and row["run_id"] == "retry"  # found the late row and patched it
    assert len(webui_server.artifacts()) == 1

    # without the hint the same race stores two rows: what settle_first is for
    late = threading.Timer(1.0, post, args=(nvda_signal(run_id="killed-try", execution_id="manual__race"),))
    late.start()
    assert fast_client(webui_server).upsert_artifact(nvda_signal(run_id="retry", execution_id="manual__race"))[1]
    late.join()
    assert len(webui_server.artifacts()) == 3


def test_upsert_is_idempotent_and_attaches_new_lineage(webui_server):
    client = fast_client(webui_server)
    first, created = client.upsert_artifact(nvda_signal(run_id="run-1"))
    assert created and isinstance(first["id"], int) and first["created_at"]
    second, created = client.upsert_artifact(nvda_signal(run_id="run-2"))
    assert not created and second["id"] == first["id"] and second["run_id"] == "run-2"
    assert [r["method"] for r in webui_server.requests] == ["GET", "POST", "GET", "PATCH"]
    assert len(client.list_artifacts(execution_id="manual__2026-11-23")) == 1

    # same execution, other step or type: separate artifacts; another execution: a new one
    llm = llm_artifact(symbol="NVDA", prompt="review NVDA", response="buy the breakout", model_name="rules",
                       transcript_uri="runs:/run-1/autogen_conversation.jsonl", run_id="run-1",
                       experiment_id="1", execution_id="manual__2026-11-23")
    assert client.upsert_artifact(llm)[1] is True
    assert client.upsert_artifact(nvda_signal(execution_id="scheduled__2026-11-24"))[1] is True
    assert client.find_artifact(execution_id="manual__2026-11-23", step_name=STEP_LLM, symbol="NVDA",
                                type="llm")["response"] == "buy the breakout"
    assert len(webui_server.artifacts()) == 3


def test_list_artifacts_pages_past_the_limit_and_filters_step_name(webui_server):
    for index in range(7):
        webui_server.seed_artifact({"name": f"a{index}", "type": "signal", "symbol": "NVDA", "execution_id": "e",
                                    "step_name": STEP_SIGNAL if index % 2 else "other_step"})
    client = fast_client(webui_server, page_size=3)
    rows = client.list_artifacts(type="signal", symbol="NVDA", execution_id="e")
    assert [r["name"] for r in rows] == [f"a{i}" for i in range(6, -1, -1)]  # newest first, all of them
    # ``total`` counts only the returned rows: the client grows the page until one comes back short
    assert [r["query"]["limit"] for r in webui_server.requests] == ["3", "12"]
    assert len(client.list_artifacts(execution_id="e", step_name=STEP_SIGNAL)) == 3
    assert len(client.list_artifacts(execution_id="e", limit=2)) == 2


def test_post_lost_after_commit_is_not_sent_twice(webui_server):
    """A 504 after the service stored the row: the retry finds it instead of posting a duplicate."""
    webui_server.set_mode("error_then_recover", count=1, status=504, after=True, methods=["POST"])
    row, created = fast_client(webui_server).upsert_artifact(nvda_signal())
    assert created and [a["id"] for a in webui_server.artifacts()] == [row["id"]]
    assert [(r["method"], r["status"]) for r in webui_server.requests] == [("GET", 200), ("POST", 504), ("GET", 200)]


def test_builders_refuse_what_the_webui_would_misrender():
    with pytest.raises(ValueError, match="0..1"):
        nvda_signal(confidence=72)
    with pytest.raises(ValueError, match="does not match confidence_score"):
        nvda_signal(signal_data={**signal_data(), "confidence": "HIGH"})
    with pytest.raises(ValueError, match="disagrees with signal_data.confidence_score"):
        nvda_signal(confidence=0.9)
    with pytest.raises(ValueError, match="reasoning"):
        nvda_signal(signal_data={**signal_data(), "reasoning": "short"})
    with pytest.raises(ValueError, match="run_id"):
        nvda_signal(run_id="")
    with pytest.raises(ValueError, match="transcript_uri"):
        llm_artifact(symbol="NVDA", prompt="p", response="r", model_name="m", run_id="r", experiment_id="1",
                     execution_id="e")
    signal = nvda_signal()
    assert signal["workflow_id"] == signal["dag_id"] == DAG_ID and signal["experiment_id"] == "1"
    assert signal["step_name"] == STEP_SIGNAL and signal["metadata"] == {"analysis_method": "trademaster_autogen"}
    chart = chart_artifact(symbol="NVDA", image_path=Path("/tmp/price.png"), chart_type="price",
                           run_id="r", experiment_id=1, execution_id="e")
    assert chart["image_path"] == "/tmp/price.png" and chart["step_name"] == "trademaster_autogen_chart"


def test_strict_server_enforces_trading_signal_rules():
    with WebUIServer(strict_signals=True) as server:
        bad = {**nvda_signal(), "confidence": 72}
        answer = requests.post(f"{server.url}/api/artifacts/", json=bad, timeout=5)
        assert answer.status_code == 422 and "0..1" in json.dumps(answer.json())
        assert fast_client(server).upsert_artifact(nvda_signal())[1] is True


# --- faults ---------------------------------------------------------------------------------------


def test_transient_errors_are_retried_until_the_service_recovers(webui_server):
    webui_server.seed_symbol("NVDA")
    webui_server.set_mode("error_then_recover", count=2, status=[502, 503])
    webui_server.clear_requests()
    assert [a["symbol"] for a in fast_client(webui_server).assigned_symbols(DAG_ID, max_symbols=5)] == ["NVDA"]
    assert [r["status"] for r in webui_server.requests] == [502, 503, 200]


def test_service_down_fails_with_one_clear_line_then_recovers(webui_server):
    client = fast_client(webui_server)
    webui_server.stop()  # connection refused
    with pytest.raises(WebUIError) as refused:
        client.list_workflow_symbols()
    message = str(refused.value)
    assert message.startswith(f"WebUI backend at {webui_server.url} unreachable after 3 tries: "
                              "GET /api/workflow-symbols/: ConnectionError")
    assert "Connection refused" in message and "\n" not in message and len(message) < 300
    webui_server.start()  # same port
    assert client.list_workflow_symbols() == []

    webui_server.set_mode("down")  # listener up, connections dropped without an answer
    with pytest.raises(WebUIError, match="unreachable after 3 tries"):
        client.list_workflow_symbols()
    assert [r["fault"] for r in webui_server.requests[-3:]] == ["down"] * 3


def test_slow_service_times_out(webui_server):
    webui_server.set_mode("slow", delay_s=2.0)
    started = time.monotonic()
    with pytest.raises(WebUIError, match=r"timed out after 2 tries: GET /api/artifacts/: ReadTimeout"):
        fast_client(webui_server, timeout=(0.5, 0.2), retries=2).list_artifacts()
    assert time.monotonic() - started < 1.5  # the client gave up; it did not wait for the server


def test_malformed_json_names_the_endpoint(webui_server):
    webui_server.set_mode("malformed")
    with pytest.raises(WebUIError, match=r"answered GET /api/artifacts/ with malformed JSON \(200"):
        fast_client(webui_server).list_artifacts()
    assert len(webui_server.requests) == 1  # not retried: a 200 will not change its mind


def test_429_retry_after_is_honoured_when_small_and_fails_fast_when_large(webui_server):
    webui_server.set_mode("error_then_recover", count=1, status=429, retry_after=1)
    started = time.monotonic()
    assert fast_client(webui_server).list_artifacts() == []
    assert time.monotonic() - started >= 1.0
    webui_server.set_mode("error_then_recover", count=1, status=429, retry_after=120)
    with pytest.raises(WebUIError, match="retry after 120 s"):
        fast_client(webui_server).list_artifacts()


def test_token_is_sent_but_never_logged(webui_server, caplog, monkeypatch):
    monkeypatch.setenv("BACKEND_API_URL", webui_server.url + "/")
    monkeypatch.setenv("BACKEND_API_TOKEN", TOKEN)
    client = WebUIClient.from_env(retries=2, backoff_s=0.01, timeout=(0.5, 2))
    assert client is not None and client.base_url == webui_server.url
    with caplog.at_level(logging.DEBUG):
        client.upsert_artifact(nvda_signal())
        webui_server.set_mode("error_then_recover", count=2, status=503)
        with pytest.raises(WebUIError) as failed:
            client.list_artifacts()
    assert webui_server.requests[0]["authorization"] == f"Bearer {TOKEN}"
    assert caplog.records and TOKEN not in caplog.text
    assert TOKEN not in str(failed.value) and TOKEN not in repr(client)
    assert WebUIClient.from_env({}) is None and WebUIClient.from_env({"BACKEND_API_URL": " "}) is None


# --- market data & standalone ----------------------------------------------------------------------


def test_market_data_cache_shape(webui_server):
    require_shared_data()
    bars = trademaster_bars(DJ30_TEST, "AAPL")
    with pytest.raises(ValueError, match="fill_volume"):
        webui_server.seed_market_data("AAPL", bars)  # TradeMaster CSVs carry no volume
    webui_server.seed_market_data("AAPL", bars.iloc[:100], conid=265598, fill_volume=0, expired=True)
    webui_server.seed_market_data("AAPL", bars, conid=265598, fill_volume=0)
    cache = fast_client(webui_server).get_market_data_cache("AAPL")
    assert cache["symbol"] == "AAPL" and cache["count"] == 2
    newest, older = cache["data"]
    assert set(newest) == {"conid", "source", "cached_at", "expires_at", "is_expired", "ohlcv_data"}
    assert (newest["is_expired"], older["is_expired"]) == (False, True)
    first = newest["ohlcv_data"]["data"][0]
    assert set(first) == {"t", "o", "h", "l", "c", "v"} and first["t"] == 1609718400000  # 2021-01-04 UTC
    assert len(newest["ohlcv_data"]["data"]) == len(bars)
    with pytest.raises(WebUINotFoundError, match="case must match"):
        fast_client(webui_server).get_market_data_cache("aapl")


def test_standalone_process_serves_state_file_and_takes_control_over_http(tmp_path):
    state = tmp_path / "state.json"
    bar = {"t": 1609718400000, "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10}
    state.write_text(json.dumps({"symbols": [{"symbol": "NVDA", "priority": 2, "workflows": [{"dag_id": DAG_ID}]}],
                                 "market_data": [{"symbol": "NVDA", "bars": [bar]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.webui", "--port", "0", "--state-file", str(state)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        client = WebUIClient(url, retries=3, backoff_s=0.01)
        assert [a["symbol"] for a in client.assigned_symbols(DAG_ID, max_symbols=5)] == ["NVDA"]
        assert client.get_market_data_cache("NVDA")["count"] == 1
        fault = {"mode": "error_then_recover", "count": 1, "status": 500}
        control = requests.post(f"{url}/__control__", json=fault, timeout=5)
        assert control.json()["mode"] == "error_then_recover"
        assert client.list_artifacts() == []
        logged = requests.get(f"{url}/__control__/requests", timeout=5).json()["requests"]
        assert [(r["path"], r["status"]) for r in logged][-2:] == [("/api/artifacts/", 500), ("/api/artifacts/", 200)]
        assert requests.post(f"{url}/__control__", json={"mode": "sideways"}, timeout=5).status_code == 400
        # a real outage steered from outside: the listener stops, then comes back on the same port
        outage = {"mode": "down", "stop_listener": True, "for_s": 0.3}
        assert requests.post(f"{url}/__control__", json=outage, timeout=5).status_code == 200
        time.sleep(0.1)
        with pytest.raises(WebUIError, match="Connection refused"):
            WebUIClient(url, retries=1).list_artifacts()
        assert WebUIClient(url, retries=5, backoff_s=0.1).list_artifacts() == []
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_the_batch_names_every_linked_symbol_it_leaves_out_and_why(webui_server, caplog):
    from tradeflow.orchestration import RunContext
    from tradeflow.orchestration.targets import resolve_targets

    server = webui_server
    server.seed_symbol("AAPL", priority=9)
    server.seed_symbol("MSFT", priority=5)
    server.seed_symbol("NVDA", priority=1)  # beyond max_symbols=2
    server.seed_symbol("AMD", priority=8, is_active=False)
    server.seed_symbol("TSLA", priority=7, enabled=False)
    ctx = RunContext(dag_id=DAG_ID, run_id="manual__2026-12-07", conf={"max_symbols": 2})
    with caplog.at_level("WARNING", logger="tradeflow"):
        targets = resolve_targets(ctx, environ={"BACKEND_API_URL": server.url})
    assert [t["symbol"] for t in targets] == ["AAPL", "MSFT"]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("excluded from this batch"))
    assert line.startswith("excluded from this batch (3): ")
    assert "AMD: its link to trademaster_autogen_pipeline_workflow is inactive" in line
    assert "TSLA: disabled in the WebUI" in line and "NVDA: beyond max_symbols=2 (priority 1)" in line
