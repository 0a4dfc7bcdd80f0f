"""The WebUI's Airflow 2 trigger on Airflow 3 (tradeflow.orchestration.webui_trigger): who may
trigger, and what is refused before Airflow is touched. The run itself: tests/test_webui_trigger.py."""

from __future__ import annotations

import base64

import pytest


BODY = {"conf": {"symbol": "KO", "conid": 8894, "workflow_symbol_id": 3}}  # the backend's exact body


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def client(monkeypatch):
    testclient = pytest.importorskip("fastapi.testclient", reason="fastapi (Airflow 3's api-server) is not installed")
    from tradeflow.orchestration.webui_trigger import create_app

    return testclient.TestClient(create_app())


def test_credentials_are_checked_exactly():
    from tradeflow.orchestration.webui_trigger import credentials_ok

    good = _basic("airflow", "s3cret")["Authorization"]
    assert credentials_ok(good, "airflow", "s3cret")
    for header in (None, "", "Bearer x", "Basic !!!", _basic("airflow", "wrong")["Authorization"],
                   _basic("other", "s3cret")["Authorization"]):
        assert not credentials_ok(header, "airflow", "s3cret")
    assert not credentials_ok(good, None, None)  # unconfigured: nobody


def test_unconfigured_trigger_refuses_and_says_which_settings(client, monkeypatch):
    monkeypatch.delenv("TRADEFLOW_WEBUI_TRIGGER_USER", raising=False)
    answer = client.post("/dags/trademaster_autogen_pipeline_workflow/dagRuns", json=BODY, headers=_basic("a", "b"))
    assert answer.status_code == 401 and "TRADEFLOW_WEBUI_TRIGGER_USER" in answer.json()["detail"]


def test_wrong_password_and_bad_bodies_are_refused_before_airflow(client, monkeypatch):
    monkeypatch.setenv("TRADEFLOW_WEBUI_TRIGGER_USER", "airflow")
    monkeypatch.setenv("TRADEFLOW_WEBUI_TRIGGER_PASSWORD", "s3cret")
    path = "/dags/trademaster_autogen_pipeline_workflow/dagRuns"
    wrong = client.post(path, json=BODY, headers=_basic("airflow", "nope"))
    assert wrong.status_code == 401 and "s3cret" not in wrong.text and wrong.headers["WWW-Authenticate"] == "Basic"
    assert client.post(path, json={"conf": "KO"}, headers=_basic("airflow", "s3cret")).status_code == 400
    extra = client.post(path, json={**BODY, "bogus": 1}, headers=_basic("airflow", "s3cret"))
    assert extra.status_code == 400 and "bogus" in extra.json()["detail"]
