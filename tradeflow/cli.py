"""What every entry point shares: flag parsing, config resolution and honest exits.

Entry points stay thin: parse flags -> resolve the config (before any run or expensive work) ->
do the step inside ``tracking.stage_run`` -> print a one-line error and exit non-zero on failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

import mlflow
from mlflow.tracking import MlflowClient

from tradeflow.config import RunConfig
from tradeflow.errors import UserError
from tradeflow.runs.records import Tag, mark_failed
from tradeflow.settings import log_level, resolve_with_env
from tradeflow.runs.tracking import configure_tracking, moved_note, one_line

log = logging.getLogger("tradeflow")

#: Errors whose message is already the one line a user needs (no traceback); anything else is a
#: bug and keeps its traceback (the run is marked FAILED either way).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UserError,)


def setup_logging() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    level = log_level()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    from tradeflow.redaction import RedactingFilter
    from tradeflow.runs.tracking import quiet_credentialed_urls, tracking_uri

    quiet_credentialed_urls(tracking_uri())  # before any run starts (MLflow prints URLs on end_run)

    for handler in logging.getLogger().handlers:  # no log line carries a secret or URL userinfo
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # Third-party chatter that buries our progress lines.
    for noisy in ("alembic", "mlflow.store.db.utils", "httpx", "autogen_agentchat", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # autogen_core logs a traceback for every model failure the review turns into a labelled
    # fallback (recorded in the transcript and tags); keep it out of the step's output.
    logging.getLogger("autogen_core").setLevel(logging.CRITICAL)


def parser(description: str, flags: Sequence[str], *, required: Sequence[str] = ()) -> argparse.ArgumentParser:
    """``--flag value`` for each MLproject parameter; "" (the MLproject default) means unset."""
    p = argparse.ArgumentParser(description=description)
    for flag in flags:
        p.add_argument(f"--{flag}", default="", required=flag in required)
    return p


def config_from_flags(args: argparse.Namespace, *, extra_layers: Sequence[Mapping[str, object] | None] = ()) -> RunConfig:
    """Resolve ``RunConfig`` from defaults < environment < ``extra_layers`` < flags.

    Flags that are not config keys (``model_uri``, ``evidence_uri`` ...) are left out.
    """
    from tradeflow.config import FLAT_KEYS, TOP_LEVEL_KEYS

    known = TOP_LEVEL_KEYS | set(FLAT_KEYS) | {"config"}
    layer = {k: v for k, v in vars(args).items() if k in known}
    return resolve_with_env(*extra_layers, layer)


def fail_before_work(message: str) -> None:
    """Refuse bad input: one line on stderr, exit 2; a run pre-created by ``mlflow run`` is
    marked FAILED with the reason (never left RUNNING)."""
    _fail_pending_run(message, permanent=True)
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _fail_pending_run(message: str, *, permanent: bool = False) -> None:
    """Mark the run ``mlflow run`` created for us FAILED with the reason, if it is still open
    (``permanent``: tagged so that Airflow does not retry it)."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        configure_tracking()
        client = MlflowClient()
        if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
            mark_failed(client, run_id, message, extra_tags={Tag.FAILURE_PERMANENT: "true"} if permanent else None)
    except Exception as exc:  # the store itself may be the problem; the exit still says why
        log.warning("could not mark run %s FAILED: %s", run_id, one_line(exc))


class Terminated(BaseException):
    """SIGTERM (Airflow timeout, a cancelled parent): unwinds like Ctrl-C, so the step's run is
    closed FAILED with the reason and a stage this process started is cancelled with it."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signal.Signals(signum).name}")


def main_wrapper(step: Callable[[], object]) -> None:
    """Run a step; an expected error becomes ``error: <one line>`` and exit code 1; SIGTERM
    becomes ``Terminated`` (exit 143) instead of an exit that skips every ``finally``."""
    setup_logging()
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        step()
        if note := moved_note():
            print(note, file=sys.stderr, flush=True)
    except SystemExit:
        raise
    except Terminated as exc:
        _fail_pending_run(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    except EXPECTED_ERRORS as exc:
        log.debug("step failed", exc_info=True)
        _fail_pending_run(one_line(exc), permanent=getattr(exc, "retryable", True) is False)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:  # a bug: the traceback stays (Python prints it), the run still ends FAILED
        _fail_pending_run(one_line(exc))
        raise
    finally:
        if mlflow.active_run() is not None:  # defensive: never leave a run RUNNING
            mlflow.end_run(status="FAILED")
