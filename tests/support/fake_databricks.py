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
from typing import Any

from .httpserver import BackgroundHTTPServer, Reply, Request

Outcome = tuple[str, str, str]  # life_cycle_state, result_state, state_message


class FakeDatabricks(BackgroundHTTPServer):
    name = "fake-databricks"

    def __init__(self, *, outcome: Outcome = ("TERMINATED", "SUCCESS", ""), running_polls: int = 2,
                 on_submit: Callable[[dict[str, Any]], Outcome | None] | None = None,
                 token: str = "fake-databricks-token") -> None:
        super().__init__()
        self.outcome = outcome
        self.running_polls = running_polls
        self.on_submit = on_submit
        self.token = token
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[int] = []
        self.authorizations: list[str] = []
        self._runs: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def connection_json(self) -> str:
        """``AIRFLOW_CONN_<ID>`` value: a databricks connection to this server over plain http."""
        return json.dumps({"conn_type": "databricks", "host": "127.0.0.1", "port": self.port,
                           "schema": "http", "password": self.token})

    # the API -----------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        body = request.json(empty={})
        with self._lock:
            self.authorizations.append(request.headers.get("Authorization", ""))
            status, answer = self._route(request.method, request.path, request.query, body)
        return Reply(status, answer)

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
