"""The WebUI client's artifact endpoints: listing, look-up and the idempotent upsert.

The service does not deduplicate artifacts, so ``upsert_artifact`` looks the artifact up by
(execution_id, step_name, symbol, type) and PATCHes it, else POSTs; a POST that failed in a way that
may still have stored the row is followed by look-ups, never blindly re-sent. A mixin of
``WebUIClient`` (``tradeflow.webui.client``), which supplies the transport (``_call``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from tradeflow.http.client import HttpError
from tradeflow.webui.errors import WebUIError
from tradeflow.webui.payloads import IDENTITY_KEYS, clean_artifact_payload

log = logging.getLogger("tradeflow.webui")

#: One lock per (backend, identity): concurrent upserts of one identity in this process run one at
#: a time, so the second finds the first's row instead of POSTing a duplicate (the service does not
#: deduplicate; 3 threads once stored 3 rows). Different identities never wait on each other.
_IDENTITY_LOCKS: dict[tuple[str, ...], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _identity_lock(base_url: str, identity: Mapping[str, Any]) -> threading.Lock:
    key = (base_url, *(str(identity[k]) for k in IDENTITY_KEYS))
    with _LOCKS_GUARD:
        return _IDENTITY_LOCKS.setdefault(key, threading.Lock())


class ArtifactEndpoints:
    """``/api/artifacts/``: needs ``_call``, ``base_url``, ``page_size``, ``max_list``, ``settle_s`` and
    ``backoff_s`` from the client it is mixed into."""

    def list_artifacts(
        self,
        *,
        type: str | None = None,  # noqa: A002 - the service's own parameter name
        symbol: str | None = None,
        execution_id: str | None = None,
        step_name: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Artifacts newest first. ``type``/``symbol``/``execution_id`` filter on the service,
        ``step_name`` here (the service has no such filter). Without ``limit`` every match is
        returned; with it, ``limit`` applies on the service, before the ``step_name`` filter.

        The service has no offset and its ``total`` counts only the rows it returned, so neither is
        trusted: the client asks again with a larger limit until a page comes back short (that page
        holds every match), and raises ``WebUIError`` past ``max_list`` rows (narrow the filters)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        params = {k: v for k, v in (("type", type), ("symbol", symbol), ("execution_id", execution_id))
                  if v is not None}
        if limit is not None:
            rows = self._artifact_page(params, limit)
        else:
            rows = self._all_artifacts(params)
        if step_name is not None:
            rows = [row for row in rows if row.get("step_name") == step_name]
        return rows

    def _all_artifacts(self, params: dict[str, str], tries: int | None = None) -> list[dict[str, Any]]:
        """Every match: grow the page until a short one comes back; a clear error past ``max_list``."""
        size = self.page_size
        while True:
            rows = self._artifact_page(params, size, tries=tries)
            if len(rows) < size:
                return rows
            if size >= self.max_list:
                where = ", ".join(f"{k}={v}" for k, v in params.items()) or "no filter"
                raise WebUIError(f"WebUI backend at {self.base_url} holds {self.max_list} or more artifacts for "
                                 f"{where}; the service has no offset, so this listing would be incomplete: "
                                 "narrow the query (type, symbol, execution_id)", endpoint="GET /api/artifacts/")
            size = min(self.max_list, size * 4)

    def _artifact_page(self, params: dict[str, str], limit: int,
                       tries: int | None = None) -> list[dict[str, Any]]:
        body = self._call("GET", "/api/artifacts/", params={**params, "limit": str(limit)}, tries=tries).body
        if (not isinstance(body, dict) or not isinstance(body.get("artifacts"), list)
                or not all(isinstance(row, dict) for row in body["artifacts"])):
            raise self._shape_error("GET /api/artifacts/", 'an object with an "artifacts" list of objects', body)
        rows = body["artifacts"]
        if len(rows) > limit:
            raise self._shape_error("GET /api/artifacts/", f"at most {limit} rows (the limit sent)",
                                    {"rows": len(rows)})
        return rows

    def get_artifact(self, artifact_id: int) -> dict[str, Any] | None:
        """One artifact by id, or None on 404."""
        reply = self._call("GET", f"/api/artifacts/{int(artifact_id)}", accept=(404,))
        return None if reply.status == 404 else reply.body

    def find_artifact(self, *, execution_id: str, step_name: str, symbol: str,
                      type: str) -> dict[str, Any] | None:  # noqa: A002
        """The newest artifact with this identity, or None (duplicates are logged, not fixed)."""
        rows = self.list_artifacts(type=type, symbol=symbol, execution_id=execution_id, step_name=step_name)
        if len(rows) > 1:
            log.warning("WebUI holds %d %s artifacts for %s/%s/%s (ids %s); updating the newest",
                        len(rows), type, symbol, execution_id, step_name, [row.get("id") for row in rows])
        return rows[0] if rows else None

    def upsert_artifact(self, payload: Mapping[str, Any], *, settle_first: bool = False) -> tuple[dict[str, Any], bool]:
        """Create or update the artifact with this payload's identity; return (row, created).

        The payload is cleaned first (``clean_artifact_payload``). If the POST fails in a way that
        may still have stored the row (timeout, dropped connection, 5xx), every retry first looks
        the artifact up again and stops there if it is found, so a retry never duplicates.
        ``settle_first``: an earlier process's POST of this identity may still be in flight (it was
        killed mid-persist): look for the row for ``settle_s`` before the first POST too.
        """
        body = clean_artifact_payload(payload)
        identity = {key: body.get(key) for key in IDENTITY_KEYS}
        if missing := [key for key, value in identity.items() if not value]:
            raise ValueError(f"upsert_artifact needs {', '.join(IDENTITY_KEYS)} to be idempotent;"
                             f" missing {', '.join(missing)}")
        with _identity_lock(self.base_url, identity):
            return self._upsert_locked(body, identity, settle_first=settle_first)

    def _settled(self, identity: dict[str, Any], settle_s: float, why: str) -> dict[str, Any] | None:
        """The row with this identity, looked up until found or ``settle_s`` has passed."""
        settle_until = time.monotonic() + settle_s
        looks = 0
        while True:
            looks += 1
            try:
                rows = self._all_artifacts({k: identity[k] for k in ("type", "symbol", "execution_id")}, tries=1)
            except WebUIError:
                rows = None  # still failing: keep waiting within the settle window
            if rows is not None and (found := next(
                    (row for row in rows if row.get("step_name") == identity["step_name"]), None)):
                return found
            if time.monotonic() >= settle_until:
                if settle_s:
                    log.warning("%s; the %s artifact was not found after %d look-ups over %.0f s: posting it",
                                why, identity["type"], looks, settle_s)
                return None
            time.sleep(min(2.0, max(0.05, self.backoff_s)))

    def _upsert_locked(self, body: dict[str, Any], identity: dict[str, Any], *,
                       settle_first: bool = False) -> tuple[dict[str, Any], bool]:
        existing = (self._settled(identity, self.settle_s, "an earlier attempt's POST may be in flight")
                    if settle_first else self.find_artifact(**identity))
        if existing is not None:
            return self._patch_artifact(existing["id"], body), False

        def already_stored(failure: HttpError) -> dict[str, Any] | None:
            """Look the artifact up before any second POST. When the answer was lost (read timeout,
            dropped connection, a proxy's 502/504), the service may still be inserting the row: keep
            looking for ``settle_s`` before the POST is sent again."""
            return self._settled(identity, self.settle_s if failure.maybe_applied else 0.0,
                                 f"WebUI POST /api/artifacts/ {failure.kind}")

        reply = self._call("POST", "/api/artifacts/", json_body=body, before_retry=already_stored)
        row = reply.body
        if not isinstance(row, dict) or not isinstance(row.get("id"), int):
            raise self._shape_error("POST /api/artifacts/", 'the stored row with an integer "id"', row)
        log.info("WebUI %s artifact #%s stored for %s (execution %s)", body["type"], row["id"],
                 body.get("symbol"), body.get("execution_id"))
        return row, True

    def _patch_artifact(self, artifact_id: int, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/artifacts/{int(artifact_id)}"
        row = self._call("PATCH", path, json_body=body).body
        if not isinstance(row, dict) or "id" not in row:
            row = self._call("GET", path).body  # a PATCH that answers without the row
        log.info("WebUI %s artifact #%s updated for %s (execution %s)", body["type"], artifact_id,
                 body.get("symbol"), body.get("execution_id"))
        return row


__all__ = ["ArtifactEndpoints"]
