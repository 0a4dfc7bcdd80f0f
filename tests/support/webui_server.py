"""A real HTTP stand-in for the trading WebUI backend, quirks included, state in memory.

It implements ``shared/contracts/webui-backend.md`` so that the client, the pipeline and the
Airflow DAG can be tested over a real socket instead of mocks. It is written from the contract,
deliberately without importing ``tradeflow.webui``: a fake that shared the client's constants
would agree with the client's bugs.

Python API (tests)::

    with WebUIServer() as server:            # 127.0.0.1, random port
        server.seed_symbol("NVDA", priority=5, conid=4815747, config={"trademaster": {"epochs": 1}})
        server.seed_market_data("AAPL", trademaster_bars(DJ30_TEST_CSV, "AAPL"), fill_volume=0)
        server.set_mode("error_then_recover", count=2, status=[502, 503])
        ... server.url, server.requests, server.artifacts(), server.auto_triggers ...
        server.stop(); server.start()        # really down (connection refused), same port

Standalone (Airflow, load tests)::

    python -m tests.support.webui_server --port 0 --state-file state.json
    # first stdout line: http://127.0.0.1:<port>; stop with SIGTERM / SIGINT

Fault injection over HTTP (never faulted, never logged): ``POST /__control__`` with
``{"mode": "normal" | "down" | "slow" | "error_then_recover" | "malformed", ...options}``,
``GET /__control__``, ``GET|DELETE /__control__/requests``, ``GET /__control__/triggers``,
``POST /__control__/seed`` (state-file shape), ``POST /__control__/reset``. See ``FaultPlan``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

log = logging.getLogger(__name__)

__all__ = [
    "ARTIFACT_COLUMNS",
    "DEFAULT_DAG_ID",
    "FAULT_MODES",
    "FaultPlan",
    "WebUIServer",
    "trademaster_bars",
    "webui_server",
]

#: The contract's DAG id (kept here on purpose, see the module docstring).
DEFAULT_DAG_ID = "trademaster_autogen_pipeline_workflow"
SYMBOL_RE = re.compile(r"^[A-Z]{1,10}$")
ARTIFACT_TYPES = ("llm", "chart", "signal")
#: Every column the artifacts table has; any other key in a POST makes the service answer 500.
ARTIFACT_COLUMNS = frozenset(
    {"name", "type", "symbol", "run_id", "experiment_id", "workflow_id", "execution_id",
     "step_name", "dag_id", "task_id", "metadata"}
    | {"prompt", "response", "model_name"}
    | {"image_path", "chart_type", "chart_data"}
    | {"action", "confidence", "signal_data"}
)
FAULT_MODES = ("normal", "down", "slow", "error_then_recover", "malformed")
#: The request log keeps the newest entries only, so a long load test cannot exhaust memory.
REQUEST_LOG_SIZE = 10_000
LINK_DEFAULTS: dict[str, Any] = {
    "is_active": True, "priority": 0, "timezone": "America/New_York", "session_start": "09:30",
    "session_end": "16:00", "allow_weekend": False, "schedule_interval": None, "config": None,
}
_LINK_TYPES: dict[str, tuple[type, ...]] = {
    "is_active": (bool,), "priority": (int,), "timezone": (str,), "session_start": (str,),
    "session_end": (str,), "allow_weekend": (bool,), "schedule_interval": (str, type(None)),
    "config": (dict, list, str, int, float, bool, type(None)),
}
_SYMBOL_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str, type(None)), "enabled": (bool,), "priority": (int,), "conid": (int, type(None)),
}
_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Answer:
    """One HTTP answer; ``body`` is JSON-encoded unless it is already ``bytes``."""

    status: int
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class _Reject(Exception):
    """Abort a handler with an HTTP answer (FastAPI's ``HTTPException``)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(detail)
        self.answer = _Answer(status, {"detail": detail})


def _invalid(kind: str, loc: list[Any], msg: str) -> _Reject:
    """FastAPI's 422 shape for a request that fails validation."""
    return _Reject(422, [{"type": kind, "loc": loc, "msg": msg}])


def _missing(loc: str) -> _Reject:
    return _invalid("missing", ["body", *loc.split(".")], "Field required")


def _not_object(*loc: Any) -> _Reject:
    return _invalid("dict_type", ["body", *loc], "Input should be a valid dictionary")


def _check_types(body: Mapping[str, Any], types: Mapping[str, tuple[type, ...]], where: str) -> None:
    for key, allowed in types.items():
        if key not in body:
            continue
        value = body[key]
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            raise _invalid("type_error", ["body", *filter(None, where.split(".")), key],
                           f"Input should be {' or '.join(t.__name__ for t in allowed)}")


# --- the fault plan ----------------------------------------------------------------------------


@dataclass
class FaultPlan:
    """How the server misbehaves (set with ``WebUIServer.set_mode`` or ``POST /__control__``).

    - ``normal``: behave.
    - ``down``: close every API connection without answering; with ``stop_listener`` the listener
      itself is stopped (connection refused) and restarted on the same port after ``for_s``.
    - ``slow``: sleep ``delay_s`` before answering.
    - ``error_then_recover``: the next ``count`` API requests answer ``status`` (an int, or a list
      cycled through: 500/502/503/504/429); 429 and 503 carry ``Retry-After: retry_after`` when set.
      With ``after`` the request is applied first and the error answered afterwards (a proxy
      timing out after the backend committed), which is what makes a blind POST retry duplicate.
      Back to ``normal`` once ``count`` is spent.
    - ``malformed``: answer 200, ``Content-Type: application/json``, with a truncated non-JSON body.

    ``methods`` (e.g. ``["POST"]``) limits the fault to those methods; other requests behave.
    ``for_s`` reverts any mode to ``normal`` after that many seconds.
    """

    mode: str = "normal"
    delay_s: float = 2.0
    count: int = 1
    status: list[int] = field(default_factory=lambda: [503])
    retry_after: float | None = None
    after: bool = False
    stop_listener: bool = False
    methods: list[str] | None = None
    for_s: float | None = None
    served: int = 0
    until: float | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> FaultPlan:
        """Validate a control request; raise ``ValueError`` with a one-line reason."""
        known = {"mode", "delay_s", "count", "status", "retry_after", "after", "stop_listener", "methods", "for_s"}
        if unknown := sorted(set(spec) - known):
            raise ValueError(f"unknown fault option(s) {unknown}; known: {sorted(known)}")
        mode = spec.get("mode", "normal")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode {mode!r} is not one of {FAULT_MODES}")
        status = spec.get("status", [503])
        statuses = [status] if isinstance(status, int) else list(status)
        if not statuses or any(not isinstance(s, int) or not 400 <= s <= 599 for s in statuses):
            raise ValueError(f"status must be an HTTP error code or a list of them, got {status!r}")
        plan = cls(
            mode=mode,
            delay_s=float(spec.get("delay_s", 2.0)),
            count=int(spec.get("count", 1)),
            status=statuses,
            retry_after=None if spec.get("retry_after") is None else float(spec["retry_after"]),
            after=bool(spec.get("after", False)),
            stop_listener=bool(spec.get("stop_listener", False)),
            methods=None if spec.get("methods") is None else [str(m).upper() for m in spec["methods"]],
            for_s=None if spec.get("for_s") is None else float(spec["for_s"]),
        )
        if plan.delay_s < 0 or plan.count < 1 or (plan.for_s is not None and plan.for_s <= 0):
            raise ValueError("delay_s must be >= 0, count >= 1 and for_s > 0")
        if plan.stop_listener and (mode != "down" or plan.for_s is None):
            raise ValueError("stop_listener needs mode 'down' and for_s (nothing could restart it)")
        if plan.for_s is not None:
            plan.until = time.monotonic() + plan.for_s
        return plan

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in {"until"}}


