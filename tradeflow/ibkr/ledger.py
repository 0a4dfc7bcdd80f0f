"""The allocation lock and the intent book shared by every run of every strategy on one account.

Why: risk limits only hold if no two allocations read the account at the same time. Three
concurrent runs once each read the positions before anyone had traded and together put MSFT at
29 % of equity against a 10 % cap. ``max_active_runs=1`` does not bind a second scheduler, a manual
``airflow dags test`` or a back-to-back run whose first orders are still PreSubmitted. So the order
step allocates inside ``hold(...)``: one exclusive lock per account (``filelock``, a maintained
cross-process lock; released by the OS when a holder dies), and under it reads positions and working
orders, sizes, places and records, so the next holder counts what this one placed.

The book (a JSON file beside the lock, written only under it) remembers the final outcome of each
idempotency key (``tradeflow.ibkr.orders.client_order_id``): a broker rejection or a refused
confirmation question is final for that key and is never re-sent by an Airflow retry or a later run
of the same session. What was *placed* is not trusted from the book: the broker's own order list
(looked up by cOID) is the truth for that.

Where: ``IBKR_STATE_DIR`` (default ``<tmp>/tradeflow-ibkr``). Workers on several hosts must point it
at one shared filesystem; the cOID look-up still keeps one intent one order across hosts.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tradeflow.ibkr.errors import BrokerError

ENV_STATE_DIR = "IBKR_STATE_DIR"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(ENV_STATE_DIR) or Path(tempfile.gettempdir()) / "tradeflow-ibkr")


class AllocationBusy(BrokerError):
    """Another run held the account's allocation lock for longer than the wait allowed."""


@dataclass
class Book:
    """The intent book of one account, readable and writable while its lock is held."""

    path: Path
    entries: dict[str, dict[str, Any]]

    def get(self, coid: str) -> dict[str, Any] | None:
        return self.entries.get(coid)

    def record(self, coid: str, **fields: Any) -> None:
        self.entries[coid] = {**fields, "at": datetime.now(timezone.utc).isoformat()}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.path)


@contextmanager
def hold(account: str, *, timeout_s: float, environ: Mapping[str, str] | None = None) -> Iterator[Book]:
    """The account's allocation lock (waits up to ``timeout_s``), with its intent book."""
    from filelock import FileLock, Timeout

    root = state_dir(environ)
    root.mkdir(parents=True, exist_ok=True)
    name = _SAFE.sub("_", account)
    lock = FileLock(str(root / f"{name}.lock"))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise AllocationBusy(f"account {account}: another run held the allocation lock ({lock.lock_file}) for more "
                             f"than {timeout_s:g} s; not allocating") from None
    try:
        path = root / f"{name}.intents.json"
        try:
            entries = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            raise BrokerError(f"intent book {path} is unreadable: fix or remove it (it records rejected orders)") from None
        yield Book(path, entries if isinstance(entries, dict) else {})
    finally:
        lock.release()
