"""The fake WebUI's in-memory service: workflow symbols (with the auto-trigger on create),
artifacts, the market-data cache and ``/health``, routed like Starlette, quirks of the real service
kept (each one says so where it is modelled)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlencode

import logging

from ..httpserver import Reply
from .contract import (
    ARTIFACT_COLUMNS,
    ARTIFACT_TYPES,
    LINK_DEFAULTS,
    LINK_TYPES,
    SYMBOL_RE,
    SYMBOL_TYPES,
    Reject,
    check_types,
    invalid,
    missing,
    not_object,
    now,
)
from .faults import FaultPlan

#: The request log keeps the newest entries only, so a long load test cannot exhaust memory.
REQUEST_LOG_SIZE = 10_000


log = logging.getLogger(__name__)


class Backend:
    """The service's state and routes; every public method holds the lock."""

    def __init__(self, *, strict_signals: bool, health_delay_s: float,
                 notify: Callable[[dict[str, Any]], None], redraw_fail_s: float = 0.2,
                 object_store: Callable[[str, str], bytes] | None = None) -> None:
        self.lock = threading.RLock()
        self.object_store = object_store  # the service's own MinIO client: (bucket, object) -> bytes
        self.redraw_fail_s = redraw_fail_s
        self.notify = notify
        self.strict_signals = strict_signals
        self.health_delay_s = health_delay_s
        self.fault = FaultPlan()
        self.reset()
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Reply]]] = [
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
            ("GET", re.compile(r"/api/artifacts/(?P<artifact_id>[^/]+)/image"), self.artifact_image),
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

    def route(self, method: str, path: str, query: dict[str, str], body: Any, host: str) -> Reply:
        """Dispatch like Starlette: 405 on a known path, 307 to the other slash form, else 404."""
        for candidate in (path, path[:-1] if path.endswith("/") else path + "/"):
            matches = [(m, p.fullmatch(candidate), fn) for m, p, fn in self.routes]
            matches = [(m, match, fn) for m, match, fn in matches if match]
            if not matches:
                continue
            if candidate != path:
                location = f"http://{host}{candidate}" + (f"?{urlencode(query)}" if query else "")
                return Reply(307, b"", headers={"Location": location})
            for route_method, match, fn in matches:
                if route_method == method:
                    try:
                        return fn(query=query, body=body, **{k: unquote(v) for k, v in match.groupdict().items()})
                    except Reject as rejected:
                        return rejected.answer
            return Reply(405, {"detail": "Method Not Allowed"})
        return Reply(404, {"detail": "Not Found"})

    # workflow symbols ------------------------------------------------------------------------

    def _symbol_key(self, raw: str) -> str:
        symbol = raw.upper()
        if not SYMBOL_RE.fullmatch(symbol):
            raise Reject(400, f"Invalid symbol format: {symbol}. Must be 1-10 uppercase letters")
        return symbol

    def _existing(self, raw: str) -> dict[str, Any]:
        symbol = self._symbol_key(raw)
        if symbol not in self.symbols:
            raise Reject(404, f"Symbol {symbol} not found")
        return self.symbols[symbol]

    def _links(self, raw: Any, symbol_id: int) -> list[dict[str, Any]]:
        if not isinstance(raw, list):
            raise invalid("list_type", ["body", "workflows"], "Input should be a valid list")
        if not raw:
            raise Reject(400, "At least one workflow link is required")
        links, seen = [], set()
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                raise not_object("workflows", index)
            if not isinstance(item.get("dag_id"), str) or not item["dag_id"]:
                raise missing(f"workflows.{index}.dag_id")
            check_types(item, LINK_TYPES, f"workflows.{index}")
            if item["dag_id"] in seen:
                raise Reject(400, f"Duplicate workflow link for dag_id {item['dag_id']}")
            seen.add(item["dag_id"])
            link = {"link_id": self.next_link_id, "dag_id": item["dag_id"], "workflow_symbol_id": symbol_id}
            link.update({k: item.get(k, default) for k, default in LINK_DEFAULTS.items()})
            self.next_link_id += 1
            links.append(link)
        return links

    def public_symbol(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k != "workflows"}
        out["workflows"] = [{k: v for k, v in link.items() if k != "workflow_symbol_id"} for link in row["workflows"]]
        return json.loads(json.dumps(out))  # a deep copy, as a client would see it

    def insert_symbol(self, body: Any, *, trigger: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Validate and store a symbol (POST body shape); return it and the auto-triggers it caused."""
        with self.lock:
            if not isinstance(body, dict):
                raise not_object()
            if not isinstance(body.get("symbol"), str):
                raise missing("symbol")
            symbol = self._symbol_key(body["symbol"].strip())
            check_types(body, SYMBOL_TYPES, "")
            if "workflows" not in body:
                raise missing("workflows")
            if symbol in self.symbols:
                raise Reject(409, f"Symbol {symbol} already exists")
            symbol_id = self.next_symbol_id
            links = self._links(body["workflows"], symbol_id)
            self.next_symbol_id += 1
            row = {"id": symbol_id, "symbol": symbol, "name": body.get("name"),
                   "enabled": body.get("enabled", True), "priority": body.get("priority", 0),
                   "conid": body.get("conid"), "created_at": now().isoformat(), "updated_at": None,
                   "workflows": links}
            self.symbols[symbol] = row
            fired = []
            if trigger:
                for link in links:  # the real service fires even for inactive links and disabled symbols
                    fired.append({"dag_id": link["dag_id"], "conf": {
                        "symbol": symbol, "conid": row["conid"], "workflow_symbol_id": symbol_id}})
                self.triggers.extend(fired)
            return self.public_symbol(row), fired

    def list_symbols(self, *, query: dict[str, str], body: Any) -> Reply:
        enabled_only = query.get("enabled_only", "false").lower()
        if enabled_only not in {"true", "false", "1", "0"}:
            raise invalid("bool_parsing", ["query", "enabled_only"], "Input should be a valid boolean")
        with self.lock:
            rows = [r for r in self.symbols.values() if r["enabled"] or enabled_only in {"false", "0"}]
            rows.sort(key=lambda r: (-r["priority"], r["symbol"]))
            return Reply(200, [self.public_symbol(r) for r in rows])

    def create_symbol(self, *, query: dict[str, str], body: Any) -> Reply:
        row, fired = self.insert_symbol(body, trigger=True)
        for trigger in fired:  # outside the lock: the hook may call back into the server
            self.notify(trigger)
        return Reply(201, row)

    def get_symbol(self, *, query: dict[str, str], body: Any, symbol: str) -> Reply:
        with self.lock:
            return Reply(200, self.public_symbol(self._existing(symbol)))

    def patch_symbol(self, *, query: dict[str, str], body: Any, symbol: str) -> Reply:
        with self.lock:
            row = self._existing(symbol)
            if not isinstance(body, dict):
                raise not_object()
            check_types(body, SYMBOL_TYPES, "")
            links = self._links(body["workflows"], row["id"]) if "workflows" in body else row["workflows"]
            row.update({k: body[k] for k in SYMBOL_TYPES if k in body})
            row["workflows"] = links
            row["updated_at"] = now().isoformat()
            return Reply(200, self.public_symbol(row))

    def delete_symbol(self, *, query: dict[str, str], body: Any, symbol: str) -> Reply:
        with self.lock:
            del self.symbols[self._existing(symbol)["symbol"]]
            return Reply(204, b"")

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

    def insert_artifact(self, body: Any) -> Reply:
        """POST semantics: 400 on name/type, 500 on any non-column key, no deduplication."""
        with self.lock:
            if not isinstance(body, dict):
                raise not_object()
            if not body.get("name") or not body.get("type"):
                raise Reject(400, "name and type are required")
            if body["type"] not in ARTIFACT_TYPES:
                raise Reject(400, f"Invalid artifact type: {body['type']}. Must be one of {list(ARTIFACT_TYPES)}")
            if unknown := sorted(set(body) - ARTIFACT_COLUMNS):
                # Artifact(**data) -> TypeError in the real service, answered as JSON (see the contract)
                return Reply(500, {"detail": f"{unknown[0]!r} is an invalid keyword argument for Artifact"})
            if self.strict_signals and body["type"] == "signal" and (problems := self._strict_signal_problems(body)):
                raise Reject(422, problems)
            artifact_id = self.next_artifact_id
            self.next_artifact_id += 1
            row = {"id": artifact_id, **{c: body.get(c) for c in sorted(ARTIFACT_COLUMNS)},
                   "created_at": now().isoformat(), "updated_at": None,
                   # computed on POST only (a PATCH of the prompt leaves them stale, as the service does)
                   "prompt_length": len(body["prompt"]) if isinstance(body.get("prompt"), str) else None,
                   "response_length": len(body["response"]) if isinstance(body.get("response"), str) else None}
            self.artifacts[artifact_id] = row
            return Reply(200, json.loads(json.dumps(row)))

    def create_artifact(self, *, query: dict[str, str], body: Any) -> Reply:
        return self.insert_artifact(body)

    def list_artifacts(self, *, query: dict[str, str], body: Any) -> Reply:
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise invalid("int_parsing", ["query", "limit"], "Input should be a valid integer") from None
        with self.lock:
            rows = [r for r in self.artifacts.values()
                    if all(r.get(k) == query[k] for k in ("type", "symbol", "execution_id") if k in query)]
            rows.sort(key=lambda r: r["id"], reverse=True)
            page = rows[: max(limit, 0)]
            # the real service's quirk: ``total`` counts the rows of THIS answer, not every match
            return Reply(200, {"artifacts": json.loads(json.dumps(page)), "total": len(page)})

    def _artifact(self, raw_id: str) -> dict[str, Any]:
        if not raw_id.isdigit():
            raise invalid("int_parsing", ["path", "artifact_id"], "Input should be a valid integer")
        if int(raw_id) not in self.artifacts:
            raise Reject(404, f"Artifact {raw_id} not found")
        return self.artifacts[int(raw_id)]

    def get_artifact(self, *, query: dict[str, str], body: Any, artifact_id: str) -> Reply:
        """One row; a chart gets ``prompt``, ``response``, ``model_name`` and their lengths copied
        in from the same execution's llm artifact (the service's detail answer does this)."""
        with self.lock:
            row = dict(self._artifact(artifact_id))
            if row["type"] == "chart" and row.get("execution_id"):
                llm = [r for r in self.artifacts.values() if r["type"] == "llm"
                       and r.get("execution_id") == row["execution_id"] and r.get("symbol") == row.get("symbol")]
                if llm:
                    source = max(llm, key=lambda r: r["id"])
                    row.update({k: source.get(k) for k in ("prompt", "response", "model_name", "prompt_length",
                                                          "response_length")})
            return Reply(200, json.loads(json.dumps(row)))

    def patch_artifact(self, *, query: dict[str, str], body: Any, artifact_id: str) -> Reply:
        with self.lock:
            row = self._artifact(artifact_id)
            if not isinstance(body, dict):
                raise not_object()
            if "type" in body and body["type"] not in ARTIFACT_TYPES:
                raise Reject(400, f"Invalid artifact type: {body['type']}. Must be one of {list(ARTIFACT_TYPES)}")
            row.update({k: v for k, v in body.items() if k in ARTIFACT_COLUMNS})  # unknown keys ignored
            row["updated_at"] = now().isoformat()
            return Reply(200, json.loads(json.dumps(row)))

    def artifact_market_data(self, *, query: dict[str, str], body: Any, artifact_id: str) -> Reply:
        """The bars a chart artifact was drawn from (``metadata.market_data_snapshot``), as the service
        answers them: ``{"symbol", "count", "data"}``, the newest ``limit`` (50) bars, newest first;
        404 without them."""
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            raise invalid("int_parsing", ["query", "limit"], "Input should be a valid integer") from None
        with self.lock:
            row = self._artifact(artifact_id)
            if row["type"] != "chart":
                raise Reject(400, "Market data is only available for chart artifacts")
            snapshot = (row.get("metadata") or {}).get("market_data_snapshot")
            if not isinstance(snapshot, dict) or not snapshot.get("bars"):
                raise Reject(404, f"No market data snapshot for artifact {artifact_id}")
            bars = list(reversed(snapshot["bars"]))[: max(limit, 0)]
            return Reply(200, json.loads(json.dumps({"symbol": row.get("symbol"), "count": len(bars), "data": bars})))

    def artifact_image(self, *, query: dict[str, str], body: Any, artifact_id: str) -> Reply:
        """The service's image route: first the object at ``chart_data.minio_url`` (bucket and object
        name from its path, read with the service's own MinIO client: ``object_store``; 503 without
        one, as the service answers without MinIO), then ``image_path`` when it is a plain file path
        on this machine (a ``file://`` URI never is); else it redraws from
        ``metadata.market_data_snapshot`` and, with no MinIO here, answers 500 after the redraw
        (``redraw_fail_s``; ~12 s on the real one); 409 when there is no snapshot either."""
        from pathlib import Path
        from urllib.parse import urlparse

        with self.lock:
            row = dict(self._artifact(artifact_id))
        if row["type"] != "chart":
            raise Reject(400, f"Artifact {artifact_id} is not a chart")
        minio_url = (row.get("chart_data") or {}).get("minio_url") if isinstance(row.get("chart_data"), dict) else None
        if minio_url and str(minio_url).startswith("http") and str(minio_url).lower().endswith((".png", ".jpg", ".jpeg")):
            parts = urlparse(minio_url).path.lstrip("/").split("/", 1)
            if len(parts) == 2:
                if self.object_store is None:
                    raise Reject(503, "MinIO client not available")
                try:
                    return Reply(200, self.object_store(parts[0], parts[1]), "image/png")
                except Exception as err:  # the service logs it and falls back to the local path / a redraw
                    log.warning("webui-server: MinIO object %s unreadable: %s", minio_url, err)
        path = row.get("image_path")
        if isinstance(path, str) and path.startswith("/") and Path(path).is_file():
            return Reply(200, Path(path).read_bytes(), "image/png")
        if not (row.get("metadata") or {}).get("market_data_snapshot"):
            raise Reject(409, "Chart image not available and no market data snapshot to regenerate it")
        time.sleep(self.redraw_fail_s)
        return Reply(500, {"detail": "Failed to upload regenerated chart to MinIO"})

    # market data & health --------------------------------------------------------------------

    def market_data(self, *, query: dict[str, str], body: Any, symbol: str) -> Reply:
        with self.lock:
            entries = self.market.get((symbol, query.get("data_type", "daily")), [])
            if not entries:
                raise Reject(404, f"No cached data found for symbol: {symbol}")
            current = now()
            data = [{"conid": e["conid"], "source": e["source"], "cached_at": e["cached_at"].isoformat(),
                     "expires_at": e["expires_at"].isoformat(), "is_expired": e["expires_at"] <= current,
                     "ohlcv_data": {"data": e["bars"]}}
                    for e in sorted(entries, key=lambda e: e["cached_at"], reverse=True)]
            return Reply(200, json.loads(json.dumps({"symbol": symbol, "count": len(data), "data": data})))

    def health(self, *, query: dict[str, str], body: Any) -> Reply:
        time.sleep(self.health_delay_s)  # the real one probes the IBKR gateway
        return Reply(200, {"status": "healthy", "database": "connected", "ibkr_gateway": "unreachable"})
