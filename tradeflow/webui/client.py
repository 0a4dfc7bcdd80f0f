"""The client for the trading WebUI backend (``shared/contracts/webui-backend.md``), over HTTP only.

What it adds on top of the project's HTTP layer (``tradeflow.http``: one retry policy, a total
deadline and a size cap per request), and why:

- One clear line in ``WebUIError`` when the service cannot be used: Airflow shows that line.
- Idempotent artifact writes: the service does not deduplicate, so ``upsert_artifact`` looks the
  artifact up by (execution_id, step_name, symbol, type) and PATCHes it, else POSTs; a POST that
  failed ambiguously is never blindly re-sent (the row may already exist).
- Payloads are filtered to the contract's columns: any other key makes the service answer 500.
- The bearer token (``BACKEND_API_TOKEN``) lives in the session headers only; it is never logged
  and never part of an error message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tradeflow.errors import InputError, ServiceError
from tradeflow.http import HttpClient, HttpError, Limits, Reply, RetryPolicy, deadline_from_env, snippet
from tradeflow.webui.payloads import IDENTITY_KEYS, _plain, clean_artifact_payload

log = logging.getLogger(__name__)

__all__ = ["PAGE_SIZE", "SESSION_KEYS", "WebUIClient", "WebUIError", "WebUINotFoundError"]

#: A link's trading session as the WebUI stores it (read by ``tradeflow.sessions``).
SESSION_KEYS: Final = ("timezone", "session_start", "session_end", "allow_weekend")
PAGE_SIZE: Final = 500
#: A listing never asks for more rows than this; past it the query must be narrowed.
MAX_LIST: Final = 50_000
#: How long an ambiguous POST failure (answer lost) is followed by look-ups before posting again.
SETTLE_S: Final = 45.0


class WebUIError(ServiceError):
    """The backend could not be used; ``str(err)`` is one line naming the URL and the endpoint."""

    def __init__(self, message: str, *, endpoint: str = "", status: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.endpoint = endpoint
        self.status = status


class WebUINotFoundError(WebUIError):
    """A 404 where the caller needs the thing to exist (e.g. no cached market data)."""


@dataclass(frozen=True)
class _Reply:
    status: int
    body: Any


# --- the client -------------------------------------------------------------------------------


class WebUIClient:
    """Talks to one WebUI backend. ``retries`` is the total number of tries per request (>= 1)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | tuple[float, float] = (3.05, 15),
        retries: int = 4,
        backoff_s: float = 0.5,
        api_token: str | None = None,
        max_retry_after_s: float = 10.0,
        page_size: int = PAGE_SIZE,
        deadline_s: float | None = None,
        max_bytes: int = 32 * 1024 * 1024,
        settle_s: float = SETTLE_S,
        max_list: int = MAX_LIST,
    ) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise InputError(f"WebUI base URL must be http(s)://host[:port], got {base_url!r}")
        if retries < 1 or backoff_s < 0 or page_size < 1 or settle_s < 0 or max_list < page_size:
            raise ValueError("retries must be >= 1, backoff_s >= 0, page_size >= 1, settle_s >= 0 and "
                             "max_list >= page_size")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host + (f":{parts.port}" if parts.port else "")
        #: Safe to log: credentials in the URL move to the session, a trailing slash is dropped.
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.page_size = page_size
        self.settle_s = settle_s
        self.max_list = max_list
        connect_s, read_s = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        limits = Limits(connect_s=connect_s, read_s=read_s, max_bytes=max_bytes,
                        deadline_s=deadline_s if deadline_s is not None else deadline_from_env(30.0))
        self._http = HttpClient(policy=RetryPolicy(attempts=retries, backoff_s=backoff_s,
                                                   max_retry_after_s=max_retry_after_s), limits=limits,
                                headers={"Accept": "application/json", "User-Agent": "tradeflow-webui"})
        self._session = self._http.session
        if parts.username:
            self._session.auth = (unquote(parts.username), unquote(parts.password or ""))
        if api_token:
            self._session.headers["Authorization"] = f"Bearer {api_token}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **kwargs: Any) -> WebUIClient | None:
        """``BACKEND_API_URL`` (+ optional ``BACKEND_API_TOKEN``), or None when the URL is unset/empty."""
        url = (environ.get("BACKEND_API_URL") or "").strip()
        if not url:
            return None
        return cls(url, api_token=(environ.get("BACKEND_API_TOKEN") or "").strip() or None, **kwargs)

    def __repr__(self) -> str:
        token = ", api_token=***" if "Authorization" in self._session.headers else ""
        return f"WebUIClient({self.base_url!r}{token})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> WebUIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # workflow symbols ---------------------------------------------------------------------------

    def list_workflow_symbols(self, enabled_only: bool = True) -> list[dict[str, Any]]:
        """All workflow symbols, service order (priority desc, symbol). Trailing slash: no 307."""
        body = self._call("GET", "/api/workflow-symbols/",
                          params={"enabled_only": "true" if enabled_only else "false"}).body
        if not isinstance(body, list) or not all(isinstance(row, dict) for row in body):
            raise self._shape_error("GET /api/workflow-symbols/", "a JSON array of objects", body)
        return body

    def assigned_symbols(self, dag_id: str, *, max_symbols: int) -> list[dict[str, Any]]:
        """Enabled symbols with an ACTIVE link to ``dag_id``, priority desc then symbol, at most
        ``max_symbols``. Each: symbol, name, conid, workflow_symbol_id, priority, link_id,
        link_priority, config (the link's ``config``; ``{}`` when null)."""
        if max_symbols < 1:
            raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
        assigned = []
        for index, row in enumerate(self.list_workflow_symbols(enabled_only=True)):
            self._check_symbol_row(row, "GET /api/workflow-symbols/", f"[{index}]")
            if row.get("enabled") is not True:
                continue  # the query already filters; do not trust it with a trading decision
            links = [link for link in row.get("workflows") or []
                     if link.get("dag_id") == dag_id and link.get("is_active") is True]
            if not links:
                continue
            if len(links) > 1:
                log.warning("WebUI symbol %s has %d active links to %s; using link %s",
                            row.get("symbol"), len(links), dag_id, links[0].get("link_id"))
            link = links[0]
            assigned.append({
                "symbol": row["symbol"], "name": row.get("name"), "conid": row.get("conid"),
                "workflow_symbol_id": row.get("id"), "priority": row.get("priority") or 0,
                "link_id": link.get("link_id"), "link_priority": link.get("priority") or 0,
                "config": link.get("config") if link.get("config") is not None else {},
                **{key: link.get(key) for key in SESSION_KEYS},
            })
        assigned.sort(key=lambda item: (-item["priority"], item["symbol"]))
        if len(assigned) > max_symbols:
            dropped = [item["symbol"] for item in assigned[max_symbols:]]
            log.warning("WebUI assigns %d symbols to %s; keeping the first %d by priority, dropping %s",
                        len(assigned), dag_id, max_symbols, ", ".join(dropped))
        return assigned[:max_symbols]

    def get_workflow_symbol(self, symbol: str) -> dict[str, Any] | None:
        """One workflow symbol, or None when unknown or refused by the service's symbol rule."""
        if not symbol.strip():
            raise ValueError("symbol must not be empty")
        reply = self._call("GET", f"/api/workflow-symbols/{quote(symbol.strip(), safe='')}", accept=(400, 404))
        if reply.status == 400:
            log.warning("WebUI refused symbol %r (400: its symbols must match ^[A-Z]{1,10}$, so e.g. BRK.B"
                        " cannot be configured there); treating it as not configured", symbol)
            return None
        if reply.status == 404:
            return None
        if not isinstance(reply.body, dict):
            raise self._shape_error("GET /api/workflow-symbols/{symbol}", "a JSON object", reply.body)
        self._check_symbol_row(reply.body, "GET /api/workflow-symbols/{symbol}", symbol)
        return reply.body

    def _check_symbol_row(self, row: Any, endpoint: str, where: str) -> None:
        """The fields this client reads, type-checked: a wrong type is one ``WebUIError`` naming the
        field (never an AttributeError deep in the DAG). Unknown extra fields are fine."""
        def wrong(field_name: str, expected: str, value: Any) -> WebUIError:
            return WebUIError(f"WebUI backend at {self.base_url} answered {endpoint} with {where}.{field_name} = "
                              f"{_snippet(json.dumps(value), 60)}; expected {expected}", endpoint=endpoint)

        if not isinstance(row, dict):
            raise wrong("", "an object", row)
        checks = (("symbol", (str,), "a string"), ("id", (int,), "an integer"),
                  ("enabled", (bool,), "true or false"), ("priority", (int, type(None)), "an integer"),
                  ("conid", (int, type(None)), "an integer or null"), ("workflows", (list, type(None)), "a list"))
        for name, types, expected in checks:
            value = row.get(name)
            if name in ("symbol", "id", "enabled") and name not in row:
                raise wrong(name, expected, None)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise wrong(name, expected, value)
        if not re.fullmatch(r"[A-Za-z0-9.^-]{1,20}", row["symbol"]) or not re.search(r"[A-Za-z0-9]", row["symbol"]):
            raise wrong("symbol", "a ticker (letters, digits, '.', '^', '-')", row["symbol"])
        for index, link in enumerate(row.get("workflows") or []):
            prefix = f"workflows[{index}]"
            if not isinstance(link, dict):
                raise wrong(prefix, "an object", link)
            link_checks = (("dag_id", (str,), "a string"), ("is_active", (bool,), "true or false"),
                           ("link_id", (int, type(None)), "an integer"), ("priority", (int, type(None)), "an integer"))
            for name, types, expected in link_checks:
                value = link.get(name)
                if name in ("dag_id", "is_active") and name not in link:
                    raise wrong(f"{prefix}.{name}", expected, None)
                if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                    raise wrong(f"{prefix}.{name}", expected, value)

    def link_config(self, symbol: str, dag_id: str) -> dict[str, Any] | None:
        """The config layer of ``symbol``'s link to ``dag_id``: the link's ``config`` as stored (``{}``
        when null). The active link wins; an inactive one still counts (a manual run keeps its
        overrides). None when the symbol or the link does not exist."""
        row = self.get_workflow_symbol(symbol)
        if row is None:
            return None
        links = [link for link in row.get("workflows") or [] if link.get("dag_id") == dag_id]
        if not links:
            return None
        link = next((link for link in links if link.get("is_active") is True), links[0])
        return link.get("config") if link.get("config") is not None else {}

    # market data ------------------------------------------------------------------------------

    def get_market_data_cache(self, symbol: str, data_type: str = "daily") -> dict[str, Any]:
        """``{"symbol", "count", "data": [entries, newest first]}``; the symbol's case is kept as
        given (the service matches it exactly). Raises ``WebUINotFoundError`` when none is cached."""
        path = f"/api/market-data/cache/{quote(symbol, safe='')}"
        reply = self._call("GET", path, params={"data_type": data_type}, accept=(404,))
        if reply.status == 404:
            raise WebUINotFoundError(
                f"WebUI backend at {self.base_url} has no cached {data_type} market data for {symbol!r}"
                " (the symbol's case must match exactly)", endpoint=f"GET {path}", status=404)
        if not isinstance(reply.body, dict) or not isinstance(reply.body.get("data"), list):
            raise self._shape_error(f"GET {path}", 'an object with a "data" list', reply.body)
        return reply.body

    # artifacts --------------------------------------------------------------------------------

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

    def upsert_artifact(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create or update the artifact with this payload's identity; return (row, created).

        The payload is cleaned first (``clean_artifact_payload``). If the POST fails in a way that
        may still have stored the row (timeout, dropped connection, 5xx), every retry first looks
        the artifact up again and stops there if it is found, so a retry never duplicates.
        """
        body = clean_artifact_payload(payload)
        identity = {key: body.get(key) for key in IDENTITY_KEYS}
        if missing := [key for key, value in identity.items() if not value]:
            raise ValueError(f"upsert_artifact needs {', '.join(IDENTITY_KEYS)} to be idempotent;"
                             f" missing {', '.join(missing)}")
        existing = self.find_artifact(**identity)
        if existing is not None:
            return self._patch_artifact(existing["id"], body), False

        def already_stored(failure: HttpError) -> dict[str, Any] | None:
            """Look the artifact up before any second POST. When the answer was lost (read timeout,
            dropped connection, a proxy's 502/504), the service may still be inserting the row: keep
            looking for ``settle_s`` before the POST is sent again."""
            settle_until = time.monotonic() + (self.settle_s if failure.maybe_applied else 0.0)
            looks = 0
            while True:
                looks += 1
                try:
                    rows = self._all_artifacts({k: identity[k] for k in ("type", "symbol", "execution_id")},
                                               tries=1)
                except WebUIError:
                    rows = None  # still failing: keep waiting within the settle window
                if rows is not None and (found := next(
                        (row for row in rows if row.get("step_name") == identity["step_name"]), None)):
                    return found
                if time.monotonic() >= settle_until:
                    if failure.maybe_applied:
                        log.warning("WebUI POST /api/artifacts/ %s; the %s artifact was not found after %d look-ups"
                                    " over %.0f s: posting it again", failure.kind, identity["type"], looks,
                                    self.settle_s)
                    return None
                time.sleep(min(2.0, max(0.05, self.backoff_s)))

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

    # transport --------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        accept: tuple[int, ...] = (),
        tries: int | None = None,
        before_retry: Callable[[HttpError], Any | None] | None = None,
    ) -> _Reply:
        """One request through the project's HTTP layer (``tradeflow.http``: retry policy, total
        deadline, size cap). 2xx and ``accept`` statuses come back; the rest raise ``WebUIError``.

        ``before_retry`` (for non-idempotent requests) runs before each retry with the last failure;
        a non-None result ends the loop as if the request had answered it.
        """
        endpoint = f"{method} {path}"
        body = None if json_body is None else _plain(json_body)
        try:
            reply = self._http.send(method, self.base_url + path, params=params, json_body=body,
                                    attempts=tries, before_retry=before_retry, label=f"WebUI {endpoint}")
        except HttpError as exc:
            if exc.retry_after is not None and not exc.transient:
                raise WebUIError(f"WebUI backend at {self.base_url} {exc.kind} to {endpoint} asking to retry after"
                                 f" {exc.retry_after:.0f} s (more than the {self.max_retry_after_s:g} s this client"
                                 " waits); try again later", endpoint=endpoint, status=exc.status) from None
            tries_text = f"{exc.tries} {'try' if exc.tries == 1 else 'tries'}"
            raise WebUIError(f"WebUI backend at {self.base_url} {exc.kind} after {tries_text}: {endpoint}: "
                             f"{exc.reason}", endpoint=endpoint, status=exc.status) from None
        if not isinstance(reply, Reply):
            return _Reply(200, reply)  # before_retry found the result of an earlier attempt
        return self._decode(reply, endpoint, accept)

    def _decode(self, reply: Reply, endpoint: str, accept: tuple[int, ...]) -> _Reply:
        status = reply.status
        if status >= 300 and status not in accept:
            where = reply.headers.get("Location", "")
            hint = f" (redirect to {where}; call the trailing-slash URL)" if 300 <= status < 400 else ""
            kind = " (the payload was refused; not retried)" if status == 500 else ""
            raise WebUIError(f"WebUI backend at {self.base_url} rejected {endpoint} with {status}{kind}: "
                             f"{reply.detail()}{hint}", endpoint=endpoint, status=status)
        if status == 204 or not reply.content:
            return _Reply(status, None)
        try:
            return _Reply(status, _loads(reply.content))
        except ValueError as exc:
            raise WebUIError(f"WebUI backend at {self.base_url} answered {endpoint} with malformed JSON "
                             f"({status}, {reply.headers.get('Content-Type', 'no content-type')}): "
                             f"{exc if isinstance(exc, _TooDeep) else _snippet(reply.text)}",
                             endpoint=endpoint, status=status) from None

    def _shape_error(self, endpoint: str, expected: str, body: Any) -> WebUIError:
        return WebUIError(f"WebUI backend at {self.base_url} answered {endpoint} with {_snippet(json.dumps(body))};"
                          f" expected {expected}", endpoint=endpoint)


class _TooDeep(ValueError):
    pass


def _loads(content: bytes) -> Any:
    """JSON from the service; nesting too deep for the decoder is one line, not a RecursionError."""
    try:
        return json.loads(content)
    except RecursionError:
        raise _TooDeep("JSON nested too deep to decode") from None


_snippet = snippet
