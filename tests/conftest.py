"""Shared fixtures: real stores and real servers, created per test in tmp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The data paths, re-exported under the names tests/support/data.py gives them (one spelling).
from tests.support.data import (  # noqa: F401 - re-exported
    BTC_CSV,
    DJ30_SOURCE,
    DJ30_TEST,
    DJ30_VALID,
    REPO,
    SHARED_DATA,
    SHARED_DIR,
    shared_data_missing,
)
from tests.support.stores import sqlite_store, tracking_to

# A shell started with `env -i` exports no PATH (bash keeps its default unexported), so every
# subprocess the tests start (mlflow's `bash -c`, git, airflow) would find nothing. Give the session
# the OS default then; the helpers put this interpreter's venv in front of it.
if not os.environ.get("PATH"):
    os.environ["PATH"] = "/usr/local/bin:/usr/bin:/bin"

# Environment variables a developer's shell may carry that would leak into tests.
_LEAKY = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
          "BACKEND_API_URL", "BACKEND_API_TOKEN", "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in _LEAKY:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("TRADEFLOW_"):
            monkeypatch.delenv(name, raising=False)


def require_shared_data() -> None:
    if reason := shared_data_missing():
        pytest.skip(reason)


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store, created once here before any subprocess fans out."""
    with tracking_to(sqlite_store(tmp_path), monkeypatch) as uri:
        yield uri


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> tuple[str, str]:
    """One SQLite store per module with the experiment ``tiny`` of the toy MLflow projects
    (tests/test_projects.py, tests/test_forkserver.py): ``(uri, experiment_id)``. Per module, not
    per test: creating a store runs MLflow's migrations (seconds)."""
    from mlflow.tracking import MlflowClient

    uri = sqlite_store(tmp_path_factory.mktemp("store"), "tiny")
    return uri, MlflowClient(uri).get_experiment_by_name("tiny").experiment_id


@pytest.fixture
def tiny_experiment(tiny_store, monkeypatch):
    """The ``tiny`` experiment's id, with this process and its children tracking to its store and
    ``TEST_PID`` = this process (a toy child walking its ancestry stops there)."""
    uri, experiment_id = tiny_store
    monkeypatch.setenv("TEST_PID", str(os.getpid()))
    with tracking_to(uri, monkeypatch):
        yield experiment_id


def mlflow_run(entry_point: str, params: dict[str, str], *, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``mlflow run . -e <entry_point> --env-manager local`` as a subprocess (the real CLI)."""
    cmd = [str(Path(sys.executable).with_name("mlflow")), "run", str(REPO), "-e", entry_point,
           "--env-manager", "local", "--experiment-name", "trademaster_autogen"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    # an experiment or run another test (or an in-process run) left in the environment would fight
    # --experiment-name; only what the caller passes (or monkeypatches) reaches the CLI
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    full_env = {**inherited, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
from tests.support.webui import webui_server  # noqa: E402,F401  (fixture)


#: markers of the tests that need an upstream installed by scripts/install_*.sh
UPSTREAM_MARKS = ("trademaster", "finagent_upstream")


def skip_kind(reason: str) -> str:
    """Why an upstream test skipped, in two words: the data or the upstream is missing (or neither)."""
    if "shared data not found" in reason:
        return "missing ../shared data"
    if "not importable" in reason or "unavailable" in reason or "not installed" in reason:
        return "missing upstream"
    return "not applicable here"


def pytest_terminal_summary(terminalreporter):
    """Upstream tests never skip silently: each skip reason is printed (without -rs), by kind."""
    groups: dict[tuple[str, str], int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if not any(mark in report.keywords for mark in UPSTREAM_MARKS):
            continue
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        groups[(skip_kind(reason), reason)] = groups.get((skip_kind(reason), reason), 0) + 1
    if groups:
        terminalreporter.section("upstream tests skipped", yellow=True)
        for (kind, reason), count in sorted(groups.items()):
            terminalreporter.write_line(f"{count} skipped, {kind}: {reason}")
