"""The MLflow link a WebUI artifact carries opens that run in a real MLflow UI: a real ``mlflow
server`` (SQLite store in tmp_path, proxied artifacts, 127.0.0.1), ``TRADEFLOW_MLFLOW_UI_URL`` set to
it, the four steps in process on the shipped AAPL data (1 epoch, rules review), persist to the test
WebUI server; then the ``review_run`` address from the signal artifact is opened in headless
Chromium and, once MLflow's single-page app has loaded, the rendered page names the run (its id and
name) and the symbol. Screenshot: ``test-output/mlflow-ui/review-run.png``.

Skips, saying why, without Chromium or Playwright (as tests/test_webui_pages.py)."""

from __future__ import annotations

import json

import pytest

from tests.support.data import PROJECT_DJ30_CSV
from tests.test_webui_pages import CHROMIUM, CHROMIUM_ARGS, SHOTS

pytestmark = pytest.mark.slow

EXECUTION = "manual__2026-12-07T06:00:00+00:00"


def test_the_mlflow_link_of_a_webui_artifact_opens_that_run_in_the_mlflow_ui(tmp_path, monkeypatch):
    from pathlib import Path

    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it where apt works)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    import mlflow
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    from tests.support.servers import MlflowServer
    from tests.support.webui import WebUIServer
    from tradeflow.config import resolve_config
    from tradeflow.model import resolve_model
    from tradeflow.steps.inference import inference_step, training_context
    from tradeflow.steps.persist import persist_step
    from tradeflow.steps.review import review_step
    from tradeflow.steps.train_backtest import train_backtest_step

    with MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", base_dir=tmp_path / "server") as server, \
            WebUIServer() as webui:
        for name, value in {"MLFLOW_TRACKING_URI": server.url, "TRADEFLOW_MLFLOW_UI_URL": server.url,
                            "BACKEND_API_URL": webui.url, "TRADEFLOW_WEBUI_CHART_DIR": str(tmp_path / "charts")}.items():
            monkeypatch.setenv(name, value)
        mlflow.set_tracking_uri(server.url)
        try:
            cfg = resolve_config({"symbol": "AAPL", "data_source": f"csv:{PROJECT_DJ30_CSV}", "epochs": 1,
                                  "reviewer": "rules"})
            train_backtest_step(cfg)
            resolved = resolve_model(cfg, None)
            served = inference_step(cfg, resolved, training_context(resolved.training_run_id))
            evidence = json.loads(mlflow.artifacts.load_text(served["evidence_uri"]))
            reviewed = review_step(cfg, evidence, served["evidence_uri"])
            persist_step(cfg, reviewed["run_id"], execution_id=EXECUTION, dag_id="trademaster_autogen_pipeline_workflow",
                         task_id="run_symbol")
        finally:
            mlflow.set_tracking_uri(None)
        run = MlflowClient(server.url).get_run(reviewed["run_id"])
        signal = next(a for a in webui.artifacts() if a["type"] == "signal" and a["execution_id"] == EXECUTION)
        llm = next(a for a in webui.artifacts() if a["type"] == "llm" and a["execution_id"] == EXECUTION)
        link = signal["signal_data"]["mlflow"]["review_run"]
        assert link == f"{server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        assert signal["signal_data"]["mlflow"]["review_run_uri"] == f"runs:/{run.info.run_id}"
        assert link in llm["response"]  # the link the llm page shows is the same address

        SHOTS.parent.joinpath("mlflow-ui").mkdir(parents=True, exist_ok=True)
        shot = SHOTS.parent / "mlflow-ui" / "review-run.png"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(link, timeout=60_000)
                # the SPA renders the run page from the REST API: wait for the run's name in the DOM
                page.wait_for_function("name => document.body && document.body.innerText.includes(name)",
                                       arg=run.info.run_name, timeout=90_000)
                page.get_by_text("review.evidence_uri").first.wait_for(timeout=60_000)  # the parameters table
                page.wait_for_timeout(500)
                page.screenshot(path=str(shot), full_page=True)
                text = page.inner_text("body")
                url = page.url
            finally:
                browser.close()
    assert url.startswith(link.split("#")[0]) and run.info.run_id in url
    assert run.info.run_name in text and run.info.run_id in text
    assert run.info.run_name.startswith("AAPL")
    assert '"symbol":"AAPL"' in run.data.params["config"] and '"symbol":"AAPL"' in text  # the symbol, as a param
    assert "review.evidence_uri" in text and served["evidence_uri"] in text  # its parameters, rendered
    assert shot.stat().st_size > 10_000
