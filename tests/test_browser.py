"""What a person sees, in a real browser: the README's main command (`bash scripts/demo.sh`, from
a fresh shell, no --experiment-name) makes a store; `mlflow server` serves it; headless Chromium
(Debian's package, driven by Playwright) must show the pipeline run in `trademaster_autogen` with
its stages nested, its name and description, the review's trace and a plot.

Screenshots are kept under ``test-output/browser/`` (``TRADEFLOW_TEST_OUTPUT`` overrides the root).
Skips, saying why, where Chromium or Playwright is missing (scripts/test.sh installs Chromium).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that make Chromium start cleanly as root on a machine with a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("TRADEFLOW_TEST_OUTPUT", REPO / "test-output")) / "browser"
UI_TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's main command from a fresh shell, into a store of its own."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it where apt works)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    store = tmp_path_factory.mktemp("demo_store")
    uri = f"sqlite:///{store / 'mlruns.db'}"
    env = {"HOME": os.environ.get("HOME", str(store)), "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": uri,
           "EXTRA_PARAMS": "-P epochs=1"}
    started = time.perf_counter()
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    print(f"demo.sh: {time.perf_counter() - started:.0f} s, load {os.getloadavg()}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    client = MlflowClient(uri)
    deadline = time.monotonic() + 60  # the Default stub is deleted once `mlflow run` has closed it
    while client.search_runs(["0"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    yield {"uri": uri, "store": store, "client": client, "stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture(scope="module")
def runs(demo):
    client = demo["client"]
    experiment = client.get_experiment_by_name("trademaster_autogen")
    parent = client.search_runs([experiment.experiment_id], "tags.`tradeflow.stage` = 'pipeline'")[0]
    children = {c.data.tags["mlflow.project.entryPoint"]: c for c in client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    return {"experiment": experiment, "parent": parent, "children": children}


@pytest.fixture(scope="module")
def server(demo):
    port = _free_port()
    log = (demo["store"] / "server.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", demo["uri"],
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, (demo["store"] / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            pytest.fail("mlflow server did not answer /health within 300 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_the_main_command_lands_on_real_data_in_the_configured_experiment(demo, runs):
    client = demo["client"]
    assert "Data: AAPL from csv:data/trademaster/dj30_2020_2021.csv" in demo["stdout"]
    assert "SYNTHETIC" not in demo["stdout"] + demo["stderr"]
    assert client.search_runs(["0"]) == [], "a run was left in Default"
    parent, children = runs["parent"], runs["children"]
    assert parent.info.status == "FINISHED" and set(children) == {"train_backtest", "inference", "review", "persist"}
    train = children["train_backtest"]
    assert train.data.tags["tradeflow.synthetic_data"] == "false"
    assert train.data.params["data_source"] == "csv:data/trademaster/dj30_2020_2021.csv"
    # artifacts beside the store, not in ./mlruns of the folder the command ran from
    assert runs["experiment"].artifact_location == (demo["store"] / "mlartifacts").as_uri()
    assert (demo["store"] / "mlartifacts" / train.info.run_id / "artifacts" / "plots" / "equity.png").is_file()
    assert not (REPO / "mlruns").exists()


def test_a_person_sees_the_run_tree_its_description_the_review_trace_and_a_plot(server, runs):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    experiment_id = runs["experiment"].experiment_id
    parent, children = runs["parent"], runs["children"]
    parent_name = parent.info.run_name
    assert parent_name.startswith("AAPL · pipeline · 2021-12-31 → ")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            # 1. the experiment's runs: the pipeline run, its four stages nested under it
            page.goto(f"{server}/#/experiments/{experiment_id}/runs")
            page.get_by_text(parent_name).first.wait_for()
            _close_assistant(page)
            assert page.get_by_text("trademaster_autogen").first.is_visible()
            parent_row = page.locator(f'[row-id="{parent.info.run_id}"]').first
            for child in children.values():
                assert page.locator(f'[row-id="{child.info.run_id}"]').count() == 0  # collapsed under the parent
            parent_row.locator("button").first.click()
            for child in children.values():  # ag-grid renders a row once per column block
                page.locator(f'[row-id="{child.info.run_id}"]').first.wait_for()
            page.get_by_text("AAPL · train_backtest · dqn 1 ep").first.wait_for()
            page.screenshot(path=str(SHOTS / "01_runs_nested.png"))

            # 2. the parent's page: its name, and a description that says what happened and why
            page.goto(f"{server}/#/experiments/{experiment_id}/runs/{parent.info.run_id}")
            page.get_by_text("Model vs buy-and-hold on the test split").first.wait_for(state="attached")
            _close_assistant(page)
            show_more = page.get_by_text("Show more")
            if show_more.count():
                show_more.first.click()
                page.get_by_text("Show less").first.wait_for()
            body = page.inner_text("body")
            assert parent_name in body
            for text in ("Data: real market data from csv:", "Why:", "Model vs buy-and-hold on the test split",
                         "AAPL · train_backtest · dqn 1 ep", "mlflow run . -e pipeline"):
                assert text in body, text
            page.set_viewport_size({"width": 1600, "height": 1800})  # the whole description, not the page's width
            page.screenshot(path=str(SHOTS / "02_parent_description.png"))
            page.set_viewport_size({"width": 1600, "height": 1000})

            # 3. the review's trace: one span per message, the decision as output
            review = children["review"]
            trace_id = review.data.tags["review.trace_id"]
            page.goto(f"{server}/#/experiments/{experiment_id}/runs/{review.info.run_id}/traces")
            page.get_by_text(trace_id).first.wait_for()
            _close_assistant(page)  # before opening the trace: its drawer has a Close button too
            page.get_by_text(trace_id).first.click()
            page.get_by_text("review AAPL").first.wait_for()
            for span in ("01 user: TextMessage", "technical_analyst", "risk_reviewer", "decision_maker",
                         "guardrail: FinalDecision"):
                page.get_by_text(span, exact=False).first.wait_for()
            page.screenshot(path=str(SHOTS / "03_review_trace.png"))

            # 4. a plot: the equity curve of the test split, rendered
            train = children["train_backtest"]
            page.goto(f"{server}/#/experiments/{experiment_id}/runs/{train.info.run_id}/artifacts/plots/equity.png")
            page.wait_for_function("() => Array.from(document.images).some(i => i.complete && i.naturalWidth >= 800)")
            _close_assistant(page)
            page.screenshot(path=str(SHOTS / "04_equity_plot.png"))
        finally:
            browser.close()
    for name in ("01_runs_nested", "02_parent_description", "03_review_trace", "04_equity_plot"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000, name


def _close_assistant(page) -> None:
    """The MLflow Assistant side panel opens by default and covers part of the page."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        try:
            close.first.click(timeout=5_000)
        except Exception:  # noqa: BLE001 - a panel that is already gone is fine
            pass
