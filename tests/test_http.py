"""The one HTTP layer (tradeflow/http/client.py) and the WebUI client on top of it: what is retried and
what is not, the total deadline, the size cap, listing without ``total``, and lost POST answers.
Real HTTP servers on 127.0.0.1 (the contract server and a hostile raw-socket one)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.hostile_server import HostileServer
from tests.support.webui import WebUIServer, webui_server  # noqa: F401 - fixture
from tradeflow.http.client import HttpClient, HttpError, Limits, Reply, RetryPolicy, is_transient
from tradeflow.webui import STEP_CHART, STEP_LLM, STEP_SIGNAL, WebUIClient, WebUIError, chart_artifact, llm_artifact

from tests.test_webui import fast_client, nvda_signal  # noqa: E402 - shared builders


def reply(status: int, body: bytes = b"", **headers: str) -> Reply:
    return Reply(status, headers, body, "http://x")


def test_the_policy_names_what_is_transient():
    assert all(is_transient(reply(status)) for status in (502, 503, 504))
    assert is_transient(reply(429, **{"Retry-After": "2"}))
    assert not is_transient(reply(429))  # a rate limit that does not say when: not ours to guess
    assert is_transient(reply(500, b"Internal Server Error"))  # a crash that says nothing
    unknown_key = reply(500, b'{"detail": "\'foo\' is an invalid keyword argument for Artifact"}')
    assert not is_transient(unknown_key)
    assert not is_transient(reply(500, b'{"detail": "bad value for \'confidence\'"}'), {"confidence": 72})
    assert not any(is_transient(reply(status)) for status in (400, 401, 403, 404, 409, 422))


def test_a_payload_500_is_not_retried_and_says_so(webui_server):
    client = fast_client(webui_server, retries=4)
    with pytest.raises(WebUIError) as caught:
        client._call("POST", "/api/artifacts/", json_body={**nvda_signal(), "review_run_id": "x"})
    message = str(caught.value)
    assert "rejected POST /api/artifacts/ with 500 (the payload was refused; not retried)" in message
    assert "invalid keyword argument" in message and "\n" not in message
    assert [r["status"] for r in webui_server.requests] == [500]  # once, not four times


def test_429_without_retry_after_is_not_retried(webui_server):
    webui_server.set_mode("error_then_recover", count=1, status=429)
    with pytest.raises(WebUIError, match="rejected GET /api/artifacts/ with 429"):
        fast_client(webui_server).list_artifacts()
    assert len(webui_server.requests) == 1


@pytest.mark.parametrize("mode", ["trickle", "trickle_body"])
def test_a_trickling_server_is_cut_at_the_total_deadline(mode):
    """1 byte every 0.2 s: every single read is well within the read timeout, the request is not."""
    body = [{"symbol": "NVDA", "enabled": True, "workflows": []}] * 20
    with HostileServer(mode, body=body, interval_s=0.2) as server:
        http = HttpClient(policy=RetryPolicy(attempts=2, backoff_s=0.01),
                          limits=Limits(connect_s=1, read_s=1, deadline_s=1.5))
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            http.send("GET", server.url + "/api/workflow-symbols/")
        elapsed = time.monotonic() - started
        assert caught.value.kind == "deadline exceeded" and caught.value.tries == 1  # not retried
        assert "within 1.5 s" in caught.value.reason
        assert 1.4 <= elapsed < 3.0, elapsed  # the deadline, not 20 s of trickle
        time.sleep(0.5)
        assert server.open_connections == 0  # the client hung up; nothing kept reading


@pytest.mark.parametrize("mode", ["flood", "flood_chunked"])
def test_an_oversized_answer_is_refused_without_reading_it(mode):
    import resource

    with HostileServer(mode, size=50 * 1024 * 1024) as server:
        http = HttpClient(limits=Limits(max_bytes=2 * 1024 * 1024))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(HttpError) as caught:
            http.send("GET", server.url + "/big")
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert caught.value.kind == "answered too much" and not caught.value.transient
        assert caught.value.tries == 1 and len(server.requests) == 1
        assert server.bytes_sent < 50 * 1024 * 1024
        assert grown_mib < 40, grown_mib


def test_webui_client_is_bounded_by_the_same_layer():
    with HostileServer("trickle", body=[], interval_s=0.3) as server:
        client = WebUIClient(server.url, timeout=(0.5, 1.0), deadline_s=1.0, retries=1)
        started = time.monotonic()
        with pytest.raises(WebUIError, match=r"deadline exceeded after 1 try: GET /api/workflow-symbols/"):
            client.list_workflow_symbols()
        assert time.monotonic() - started < 2.5


# --- listing and idempotency at the real service's scale -----------------------------------------------


def _seed_unrelated(server: WebUIServer, count: int) -> None:
    for index in range(count):
        server.seed_artifact({"name": f"old {index}", "type": ("signal", "llm", "chart")[index % 3],
                              "symbol": "NVDA" if index % 2 else "AAPL", "execution_id": f"old-{index % 50}",
                              "step_name": (STEP_SIGNAL, STEP_LLM, STEP_CHART)[index % 3]})


def _payloads(execution_id: str, run_id: str) -> list[dict]:
    lineage = {"symbol": "NVDA", "run_id": run_id, "experiment_id": "1", "execution_id": execution_id}
    return [nvda_signal(execution_id=execution_id, run_id=run_id),
            llm_artifact(prompt="review NVDA", response="buy the breakout", model_name="rules",
                         transcript_uri=f"runs:/{run_id}/autogen_conversation.jsonl", **lineage),
            chart_artifact(image_path=f"/store/{run_id}/plots/price.png", chart_type="price", **lineage)]


def test_listing_ignores_total_and_finds_every_match_among_thousands(webui_server):
    _seed_unrelated(webui_server, 1200)
    raw = webui_server.requests  # seeding logs nothing
    assert raw == []
    client = fast_client(webui_server)
    nvda_signals = client.list_artifacts(type="signal", symbol="NVDA")
    assert len(nvda_signals) == 200  # every 6th of 1200
    everything = client.list_artifacts()
    assert len(everything) == 1200 and [r["id"] for r in everything] == sorted((r["id"] for r in everything),
                                                                                  reverse=True)
    assert [r["query"]["limit"] for r in webui_server.requests] == ["500", "500", "2000"]
    # the service's quirk is real on this server: total counts the page, not the matches
    page = client._call("GET", "/api/artifacts/", params={"limit": "1"}).body
    assert page["total"] == 1

    capped = fast_client(webui_server, page_size=100, max_list=400)
    with pytest.raises(WebUIError, match="400 or more artifacts for no filter; .* narrow the query"):
        capped.list_artifacts()


def test_persist_twice_with_one_execution_id_leaves_one_of_each_among_thousands(webui_server):
    _seed_unrelated(webui_server, 1200)
    client = fast_client(webui_server)
    created = [client.upsert_artifact(p)[1] for p in _payloads("manual__2026-12-02", "run-1")]
    again = [client.upsert_artifact(p) for p in _payloads("manual__2026-12-02", "run-2")]
    assert created == [True, True, True] and [flag for _, flag in again] == [False, False, False]
    mine = [a for a in webui_server.artifacts() if a["execution_id"] == "manual__2026-12-02"]
    assert sorted(a["type"] for a in mine) == ["chart", "llm", "signal"]
    assert {a["run_id"] for a in mine} == {"run-2"}  # the second persist updated the lineage
    assert len(webui_server.artifacts()) == 1203


def test_a_post_stored_after_the_read_timeout_is_found_not_posted_again(webui_server):
    """The former strict xfail of the fault suite, at unit scale: the service takes 1.5 s to store a
    POST, the client times out after 0.5 s, then looks the artifact up until it appears."""
    webui_server.set_mode("slow", delay_s=1.5, methods=["POST"], for_s=10)
    client = fast_client(webui_server, timeout=(0.5, 0.5), retries=3, settle_s=5)
    started = time.monotonic()
    row, created = client.upsert_artifact(nvda_signal())
    assert created and time.monotonic() - started < 5
    posts = [r for r in webui_server.requests if r["method"] == "POST"]
    assert len(posts) == 1 and [a["id"] for a in webui_server.artifacts()] == [row["id"]]


def test_a_post_that_never_landed_is_sent_again_after_the_settle_window(webui_server):
    webui_server.set_mode("down", methods=["POST"], for_s=0.6)  # the connection drops, nothing stored
    client = fast_client(webui_server, retries=3, settle_s=0.8)
    row, created = client.upsert_artifact(nvda_signal())
    assert created and len(webui_server.artifacts()) == 1
    methods = [r["method"] for r in webui_server.requests]
    assert methods.count("POST") == 2 and methods[-1] == "POST"


def test_concurrent_upserts_of_one_identity_are_serialised_by_nobody_but_found_after(webui_server):
    """Two writers racing on one identity may both POST (the service has no unique key); the next
    upsert updates the newest and logs the duplicate instead of adding a third."""
    client = fast_client(webui_server)
    barrier = threading.Barrier(2)

    def write() -> None:
        barrier.wait()
        client.upsert_artifact(nvda_signal())

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    before = len(webui_server.artifacts())
    client.upsert_artifact(nvda_signal(run_id="run-3"))
    assert len(webui_server.artifacts()) == before <= 2


def test_the_deadline_setting_is_read_through_the_settings_model():
    """Unset: each client keeps its own deadline; set: one value for all; bad: the settings model's
    one-line error naming the variable (not a second parser with its own rules)."""
    from tradeflow.errors import ConfigError
    from tradeflow.http.client import deadline_from_env

    assert deadline_from_env(12.0, {}) == 12.0
    assert deadline_from_env(12.0, {"TRADEFLOW_HTTP_DEADLINE_S": " "}) == 12.0
    assert deadline_from_env(12.0, {"TRADEFLOW_HTTP_DEADLINE_S": "5"}) == 5.0
    for bad, why in (("nan", "finite number"), ("0", "greater than 0"), ("4000", "less than or equal to 3600")):
        with pytest.raises(ConfigError, match=rf"^TRADEFLOW_HTTP_DEADLINE_S='{bad}': .*{why}"):
            deadline_from_env(12.0, {"TRADEFLOW_HTTP_DEADLINE_S": bad})
