"""A loopback stand-in for the Databricks Jobs REST API (2.2): runs/submit, runs/get, runs/cancel.

It records every submitted payload so a test can assert what Airflow's ``DatabricksHook`` sent,
and plays back a chosen outcome per run (a few RUNNING polls, then a terminal state)::

    with FakeDatabricks(outcome=("TERMINATED", "SUCCESS", "")) as api:
        monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_DEFAULT", api.connection_json())
        ...  # code under test submits; api.submitted[0] is the JSON body
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Outcome = tuple[str, str, str]  # life_cycle_state, result_state, state_message


class FakeDatabricks:
    def __init__(self, *, outcome: Outcome = ("TERMINATED", "SUCCESS", ""), running_polls: int = 2,
                 on_submit: Callable[[dict[str, Any]], Outcome | None] | None = None,
                 token: str = "fake-databricks-token") -> None:
        self.outcome = outcome
        self.running_polls = running_polls
        self.on_submit = on_submit
        self.token = token
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[int] = []
        self.authorizations: list[str] = []
        self._runs: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeDatabricks:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner._handle(self, "GET")

            def do_POST(self) -> None:
                owner._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    def connection_json(self) -> str:
        """``AIRFLOW_CONN_<ID>`` value: a databricks connection to this server over plain http."""
        return json.dumps({"conn_type": "databricks", "host": "127.0.0.1", "port": self.port,
                           "schema": "http", "password": self.token})

    # the API -----------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length) or b"{}") if length else {}
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.authorizations.append(request.headers.get("Authorization", ""))
            status, answer = self._route(method, parts.path, query, body)
        data = json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if method == "POST" and path == "/api/2.2/jobs/runs/submit":
            token = body.get("idempotency_token")
            for run_id, run in self._runs.items():
                if token and run["token"] == token:
                    return 200, {"run_id": run_id}
            self.submitted.append(body)
            run_id = 1000 + len(self.submitted)
            outcome = (self.on_submit(body) if self.on_submit else None) or self.outcome
            self._runs[run_id] = {"polls": 0, "outcome": outcome, "token": token}
            return 200, {"run_id": run_id}
        if method == "GET" and path == "/api/2.2/jobs/runs/get":
            run_id = int(query.get("run_id", 0))
            run = self._runs.get(run_id)
            if run is None:
                return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Run {run_id} does not exist."}
            run["polls"] += 1
            if run["polls"] <= self.running_polls:
                state = {"life_cycle_state": "RUNNING", "state_message": "In run"}
            else:
                life, result, message = run["outcome"]
                state = {"life_cycle_state": life, "result_state": result, "state_message": message}
            return 200, {"run_id": run_id, "job_id": 1, "state": state,
                         "run_page_url": f"http://127.0.0.1:{self.port}/#job/1/run/{run_id}"}
        if method == "POST" and path == "/api/2.2/jobs/runs/cancel":
            run_id = int(body.get("run_id", 0))
            self.cancelled.append(run_id)
            if run_id in self._runs:
                self._runs[run_id]["outcome"] = ("TERMINATED", "CANCELED", "cancelled by the caller")
            return 200, {}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"{method} {path}"}
