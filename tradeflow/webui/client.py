"""The client for the trading WebUI backend (``shared/contracts/webui-backend.md``), over HTTP only.

What it adds on top of the project's HTTP layer (``tradeflow.http.client``: one retry policy, a total
deadline and a size cap per request), and why:

- One clear line in ``WebUIError`` when the service cannot be used: Airflow shows that line.
- Idempotent artifact writes (``tradeflow.webui.artifacts``): the service does not deduplicate, so
  ``upsert_artifact`` looks the artifact up by (execution_id, step_name, symbol, type) and PATCHes
  it, else POSTs; a POST that failed ambiguously is never blindly re-sent (the row may already exist).
- Payloads are filtered to the contract's columns: any other key makes the service answer 500.
- The bearer token (``BACKEND_API_TOKEN``) lives in the session headers only; it is never logged
  and never part of an error message.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tradeflow.errors import InputError
from tradeflow.http.client import HttpClient, HttpError, Limits, Reply, RetryPolicy, deadline_from_env, snippet
from tradeflow.webui.artifacts import ArtifactEndpoints
from tradeflow.webui.errors import WebUIError, WebUINotFoundError
from tradeflow.webui.payloads import _plain

log = logging.getLogger("tradeflow.webui")

__all__ = ["PAGE_SIZE", "SESSION_KEYS", "WebUIClient"]

#: A link's trading session as the WebUI stores it (read by ``tradeflow.sessions``).
SESSION_KEYS: Final = ("timezone", "session_start", "session_end", "allow_weekend")
PAGE_SIZE: Final = 500
#: A listing never asks for more rows than this; past it the query must be narrowed.
MAX_LIST: Final = 50_000
#: How long an ambiguous POST failure (answer lost) is followed by look-ups before posting again.
SETTLE_S: Final = 45.0


@dataclass(frozen=True)
class _Reply:
    status: int
    body: Any


# --- the client -------------------------------------------------------------------------------


class WebUIClient(ArtifactEndpoints):
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

    def assigned_symbols(self, dag_id: str, *, max_symbols: int,
                         excluded: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """Enabled symbols with an ACTIVE link to ``dag_id``, priority desc then symbol, at most
        ``max_symbols``. Each: symbol, name, conid, workflow_symbol_id, priority, link_id,
        link_priority, config (the link's ``config``; ``{}`` when null). ``excluded`` (a list)
        receives ``(symbol, why)`` for each symbol linked to ``dag_id`` that is left out: disabled,
        only inactive links, or beyond ``max_symbols``. The list asks for every symbol
        (``enabled_only=false``) so that a disabled one can be named; enabled is checked here."""
        if max_symbols < 1:
            raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
        left_out = excluded if excluded is not None else []
        assigned = []
        for index, row in enumerate(self.list_workflow_symbols(enabled_only=False)):
            self._check_symbol_row(row, "GET /api/workflow-symbols/", f"[{index}]")
            linked = [link for link in row.get("workflows") or [] if link.get("dag_id") == dag_id]
            links = [link for link in linked if link.get("is_active") is True]
            if linked and row.get("enabled") is not True:
                left_out.append((str(row.get("symbol")), "disabled in the WebUI (Workflow Symbols)"))
                continue
            if not links:
                if linked:
                    left_out.append((str(row.get("symbol")), f"its link to {dag_id} is inactive"))
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
            left_out += [(item["symbol"], f"beyond max_symbols={max_symbols} (priority {item['priority']})")
                         for item in assigned[max_symbols:]]
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
        """One request through the project's HTTP layer (``tradeflow.http.client``: retry policy, total
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
