"""The user-error base class and what the entry points do with errors: a ``UserError`` is one line,
anything else keeps its traceback, and either way a run ``mlflow run`` opened ends FAILED; a
tracking store that is down is reported as such, not as "is not a run". Real SQLite stores and a
closed loopback port; the entry points are called in-process (their ``main``)."""

from __future__ import annotations

import signal
import socket

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tradeflow import cli
from tradeflow.errors import InputError, NotFoundError, ServiceError, StepError, UserError


@pytest.fixture(autouse=True)
def _keep_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_the_project_errors_are_user_errors_and_keep_their_builtin_bases():
    from review_agents.signal_payload import SignalError
    from tradeflow.errors import ConfigError
    from tradeflow.data.base import DataError
    from tradeflow.http.client import HttpError
    from tradeflow.pipeline.run import StageFailed
    from tradeflow.pipeline.cache import StageLeaseTimeout
    from tradeflow.pipeline.reproduce import NotReproducible
    from tradeflow.model import ModelNotFound
    from tradeflow.runs.tracking import WrongExperiment
    from tradeflow.webui import WebUIError

    for cls, builtin in [(ConfigError, ValueError), (DataError, ValueError), (SignalError, ValueError),
                         (NotReproducible, ValueError), (WrongExperiment, ValueError), (ModelNotFound, LookupError),
                         (WebUIError, RuntimeError), (HttpError, RuntimeError), (StageFailed, RuntimeError),
                         (StageLeaseTimeout, RuntimeError)]:
        assert issubclass(cls, UserError) and issubclass(cls, builtin), cls
    assert cli.EXPECTED_ERRORS == (UserError,)
    assert not issubclass(KeyError, cli.EXPECTED_ERRORS) and not issubclass(OSError, cli.EXPECTED_ERRORS)


@pytest.fixture
def pending_run(tracking_store, monkeypatch):
    """A RUNNING run as ``mlflow run`` leaves it for the entry point (``MLFLOW_RUN_ID``)."""
    client = MlflowClient(tracking_store)
    experiment = client.get_experiment_by_name("trademaster_autogen").experiment_id
    run_id = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return client, run_id


@pytest.mark.parametrize("error", [InputError("symbol 'x y' is not a symbol"), NotFoundError("no model trademaster_X"),
                                   ServiceError("WebUI backend at http://h unreachable"), StepError("stage review failed")])
def test_a_user_error_is_one_line_and_fails_the_run(pending_run, capsys, error):
    client, run_id = pending_run

    def step():
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli.main_wrapper(step)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"error: {error}" in err and "Traceback" not in err
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["tradeflow.failure_reason"] == str(error)


def test_a_bug_keeps_its_traceback_and_still_fails_the_run(pending_run):
    client, run_id = pending_run

    def step():
        return {}["model_uri"]  # a plain KeyError: a bug, not a user's mistake

    with pytest.raises(KeyError):  # propagates: Python prints the traceback and exits 1
        cli.main_wrapper(step)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["tradeflow.failure_reason"] == "KeyError: 'model_uri'"
    assert mlflow.active_run() is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("entry_point,flag", [("persist", "--review_run_id"), ("reproduce", "--run_id")])
def test_a_tracking_store_that_is_down_is_named_not_called_a_missing_run(entry_point, flag, monkeypatch, capsys):
    import importlib

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    module = importlib.import_module(f"entrypoints.{entry_point}")
    try:
        with pytest.raises(SystemExit) as exit_:
            module.main([flag, "0" * 32])
    finally:
        mlflow.set_tracking_uri(None)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: tracking store {uri} could not be read for ")
    assert "is not a run" not in err


@pytest.mark.parametrize("entry_point,flag", [("persist", "--review_run_id"), ("reproduce", "--run_id")])
def test_an_unknown_run_id_is_called_not_a_run(entry_point, flag, tracking_store, capsys):
    import importlib

    module = importlib.import_module(f"entrypoints.{entry_point}")
    with pytest.raises(SystemExit) as exit_:
        module.main([flag, "0" * 32])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {flag.lstrip('-')} '{'0' * 32}' is not a run in {tracking_store}"
