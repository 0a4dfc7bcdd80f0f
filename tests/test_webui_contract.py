"""The test server's service behaviour that issue 24 measured on the real WebUI: its image route,
the chart answer that copies the llm fields, the market-data page, and the auto-trigger it posts
to Airflow (the real service's exact request). Fast: loopback servers only."""

from __future__ import annotations

import base64
import time

import requests

from tests.support.httpserver import BackgroundHTTPServer, Reply
from tests.support.webui import WebUIServer

LINEAGE = {"symbol": "KO", "execution_id": "manual__2026-12-07", "run_id": "r" * 32, "experiment_id": "1"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
SNAPSHOT = {"symbol": "KO", "timeframe": "1 day", "bar_count": 60, "latest_price": 60.0,
            "bars": [{"date": f"2026-01-{i % 28 + 1:02d}", "open": i, "high": i, "low": i, "close": float(i),
                      "volume": None} for i in range(60)]}


def _chart(server: WebUIServer, **fields) -> int:
    return server.seed_artifact({"name": "chart", "type": "chart", "chart_type": "price", **LINEAGE, **fields})["id"]


def test_the_image_route_serves_only_a_plain_path_or_the_minio_object(webui_server, tmp_path):
    png = tmp_path / "price.png"
    png.write_bytes(PNG)
    base = webui_server.url
    assert webui_server._backend.object_store is None
    plain = _chart(webui_server, image_path=str(png))
    answer = requests.get(f"{base}/api/artifacts/{plain}/image", timeout=10)
    assert answer.status_code == 200 and answer.content == PNG and answer.headers["Content-Type"] == "image/png"
    uri = _chart(webui_server, image_path=png.as_uri(), metadata={"market_data_snapshot": SNAPSHOT})
    assert requests.get(f"{base}/api/artifacts/{uri}/image", timeout=10).status_code == 500  # redraw, no MinIO
    bare = _chart(webui_server, image_path=png.as_uri())
    assert requests.get(f"{base}/api/artifacts/{bare}/image", timeout=10).status_code == 409
    stored = _chart(webui_server, image_path=str(png), chart_data={"minio_url": "http://minio:9000/charts/KO/x.png"})
    assert requests.get(f"{base}/api/artifacts/{stored}/image", timeout=10).status_code == 503  # no MinIO client
    objects = {("charts", "KO/x.png"): PNG[::-1]}
    with WebUIServer(object_store=lambda bucket, key: objects[(bucket, key)]) as with_minio:
        row = with_minio.seed_artifact({"name": "c", "type": "chart", **LINEAGE, "image_path": str(png),
                                        "chart_data": {"minio_url": "http://minio:9000/charts/KO/x.png"}})
        served = requests.get(f"{with_minio.url}/api/artifacts/{row['id']}/image", timeout=10)
        assert served.content == PNG[::-1]  # minio_url wins over a readable image_path


def test_a_chart_answer_carries_its_executions_llm_fields_and_market_data_is_a_page(webui_server):
    webui_server.seed_artifact({"name": "llm", "type": "llm", "prompt": "question: KO?", "response": "HOLD.",
                                "model_name": "rules", **LINEAGE})
    chart = _chart(webui_server, image_path="/x.png", metadata={"market_data_snapshot": SNAPSHOT})
    row = requests.get(f"{webui_server.url}/api/artifacts/{chart}", timeout=10).json()
    assert (row["prompt"], row["response"], row["model_name"], row["prompt_length"]) == ("question: KO?", "HOLD.",
                                                                                          "rules", 13)
    page = requests.get(f"{webui_server.url}/api/artifacts/{chart}/market-data", timeout=10).json()
    assert page["count"] == len(page["data"]) == 50 and page["data"][0]["close"] == 59.0  # newest first
    assert len(requests.get(f"{webui_server.url}/api/artifacts/{chart}/market-data?limit=80",
                            timeout=10).json()["data"]) == 60


class _Airflow(BackgroundHTTPServer):
    """Records what reaches "Airflow"; answers like Airflow 3 does to the old path."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status, self.seen = status, []

    def handle(self, request):
        self.seen.append({"method": request.method, "path": request.path, "auth": request.headers.get("Authorization"),
                          "body": request.json()})
        return Reply(self.status, {"detail": "Method Not Allowed"} if self.status == 405 else {"state": "queued"})


def test_creating_a_symbol_posts_the_real_services_airflow_2_request_and_still_answers_201():
    for status in (200, 405):
        with _Airflow(status) as airflow, WebUIServer(airflow_url=airflow.url, airflow_auth=("airflow", "pw")) as webui:
            created = requests.post(f"{webui.url}/api/workflow-symbols/", timeout=30, json={
                "symbol": "KO", "conid": 8894, "workflows": [{"dag_id": "trademaster_autogen_pipeline_workflow"}]})
            assert created.status_code == 201  # also when Airflow refused: the service only prints the error
            assert airflow.seen == [{"method": "POST", "path": "/api/v1/dags/trademaster_autogen_pipeline_workflow/dagRuns",
                                     "auth": "Basic " + base64.b64encode(b"airflow:pw").decode(),
                                     "body": {"conf": {"symbol": "KO", "conid": 8894, "workflow_symbol_id": 1}}}]
            deadline = time.monotonic() + 5
            while "airflow_status" not in webui.auto_triggers[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert webui.auto_triggers[0]["airflow_status"] == status