# --- the in-memory backend ---------------------------------------------------------------------


class _Backend:
    """The service's state and routes; every public method holds the lock."""

    def __init__(self, *, strict_signals: bool, health_delay_s: float,
                 notify: Callable[[dict[str, Any]], None]) -> None:
        self.lock = threading.RLock()
        self.notify = notify
        self.strict_signals = strict_signals
        self.health_delay_s = health_delay_s
        self.fault = FaultPlan()
        self.reset()
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., _Answer]]] = [
            ("GET", re.compile(r"/api/workflow-symbols/"), self.list_symbols),
            ("POST", re.compile(r"/api/workflow-symbols/"), self.create_symbol),
            ("GET", re.compile(r"/api/workflow-symbols/(?P<symbol>[^/]+)"), self.get_symbol),
            ("PATCH", re.compile(r"/api/workflow-symbols/(?P<symbol>[^/]+)"), self.patch_symbol),
            ("DELETE", re.compile(r"/api/workflow-symbols/(?P<symbol>[^/]+)"), self.delete_symbol),
            ("GET", re.compile(r"/api/artifacts/"), self.list_artifacts),
            ("POST", re.compile(r"/api/artifacts/"), self.create_artifact),
            ("GET", re.compile(r"/api/artifacts/(?P<artifact_id>[^/]+)"), self.get_artifact),
            ("PATCH", re.compile(r"/api/artifacts/(?P<artifact_id>[^/]+)"), self.patch_artifact),
            ("GET", re.compile(r"/api/artifacts/(?P<artifact_id>[^/]+)/market-data"), self.artifact_market_data),
            ("GET", re.compile(r"/api/market-data/cache/(?P<symbol>[^/]+)"), self.market_data),
            ("GET", re.compile(r"/health"), self.health),
        ]

    def reset(self) -> None:
        with self.lock:
            self.symbols: dict[str, dict[str, Any]] = {}
            self.artifacts: dict[int, dict[str, Any]] = {}
            self.market: dict[tuple[str, str], list[dict[str, Any]]] = {}
            self.triggers: list[dict[str, Any]] = []
            self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
            self.next_symbol_id = self.next_link_id = self.next_artifact_id = 1
            self.fault = FaultPlan()

    # routing ---------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], body: Any, host: str) -> _Answer:
        """Dispatch like Starlette: 405 on a known path, 307 to the other slash form, else 404."""
        for candidate in (path, path[:-1] if path.endswith("/") else path + "/"):
            matches = [(m, p.fullmatch(candidate), fn) for m, p, fn in self.routes]
            matches = [(m, match, fn) for m, match, fn in matches if match]
            if not matches:
                continue
            if candidate != path:
                location = f"http://{host}{candidate}" + (f"?{urlencode(query)}" if query else "")
                return _Answer(307, b"", headers={"Location": location})
            for route_method, match, fn in matches:
                if route_method == method:
                    try:
                        return fn(query=query, body=body, **{k: unquote(v) for k, v in match.groupdict().items()})
                    except _Reject as rejected:
                        return rejected.answer
            return _Answer(405, {"detail": "Method Not Allowed"})
        return _Answer(404, {"detail": "Not Found"})

    # workflow symbols ------------------------------------------------------------------------

    def _symbol_key(self, raw: str) -> str:
        symbol = raw.upper()
        if not SYMBOL_RE.fullmatch(symbol):
            raise _Reject(400, f"Invalid symbol format: {symbol}. Must be 1-10 uppercase letters")
        return symbol

    def _existing(self, raw: str) -> dict[str, Any]:
        symbol = self._symbol_key(raw)
        if symbol not in self.symbols:
            raise _Reject(404, f"Symbol {symbol} not found")
        return self.symbols[symbol]

    def _links(self, raw: Any, symbol_id: int) -> list[dict[str, Any]]:
        if not isinstance(raw, list):
            raise _invalid("list_type", ["body", "workflows"], "Input should be a valid list")
        if not raw:
            raise _Reject(400, "At least one workflow link is required")
        links, seen = [], set()
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                raise _not_object("workflows", index)
            if not isinstance(item.get("dag_id"), str) or not item["dag_id"]:
                raise _missing(f"workflows.{index}.dag_id")
            _check_types(item, _LINK_TYPES, f"workflows.{index}")
            if item["dag_id"] in seen:
                raise _Reject(400, f"Duplicate workflow link for dag_id {item['dag_id']}")
            seen.add(item["dag_id"])
            link = {"link_id": self.next_link_id, "dag_id": item["dag_id"], "workflow_symbol_id": symbol_id}
            link.update({k: item.get(k, default) for k, default in LINK_DEFAULTS.items()})
            self.next_link_id += 1
            links.append(link)
        return links

    def _public_symbol(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k != "workflows"}
        out["workflows"] = [{k: v for k, v in link.items() if k != "workflow_symbol_id"} for link in row["workflows"]]
        return json.loads(json.dumps(out))  # a deep copy, as a client would see it

    def insert_symbol(self, body: Any, *, trigger: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Validate and store a symbol (POST body shape); return it and the auto-triggers it caused."""
        with self.lock:
            if not isinstance(body, dict):
                raise _not_object()
            if not isinstance(body.get("symbol"), str):
                raise _missing("symbol")
            symbol = self._symbol_key(body["symbol"].strip())
            _check_types(body, _SYMBOL_TYPES, "")
            if "workflows" not in body:
                raise _missing("workflows")
            if symbol in self.symbols:
                raise _Reject(409, f"Symbol {symbol} already exists")
            symbol_id = self.next_symbol_id
            links = self._links(body["workflows"], symbol_id)
            self.next_symbol_id += 1
            row = {"id": symbol_id, "symbol": symbol, "name": body.get("name"),
                   "enabled": body.get("enabled", True), "priority": body.get("priority", 0),
                   "conid": body.get("conid"), "created_at": _now().isoformat(), "updated_at": None,
                   "workflows": links}
            self.symbols[symbol] = row
            fired = []
            if trigger:
                for link in links:  # the real service fires even for inactive links and disabled symbols
                    fired.append({"dag_id": link["dag_id"], "conf": {
                        "symbol": symbol, "conid": row["conid"], "workflow_symbol_id": symbol_id}})
                self.triggers.extend(fired)
            return self._public_symbol(row), fired

    def list_symbols(self, *, query: dict[str, str], body: Any) -> _Answer:
        enabled_only = query.get("enabled_only", "false").lower()
        if enabled_only not in {"true", "false", "1", "0"}:
            raise _invalid("bool_parsing", ["query", "enabled_only"], "Input should be a valid boolean")
        with self.lock:
            rows = [r for r in self.symbols.values() if r["enabled"] or enabled_only in {"false", "0"}]
            rows.sort(key=lambda r: (-r["priority"], r["symbol"]))
            return _Answer(200, [self._public_symbol(r) for r in rows])

    def create_symbol(self, *, query: dict[str, str], body: Any) -> _Answer:
        row, fired = self.insert_symbol(body, trigger=True)
        for trigger in fired:  # outside the lock: the hook may call back into the server
            self.notify(trigger)
        return _Answer(201, row)

    def get_symbol(self, *, query: dict[str, str], body: Any, symbol: str) -> _Answer:
        with self.lock:
            return _Answer(200, self._public_symbol(self._existing(symbol)))

    def patch_symbol(self, *, query: dict[str, str], body: Any, symbol: str) -> _Answer:
        with self.lock:
            row = self._existing(symbol)
            if not isinstance(body, dict):
                raise _not_object()
            _check_types(body, _SYMBOL_TYPES, "")
            links = self._links(body["workflows"], row["id"]) if "workflows" in body else row["workflows"]
            row.update({k: body[k] for k in _SYMBOL_TYPES if k in body})
            row["workflows"] = links
            row["updated_at"] = _now().isoformat()
            return _Answer(200, self._public_symbol(row))

    def delete_symbol(self, *, query: dict[str, str], body: Any, symbol: str) -> _Answer:
        with self.lock:
            del self.symbols[self._existing(symbol)["symbol"]]
            return _Answer(204, b"")

    # artifacts -------------------------------------------------------------------------------

    def _strict_signal_problems(self, body: Mapping[str, Any]) -> list[str]:
        """The WebUI's TradingSignal rules (opt-in: the service itself does not check them)."""
        problems = []
        confidence = body.get("confidence")
        if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0 <= confidence <= 1:
            problems.append(f"confidence must be a number 0..1, got {confidence!r}")
        if body.get("action") not in {"BUY", "SELL", "HOLD"}:
            problems.append(f"action must be BUY/SELL/HOLD, got {body.get('action')!r}")
        data = body.get("signal_data")
        if not isinstance(data, dict):
            return [*problems, "signal_data must be an object"]
        if data.get("action") not in {"BUY", "SELL", "HOLD"}:
            problems.append(f"signal_data.action must be BUY/SELL/HOLD, got {data.get('action')!r}")
        score = data.get("confidence_score")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= 100:
            problems.append(f"signal_data.confidence_score must be 0..100, got {score!r}")
        else:
            band = "HIGH" if score >= 80 else "MEDIUM" if score >= 50 else "LOW"
            if data.get("confidence") != band:
                problems.append(f"signal_data.confidence {data.get('confidence')!r} disagrees with score {score} ({band})")
        if not isinstance(data.get("reasoning"), str) or len(data["reasoning"]) < 10:
            problems.append("signal_data.reasoning must be at least 10 characters")
        for key in ("timeframe_analyzed", "model_used"):
            if not data.get(key):
                problems.append(f"signal_data.{key} is required")
        return problems

    def insert_artifact(self, body: Any) -> _Answer:
        """POST semantics: 400 on name/type, 500 on any non-column key, no deduplication."""
        with self.lock:
            if not isinstance(body, dict):
                raise _not_object()
            if not body.get("name") or not body.get("type"):
                raise _Reject(400, "name and type are required")
            if body["type"] not in ARTIFACT_TYPES:
                raise _Reject(400, f"Invalid artifact type: {body['type']}. Must be one of {list(ARTIFACT_TYPES)}")
            if unknown := sorted(set(body) - ARTIFACT_COLUMNS):
                # Artifact(**data) -> TypeError in the real service, answered as JSON (see the contract)
                return _Answer(500, {"detail": f"{unknown[0]!r} is an invalid keyword argument for Artifact"})
            if self.strict_signals and body["type"] == "signal" and (problems := self._strict_signal_problems(body)):
                raise _Reject(422, problems)
            artifact_id = self.next_artifact_id
            self.next_artifact_id += 1
            row = {"id": artifact_id, **{c: body.get(c) for c in sorted(ARTIFACT_COLUMNS)},
                   "created_at": _now().isoformat(), "updated_at": None}
            self.artifacts[artifact_id] = row
            return _Answer(200, json.loads(json.dumps(row)))

    def create_artifact(self, *, query: dict[str, str], body: Any) -> _Answer:
        return self.insert_artifact(body)

    def list_artifacts(self, *, query: dict[str, str], body: Any) -> _Answer:
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise _invalid("int_parsing", ["query", "limit"], "Input should be a valid integer") from None
        with self.lock:
            rows = [r for r in self.artifacts.values()
                    if all(r.get(k) == query[k] for k in ("type", "symbol", "execution_id") if k in query)]
            rows.sort(key=lambda r: r["id"], reverse=True)
            page = rows[: max(limit, 0)]
            # the real service's quirk: ``total`` counts the rows of THIS answer, not every match
            return _Answer(200, {"artifacts": json.loads(json.dumps(page)), "total": len(page)})

    def _artifact(self, raw_id: str) -> dict[str, Any]:
        if not raw_id.isdigit():
            raise _invalid("int_parsing", ["path", "artifact_id"], "Input should be a valid integer")
        if int(raw_id) not in self.artifacts:
            raise _Reject(404, f"Artifact {raw_id} not found")
        return self.artifacts[int(raw_id)]

    def get_artifact(self, *, query: dict[str, str], body: Any, artifact_id: str) -> _Answer:
        with self.lock:
            return _Answer(200, json.loads(json.dumps(self._artifact(artifact_id))))

    def patch_artifact(self, *, query: dict[str, str], body: Any, artifact_id: str) -> _Answer:
        with self.lock:
            row = self._artifact(artifact_id)
            if not isinstance(body, dict):
                raise _not_object()
            if "type" in body and body["type"] not in ARTIFACT_TYPES:
                raise _Reject(400, f"Invalid artifact type: {body['type']}. Must be one of {list(ARTIFACT_TYPES)}")
            row.update({k: v for k, v in body.items() if k in ARTIFACT_COLUMNS})  # unknown keys ignored
            row["updated_at"] = _now().isoformat()
            return _Answer(200, json.loads(json.dumps(row)))

    def artifact_market_data(self, *, query: dict[str, str], body: Any, artifact_id: str) -> _Answer:
        """The bars a chart artifact was drawn from (``metadata.market_data_snapshot``); 404 without
        them. The service regenerates a chart image from these when ``image_path`` is not on its disk."""
        with self.lock:
            row = self._artifact(artifact_id)
            snapshot = (row.get("metadata") or {}).get("market_data_snapshot")
            if not isinstance(snapshot, dict) or not snapshot.get("bars"):
                raise _Reject(404, f"No market data snapshot for artifact {artifact_id}")
            return _Answer(200, json.loads(json.dumps(snapshot)))

    # market data & health --------------------------------------------------------------------

    def market_data(self, *, query: dict[str, str], body: Any, symbol: str) -> _Answer:
        with self.lock:
            entries = self.market.get((symbol, query.get("data_type", "daily")), [])
            if not entries:
                raise _Reject(404, f"No cached data found for symbol: {symbol}")
            now = _now()
            data = [{"conid": e["conid"], "source": e["source"], "cached_at": e["cached_at"].isoformat(),
                     "expires_at": e["expires_at"].isoformat(), "is_expired": e["expires_at"] <= now,
                     "ohlcv_data": {"data": e["bars"]}}
                    for e in sorted(entries, key=lambda e: e["cached_at"], reverse=True)]
            return _Answer(200, json.loads(json.dumps({"symbol": symbol, "count": len(data), "data": data})))

    def health(self, *, query: dict[str, str], body: Any) -> _Answer:
        time.sleep(self.health_delay_s)  # the real one probes the IBKR gateway
        return _Answer(200, {"status": "healthy", "database": "connected", "ibkr_gateway": "unreachable"})


# --- HTTP plumbing ----------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: WebUIServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 (one request per connection) so that ``stop()`` really cuts every client off."""

    server: _HTTPServer

    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("webui-server: " + format, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = ValueError("JSON decode error")
        if parts.path == "/__control__" or parts.path.startswith("/__control__/"):
            self._write(owner._control(method, parts.path, body))
            return
        entry = {"method": method, "path": parts.path, "query": query,
                 "body_keys": sorted(body) if isinstance(body, dict) else None,
                 "body": None if isinstance(body, ValueError) else body,
                 "authorization": self.headers.get("Authorization"),
                 "status": None, "fault": None, "ts": time.time()}
        answer = owner._answer(method, parts.path, query, body, self.headers.get("Host", ""), entry)
        with owner._backend.lock:
            owner._backend.requests.append(entry)
        if answer is not None:
            self._write(answer)
        # None: "down" -> return without a byte; the socket closes, the client sees a dropped connection

    def _write(self, answer: _Answer) -> None:
        if isinstance(answer.body, bytes):
            payload = answer.body
        else:
            payload = json.dumps(answer.body).encode()
        self.send_response(answer.status, _REASONS.get(answer.status))
        if payload or answer.status not in {204, 307}:
            self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left; nothing to do


# --- the public server object -------------------------------------------------------------------


class WebUIServer:
    """The WebUI backend on a real loopback socket; context manager; thread-safe; in memory."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict_signals: bool = False,
        on_trigger: Callable[[dict[str, Any]], None] | None = None,
        health_delay_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.on_trigger = on_trigger
        self._backend = _Backend(strict_signals=strict_signals, health_delay_s=health_delay_s, notify=self._notify)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._life = threading.Lock()

    # lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, as ``BACKEND_API_URL`` wants it."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> WebUIServer:
        """Listen (again): the first start picks the port, later starts reuse it."""
        with self._life:
            if self._httpd is None:
                httpd = _HTTPServer((self.host, self.port), _Handler)
                httpd.owner = self
                self.port = httpd.server_address[1]
                self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                                name=f"webui-server-{self.port}", daemon=True)
                self._httpd = httpd
                self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener: new connections are refused until ``start()``. State is kept."""
        with self._life:
            httpd, self._httpd = self._httpd, None
            if httpd is not None:
                httpd.shutdown()
                httpd.server_close()

    def __enter__(self) -> WebUIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # fault injection ---------------------------------------------------------------------------

    def set_mode(self, mode: str, **options: Any) -> dict[str, Any]:
        """Switch the fault plan (see ``FaultPlan``); returns it as the control endpoint would."""
        plan = FaultPlan.parse({"mode": mode, **options})
        with self._backend.lock:
            self._backend.fault = plan
        if plan.stop_listener:
            assert plan.for_s is not None
            for delay, action in ((0.05, self.stop), (0.05 + plan.for_s, self._restart_after_outage)):
                timer = threading.Timer(delay, action)  # the stop waits for the control answer to go out
                timer.daemon = True
                timer.start()
        return plan.public()

    def _restart_after_outage(self) -> None:
        with self._backend.lock:
            self._backend.fault = FaultPlan()
        self.start()

    @property
    def mode(self) -> dict[str, Any]:
        with self._backend.lock:
            return self._backend.fault.public()

    def _fault(self, method: str) -> FaultPlan:
        """The plan in force for one API request (``for_s`` expiry and ``count`` bookkeeping)."""
        with self._backend.lock:
            plan = self._backend.fault
            if plan.until is not None and time.monotonic() >= plan.until:
                plan = self._backend.fault = FaultPlan()
            if plan.methods is not None and method not in plan.methods:
                return FaultPlan()
            if plan.mode != "error_then_recover":
                return FaultPlan(**asdict(plan))
            snapshot = FaultPlan(**asdict(plan))
            plan.served += 1
            if plan.served >= plan.count:
                self._backend.fault = FaultPlan()
            return snapshot

    def _answer(self, method: str, path: str, query: dict[str, str], body: Any, host: str,
                entry: dict[str, Any]) -> _Answer | None:
        plan = self._fault(method)
        entry["fault"] = None if plan.mode == "normal" else plan.mode
        if plan.mode == "down":
            return None
        if plan.mode == "slow":
            time.sleep(plan.delay_s)
        if plan.mode == "malformed":
            answer = _Answer(200, b'{"artifacts": [{"id": 1, "name": <html>Bad gateway', "application/json")
        elif plan.mode == "error_then_recover" and not plan.after:
            answer = self._error(plan)
        else:
            answer = self._apply(method, path, query, body, host)
            if plan.mode == "error_then_recover":
                answer = self._error(plan)  # applied, then lost on the way back
        entry["status"] = answer.status
        return answer

    @staticmethod
    def _error(plan: FaultPlan) -> _Answer:
        status = plan.status[plan.served % len(plan.status)]
        headers = {}
        if plan.retry_after is not None and status in {429, 503}:
            headers["Retry-After"] = f"{plan.retry_after:g}"
        if status in {500, 502, 504}:
            return _Answer(status, _REASONS[status].encode(), "text/plain; charset=utf-8", headers)
        return _Answer(status, {"detail": _REASONS.get(status, "error")}, headers=headers)

    def _apply(self, method: str, path: str, query: dict[str, str], body: Any, host: str) -> _Answer:
        if isinstance(body, ValueError):
            return _Answer(422, {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]})
        return self._backend.route(method, path, query, body, host or f"{self.host}:{self.port}")

    def _notify(self, trigger: dict[str, Any]) -> None:
        if self.on_trigger is None:
            return
        try:
            self.on_trigger(json.loads(json.dumps(trigger)))
        except Exception:  # the real service logs a failed trigger and still answers 201
            log.exception("webui-server: on_trigger hook failed for %s", trigger)

    def _control(self, method: str, path: str, body: Any) -> _Answer:
        backend = self._backend
        try:
            if path == "/__control__" and method == "GET":
                return _Answer(200, {**self.mode, "url": self.url})
            if path == "/__control__" and method == "POST":
                if not isinstance(body, dict):
                    raise ValueError('body must be a JSON object like {"mode": "normal"}')
                options = {k: v for k, v in body.items() if k != "mode"}
                return _Answer(200, self.set_mode(body.get("mode", "normal"), **options))
            if path == "/__control__/requests" and method == "GET":
                return _Answer(200, {"requests": self.requests})
            if path == "/__control__/requests" and method == "DELETE":
                self.clear_requests()
                return _Answer(200, {"requests": []})
            if path == "/__control__/triggers" and method == "GET":
                return _Answer(200, {"triggers": self.auto_triggers})
            if path == "/__control__/seed" and method == "POST":
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object in the state-file shape")
                return _Answer(200, self.load_state(body))
            if path == "/__control__/reset" and method == "POST":
                self.reset()
                return _Answer(200, {"reset": True})
        except (ValueError, TypeError) as exc:
            return _Answer(400, {"detail": str(exc)})
        return _Answer(404, {"detail": f"no control endpoint {method} {path}"})

    # seeding and inspection --------------------------------------------------------------------

    def seed_symbol(
        self,
        symbol: str,
        *,
        dag_id: str = DEFAULT_DAG_ID,
        is_active: bool = True,
        config: Any = None,
        enabled: bool = True,
        priority: int = 0,
        conid: int | None = None,
        name: str | None = None,
        workflows: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Store a pre-existing symbol (no auto-trigger) with one link, or ``workflows`` as given."""
        links = workflows if workflows is not None else [{"dag_id": dag_id, "is_active": is_active, "config": config}]
        body = {"symbol": symbol, "name": name, "enabled": enabled, "priority": priority, "conid": conid,
                "workflows": links}
        try:
            return self._backend.insert_symbol(body, trigger=False)[0]
        except _Reject as rejected:
            raise ValueError(f"cannot seed symbol {symbol!r}: {rejected.answer.body['detail']}") from None

    def seed_market_data(
        self,
        symbol: str,
        bars: Any,
        *,
        conid: int | None = None,
        data_type: str = "daily",
        source: str = "ibkr",
        cached_at: datetime | None = None,
        ttl: timedelta = timedelta(hours=12),
        expired: bool = False,
        fill_volume: float | None = None,
    ) -> dict[str, Any]:
        """Add one cache entry for ``symbol`` (case kept exactly, as the service does).

        ``bars``: a DataFrame (``date, open, high, low, close[, volume]``, or a date index) or rows
        of the same, or IBKR rows ``{t, o, h, l, c, v}``. The TradeMaster CSVs carry no volume:
        pass ``fill_volume=0`` to say so out loud rather than have zeros appear unasked.
        """
        ibkr = _ibkr_bars(bars, fill_volume)
        cached = cached_at or _now()
        if cached.tzinfo is None:
            cached = cached.replace(tzinfo=UTC)
        expires = cached - timedelta(seconds=1) if expired else cached + ttl
        entry = {"conid": conid, "source": source, "cached_at": cached, "expires_at": expires, "bars": ibkr}
        with self._backend.lock:
            self._backend.market.setdefault((symbol, data_type), []).append(entry)
        return {"symbol": symbol, "data_type": data_type, "bars": len(ibkr)}

    def seed_artifact(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Store an artifact exactly as ``POST /api/artifacts/`` would (without a request log line)."""
        try:
            answer = self._backend.insert_artifact(dict(payload))
        except _Reject as rejected:
            raise ValueError(f"cannot seed artifact: {rejected.answer.body['detail']}") from None
        if answer.status != 200:
            raise ValueError(f"cannot seed artifact: keys outside the columns {sorted(set(payload) - ARTIFACT_COLUMNS)}")
        return answer.body

    def load_state(self, state: Mapping[str, Any]) -> dict[str, int]:
        """Seed from the state-file shape::

            {"symbols": [<POST /api/workflow-symbols/ body>, ...],
             "market_data": [{"symbol", "bars": [...]} | {"symbol", "csv", "tic"?, "fill_volume"?},
                             + optional "conid", "data_type", "source", "expired"],
             "artifacts": [<POST /api/artifacts/ body>, ...],
             "mode": {"mode": "normal", ...}}
        """
        if unknown := sorted(set(state) - {"symbols", "market_data", "artifacts", "mode"}):
            raise ValueError(f"unknown state key(s) {unknown}")
        for body in state.get("symbols", []):
            try:
                self._backend.insert_symbol(body, trigger=False)
            except _Reject as rejected:
                raise ValueError(f"state symbol {body.get('symbol')!r}: {rejected.answer.body['detail']}") from None
        for spec in state.get("market_data", []):
            spec = dict(spec)
            symbol = spec.pop("symbol")
            bars = trademaster_bars(spec.pop("csv"), spec.pop("tic", None)) if "csv" in spec else spec.pop("bars")
            self.seed_market_data(symbol, bars, **spec)
        for payload in state.get("artifacts", []):
            self.seed_artifact(payload)
        if "mode" in state:
            self.set_mode(**state["mode"])
        return {"symbols": len(state.get("symbols", [])), "market_data": len(state.get("market_data", [])),
                "artifacts": len(state.get("artifacts", []))}

    def reset(self) -> None:
        """Forget everything: symbols, artifacts, market data, triggers, request log, fault plan."""
        self._backend.reset()

    def artifacts(self) -> list[dict[str, Any]]:
        """Stored artifacts, oldest first (the API lists newest first)."""
        with self._backend.lock:
            return json.loads(json.dumps([self._backend.artifacts[k] for k in sorted(self._backend.artifacts)]))

    def symbols(self) -> list[dict[str, Any]]:
        """Stored workflow symbols in the API's order."""
        with self._backend.lock:
            return [self._backend._public_symbol(r) for r in
                    sorted(self._backend.symbols.values(), key=lambda r: (-r["priority"], r["symbol"]))]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """API requests seen, oldest first: method, path, query, body_keys, body, authorization,
        status (None when the connection was dropped), fault, ts. Control calls are not logged."""
        with self._backend.lock:
            return json.loads(json.dumps(list(self._backend.requests)))

    def clear_requests(self) -> None:
        with self._backend.lock:
            self._backend.requests.clear()

    @property
    def auto_triggers(self) -> list[dict[str, Any]]:
        """DAG runs the service would have triggered: ``{"dag_id", "conf": {symbol, conid, workflow_symbol_id}}``."""
        with self._backend.lock:
            return json.loads(json.dumps(self._backend.triggers))


# --- bars ---------------------------------------------------------------------------------------


def _epoch_ms(value: Any) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError(f"bar date {value!r} is not a date")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _ibkr_bars(bars: Any, fill_volume: float | None) -> list[dict[str, Any]]:
    """Rows -> IBKR history bars ``{t, o, h, l, c, v}``, oldest first."""
    if hasattr(bars, "to_dict") and hasattr(bars, "columns"):  # a pandas DataFrame
        frame = bars if "date" in bars.columns or "t" in bars.columns else bars.rename_axis("date").reset_index()
        rows: Iterable[Mapping[str, Any]] = frame.to_dict("records")
    else:
        rows = bars
    out = []
    for row in rows:
        if {"t", "o", "h", "l", "c"} <= row.keys():
            out.append({k: row.get(k) for k in ("t", "o", "h", "l", "c", "v")})
            continue
        if missing := sorted({"date", "open", "high", "low", "close"} - row.keys()):
            raise ValueError(f"bar rows need date, open, high, low, close; missing {missing}")
        volume = row.get("volume", fill_volume)
        if volume is None:
            raise ValueError("bars have no 'volume'; pass fill_volume=0 to seed volume-less data (TradeMaster CSVs)")
        out.append({"t": _epoch_ms(row["date"]), "o": float(row["open"]), "h": float(row["high"]),
                    "l": float(row["low"]), "c": float(row["close"]), "v": float(volume)})
    if not out:
        raise ValueError("no bars to seed")
    return sorted(out, key=lambda bar: bar["t"])


def trademaster_bars(csv_path: str | Path, tic: str | None = None) -> Any:
    """Bars (``date, open, high, low, close[, volume]``) from a TradeMaster CSV, one ``tic``."""
    import pandas as pd  # only seeding needs pandas; the server itself is stdlib

    frame = pd.read_csv(csv_path)
    if tic is not None:
        frame = frame[frame["tic"] == tic]
        if frame.empty:
            raise ValueError(f"{csv_path}: no rows for tic {tic!r}")
    columns = [c for c in ("date", "open", "high", "low", "close", "volume") if c in frame.columns]
    return frame[columns].reset_index(drop=True)


# --- pytest fixture ----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the standalone server runs where pytest may be absent
    pass
else:

    @pytest.fixture
    def webui_server() -> Iterator[WebUIServer]:
        """A fresh WebUI backend per test (the lead imports this into ``tests/conftest.py``)."""
        with WebUIServer() as server:
            yield server


# --- standalone --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the base URL as the first stdout line."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.webui_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--state-file", type=Path, help="JSON seed (see WebUIServer.load_state); read once, never written")
    parser.add_argument("--strict-signals", action="store_true", help="422 on signals that break the TradingSignal rules")
    parser.add_argument("--health-delay", type=float, default=2.0, help="seconds /health takes (the real one is slow)")
    args = parser.parse_args(argv)

    server = WebUIServer(args.host, args.port, strict_signals=args.strict_signals, health_delay_s=args.health_delay)
    if args.state_file:
        try:
            server.load_state(json.loads(args.state_file.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            print(f"webui_server: cannot load {args.state_file}: {exc}", file=sys.stderr)
            return 2
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    server.start()
    print(server.url, flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
