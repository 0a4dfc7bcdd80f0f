"""What a person sees in the WebUI: its own page templates (kihiu-ho/ibkr-trading-webui at the commit
``scripts/install_webui_pages.sh`` pins, rendered with Jinja2 as its FastAPI app does, Alpine.js from
npm) in headless Chromium, against the test WebUI server holding the artifacts our persist step
builds from a real (1-epoch) training, inference and rules review on the shipped AAPL data, with our
real price chart. Screenshots of the signal, llm and chart pages go to ``test-output/webui-pages/``.

Skips, saying why, without Chromium, Playwright or the fetched templates."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

PAGES = Path.home() / ".cache" / "tradeflow" / "webui-pages-e04a6ef"  # scripts/install_webui_pages.sh
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("TRADEFLOW_TEST_OUTPUT", REPO / "test-output")) / "webui-pages"
MLFLOW_UI = "http://mlflow.example:5000"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Our three artifacts on the test WebUI server, as persist sends them (chart copied where the
    service reads it: TRADEFLOW_WEBUI_CHART_DIR)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it where apt works)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    if not (PAGES / "frontend" / "templates" / "artifact_detail.html").is_file():
        pytest.skip(f"the WebUI's page templates are not in {PAGES} (bash scripts/install_webui_pages.sh)")
    from tests.support.webui import WebUIServer
    from tests.unit.test_step_compute import _cfg, _infer, _review, _review_record, _train
    from tradeflow.data import load_market_data
    from tradeflow.features import compute_features, split_for_run
    from tradeflow.steps.inference import price_chart
    from tradeflow.steps.persist import mlflow_links, plan_persist
    from tradeflow.webui import WebUIClient

    work = tmp_path_factory.mktemp("webui_pages")
    market = load_market_data(_cfg())
    trained = _train(split_for_run(compute_features(market.bars), _cfg()), work / "train")
    inferred = _infer(trained, market)
    evidence, reviewed = _review(inferred)
    png = work / "store" / "plots" / "price.png"
    png.parent.mkdir(parents=True)
    price_chart(market.bars, inferred.evidence).savefig(png)
    record = _review_record(evidence, reviewed)
    record.update(chart_uri=png.as_uri(), market_data_snapshot=inferred.snapshot)
    from types import SimpleNamespace

    run = SimpleNamespace(info=SimpleNamespace(run_id="1" * 32, experiment_id="7"),
                          data=SimpleNamespace(tags={"mlflow.parentRunId": "2" * 32},
                                               params={"review.evidence_uri": f"runs:/{'3' * 32}/evidence.json"}))
    record["links"] = mlflow_links(run, ui_url=MLFLOW_UI)
    chart_dir = work / "webui-charts"
    plan = plan_persist(record, execution_id="manual__2026-12-07T05:00:00+00:00", dag_id="trademaster_autogen_pipeline_workflow",
                        task_id="run_symbol", chart_dir=str(chart_dir))
    Path(plan.chart_copy[1]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, plan.chart_copy[1])  # what publish_chart does from the MLflow store
    with WebUIServer() as server:
        client = WebUIClient(server.url)
        rows = {payload["type"]: client.upsert_artifact(payload)[0] for payload in plan.payloads}
        yield {"server": server, "rows": rows, "png": png, "reviewed": reviewed, "plan": plan}


def _browse(published, shots):
    from playwright.sync_api import sync_playwright

    from jinja2 import Environment, FileSystemLoader

    templates = Environment(loader=FileSystemLoader(str(PAGES / "frontend" / "templates")), autoescape=True)
    base = published["server"].url

    def page_route(route):
        match = re.search(r"/artifacts/(\d+)$", route.request.url.split("?", 1)[0])
        html = templates.get_template("artifact_detail.html").render(request=None, artifact_id=int(match.group(1)))
        route.fulfill(status=200, content_type="text/html", body=html)

    def static(route):
        path = PAGES / "frontend" / "static" / route.request.url.split("/static/", 1)[1].split("?", 1)[0]
        route.fulfill(status=200, path=str(path)) if path.is_file() else route.fulfill(status=404)

    SHOTS.mkdir(parents=True, exist_ok=True)
    seen = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/cdn.jsdelivr.net/**", lambda r: r.fulfill(
            status=200, content_type="application/javascript", path=str(PAGES / "alpinejs" / "dist" / "cdn.min.js")))
        page.route("**/cdnjs.cloudflare.com/**", lambda r: r.fulfill(status=200, content_type="text/css", body=""))
        page.route(re.compile(r"^http://127\.0\.0\.1:\d+/artifacts/\d+$"), page_route)
        page.route(re.compile(r"^http://127\.0\.0\.1:\d+/static/.*"), static)
        try:
            for kind in shots:
                page.goto(f"{base}/artifacts/{published['rows'][kind]['id']}")
                page.wait_for_function("window.artifactDetailData && window.artifactDetailData.artifact", timeout=30_000)
                if kind == "chart":
                    page.wait_for_function("[...document.images].some(i => i.complete && i.naturalWidth > 0 "
                                           "&& i.src.includes('/image'))", timeout=30_000)
                page.wait_for_timeout(300)
                page.screenshot(path=str(SHOTS / f"{kind}.png"), full_page=True)
                seen[kind] = {"text": page.inner_text("body"),
                              "images": page.eval_on_selector_all("img", "els => els.map(i => [i.src, i.naturalWidth])"),
                              "height": page.evaluate("document.body.scrollHeight")}
        finally:
            browser.close()
    return seen


def test_the_webuis_own_pages_show_our_decision_reasoning_links_and_chart(published):
    seen = _browse(published, ("signal", "llm", "chart"))
    rows, decision = published["rows"], published["reviewed"].decision["decision"]
    signal = seen["signal"]["text"]
    assert decision["action"] in signal and f"{round(decision['confidence'] * 100)}%" in signal
    data = rows["signal"]["signal_data"]
    for name in ("entry_price", "stop_loss", "take_profit", "confidence_level", "is_actionable"):
        assert f'"{name}"' in signal  # the service's llm_analysis names, in the page's dump
    if data.get("risk_reward_ratio"):
        assert "Risk/Reward" in signal and str(data["risk_reward_ratio"]) in signal
    assert f"{MLFLOW_UI}/#/experiments/7/runs/{'1' * 32}" in signal
    llm = seen["llm"]["text"]
    assert "Full evidence (JSON): " + f"{MLFLOW_UI}/#/experiments/7/runs/{'3' * 32}/artifacts/evidence.json" in llm
    assert decision["rationale"].split(".")[0][:40] in llm.replace("\n", " ")
    assert max(len(line) for line in rows["llm"]["prompt"].splitlines()) < 300  # text, not one JSON line
    chart = seen["chart"]
    assert "Timeframe" in chart["text"] and "Bars Count" in chart["text"] and "120" in chart["text"]
    served = [width for src, width in chart["images"] if "/image" in src]
    assert served and served[0] > 0
    import requests

    image = requests.get(f"{published['server'].url}/api/artifacts/{rows['chart']['id']}/image", timeout=10)
    assert image.content == published["png"].read_bytes()  # our chart, byte for byte
    print({kind: view["height"] for kind, view in seen.items()}, "px tall; screenshots in", SHOTS)
