"""The fake WebUI backend as a server object: HTTP in front of the ``Backend``, the fault plan
applied per request, the control API (``/__control__``), seeding and inspection for tests."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..data import trademaster_bars
from ..httpserver import BackgroundHTTPServer, Reply, Request
from .backend import Backend
from .bars import ibkr_bars
from .contract import ARTIFACT_COLUMNS, DEFAULT_DAG_ID, REASONS, Reject, now
from .faults import MALFORMED_BODY, FaultPlan, error_answer, take

log = logging.getLogger(__name__)


class WebUIServer(BackgroundHTTPServer):
    """The WebUI backend on a real loopback socket; context manager; thread-safe; in memory.

    ``stop()`` closes the listener (connection refused), ``start()`` listens again on the same port
    with the same state (``BackgroundHTTPServer``)."""

    name = "webui-server"
    server_header = "uvicorn"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict_signals: bool = False,
        on_trigger: Callable[[dict[str, Any]], None] | None = None,
        health_delay_s: float = 2.0,
        airflow_url: str | None = None,
        airflow_auth: tuple[str, str] | None = None,
        redraw_fail_s: float = 0.2,
        object_store: Callable[[str, str], bytes] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.on_trigger = on_trigger
        #: where the auto-trigger posts, as the real service does (``None``: recorded only)
        self.airflow_url = airflow_url.rstrip("/") if airflow_url else None
        self.airflow_auth = airflow_auth
        self._backend = Backend(strict_signals=strict_signals, health_delay_s=health_delay_s, notify=self._notify,
                                redraw_fail_s=redraw_fail_s, object_store=object_store)

    # the HTTP side -------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply | None:
        """Control calls are answered as they are; API calls go through the fault plan and the log."""
        try:
            body: Any = request.json()
        except ValueError:
            body = ValueError("JSON decode error")
        if request.path == "/__control__" or request.path.startswith("/__control__/"):
            return self._with_reason(self._control(request.method, request.path, body))
        entry = {"method": request.method, "path": request.path, "query": request.query,
                 "body_keys": sorted(body) if isinstance(body, dict) else None,
                 "body": None if isinstance(body, ValueError) else body,
                 "authorization": request.headers.get("Authorization"),
                 "status": None, "fault": None, "ts": time.time()}
        answer = self._answer(request.method, request.path, request.query, body, request.headers.get("Host", ""),
                              entry)
        with self._backend.lock:
            self._backend.requests.append(entry)
        return None if answer is None else self._with_reason(answer)  # None: "down", a dropped connection

    @staticmethod
    def _with_reason(answer: Reply) -> Reply:
        answer.reason = REASONS.get(answer.status)
        return answer

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

    def _fault(self, method: str, path: str) -> FaultPlan:
        """The plan in force for one API request (``for_s`` expiry and ``count`` bookkeeping)."""
        with self._backend.lock:
            plan, self._backend.fault = take(self._backend.fault, method, path)
            return plan

    def _answer(self, method: str, path: str, query: dict[str, str], body: Any, host: str,
                entry: dict[str, Any]) -> Reply | None:
        plan = self._fault(method, path)
        entry["fault"] = None if plan.mode == "normal" else plan.mode
        if plan.mode == "down":
            return None
        if plan.mode == "slow":
            time.sleep(plan.delay_s)
        if plan.mode == "malformed":
            answer = Reply(200, MALFORMED_BODY, "application/json")
        elif plan.mode == "error_then_recover" and not plan.after:
            answer = error_answer(plan)
        else:
            answer = self._apply(method, path, query, body, host)
            if plan.mode == "error_then_recover":
                answer = error_answer(plan)  # applied, then lost on the way back
        entry["status"] = answer.status
        return answer

    def _apply(self, method: str, path: str, query: dict[str, str], body: Any, host: str) -> Reply:
        if isinstance(body, ValueError):
            return Reply(422, {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]})
        return self._backend.route(method, path, query, body, host or f"{self.host}:{self.port}")

    def _notify(self, trigger: dict[str, Any]) -> None:
        if self.airflow_url:
            self._post_to_airflow(trigger)
        if self.on_trigger is None:
            return
        try:
            self.on_trigger(json.loads(json.dumps(trigger)))
        except Exception:  # the real service logs a failed trigger and still answers 201
            log.exception("webui-server: on_trigger hook failed for %s", trigger)

    def _post_to_airflow(self, trigger: dict[str, Any]) -> None:
        """The real service's auto-trigger request, exactly: the Airflow **2** REST path, basic auth,
        ``{"conf": {...}}`` and no ``logical_date``; any error is only logged (the create still
        answers 201). The answer is kept on the trigger (``airflow_status``, ``airflow_answer``)."""
        import base64
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"{self.airflow_url}/api/v1/dags/{trigger['dag_id']}/dagRuns", method="POST",
            data=json.dumps({"conf": trigger["conf"]}).encode(), headers={"Content-Type": "application/json"})
        if self.airflow_auth:
            token = base64.b64encode(":".join(self.airflow_auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback test URL
                status, text = answer.status, answer.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode(errors="replace")
        except OSError as err:
            status, text = None, f"{type(err).__name__}: {err}"
        if status != 200:
            log.warning("webui-server: auto-trigger of %s answered %s: %s", trigger["dag_id"], status, text[:300])
        with self._backend.lock:
            for kept in self._backend.triggers:
                if kept["conf"] == trigger["conf"] and kept["dag_id"] == trigger["dag_id"] and "airflow_status" not in kept:
                    kept.update(airflow_status=status, airflow_answer=text[:2000])
                    break

    def _control(self, method: str, path: str, body: Any) -> Reply:
        backend = self._backend
        try:
            if path == "/__control__" and method == "GET":
                return Reply(200, {**self.mode, "url": self.url})
            if path == "/__control__" and method == "POST":
                if not isinstance(body, dict):
                    raise ValueError('body must be a JSON object like {"mode": "normal"}')
                options = {k: v for k, v in body.items() if k != "mode"}
                return Reply(200, self.set_mode(body.get("mode", "normal"), **options))
            if path == "/__control__/requests" and method == "GET":
                return Reply(200, {"requests": self.requests})
            if path == "/__control__/requests" and method == "DELETE":
                self.clear_requests()
                return Reply(200, {"requests": []})
            if path == "/__control__/triggers" and method == "GET":
                return Reply(200, {"triggers": self.auto_triggers})
            if path == "/__control__/seed" and method == "POST":
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object in the state-file shape")
                return Reply(200, self.load_state(body))
            if path == "/__control__/reset" and method == "POST":
                self.reset()
                return Reply(200, {"reset": True})
        except (ValueError, TypeError) as exc:
            return Reply(400, {"detail": str(exc)})
        return Reply(404, {"detail": f"no control endpoint {method} {path}"})

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
        except Reject as rejected:
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
        ibkr = ibkr_bars(bars, fill_volume)
        cached = cached_at or now()
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
        except Reject as rejected:
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
            except Reject as rejected:
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
            return [self._backend.public_symbol(r) for r in
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


try:
    import pytest
except ImportError:  # the standalone server runs where pytest may be absent
    pass
else:

    @pytest.fixture
    def webui_server() -> Iterator[WebUIServer]:
        """A fresh WebUI backend per test (imported into ``tests/conftest.py``)."""
        with WebUIServer() as server:
            yield server
