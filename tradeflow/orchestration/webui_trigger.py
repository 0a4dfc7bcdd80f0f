"""The WebUI backend's auto-trigger, served on Airflow 3.

When a person links a symbol in the WebUI's Workflow Symbols page, the backend posts the Airflow
**2** REST request ``POST /api/v1/dags/<dag_id>/dagRuns`` (basic auth, body ``{"conf": {"symbol",
"conid", "workflow_symbol_id"}}``, no ``logical_date``) and swallows any error. Airflow 3 has no
``/api/v1`` (405) and its ``/api/v2`` wants a token and a ``logical_date``, so nothing ran. This
FastAPI app, mounted by the Airflow plugin ``plugins/tradeflow_webui_trigger.py`` at ``/api/v1``,
answers that one request as Airflow 2 did: it checks the credentials
(``TRADEFLOW_WEBUI_TRIGGER_USER``/``_PASSWORD``, the WebUI stack's Airflow user; unset, every
request is refused, saying why), creates a queued manual run with the conf and ``logical_date`` =
now (Airflow 2's default, which the WebUI's Airflow Monitor page looks artifacts up by), and answers
Airflow 2's DAGRun JSON. It starts nothing else: the scheduler runs the run as any other.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations at definition time

import hmac
from typing import Any

PATH = "/dags/{dag_id}/dagRuns"
URL_PREFIX = "/api/v1"


def credentials_ok(header: str | None, user: str | None, password: str | None) -> bool:
    """Constant-time check of a ``Basic`` Authorization header against the configured user."""
    import base64
    import binascii

    if not user or not password or not header or not header.lower().startswith("basic "):
        return False
    try:
        given_user, _, given_password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given_user.encode(), user.encode()) & hmac.compare_digest(
        given_password.encode(), password.encode())


def dag_run_json(run: Any) -> dict[str, Any]:
    """An Airflow 2 ``DAGRun`` answer (the fields the WebUI backend and its Monitor page read)."""
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {"dag_id": run.dag_id, "dag_run_id": run.run_id, "logical_date": iso(run.logical_date),
            "execution_date": iso(run.logical_date), "start_date": iso(run.start_date),
            "end_date": iso(run.end_date), "state": str(run.state), "conf": run.conf or {},
            "run_type": str(run.run_type), "external_trigger": True, "note": None}


def create_app():
    """The ``/api/v1`` sub-application (FastAPI and Airflow load only here: inside the api-server)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from tradeflow.settings import current

    app = FastAPI(title="tradeflow: the WebUI's Airflow 2 trigger", docs_url=None, redoc_url=None, openapi_url=None)

    def problem(status: int, title: str, detail: str) -> JSONResponse:  # Airflow 2's problem+json shape
        return JSONResponse({"status": status, "title": title, "detail": detail, "type": "about:blank"},
                            status_code=status, media_type="application/problem+json",
                            headers={"WWW-Authenticate": "Basic"} if status == 401 else None)

    @app.post(PATH)
    async def post_dag_run(dag_id: str, request: Request):
        settings = current()
        if not (settings.webui_trigger_user and settings.webui_trigger_password):
            return problem(401, "Unauthorized", "the WebUI trigger is not configured: set "
                           "TRADEFLOW_WEBUI_TRIGGER_USER and TRADEFLOW_WEBUI_TRIGGER_PASSWORD on the api-server")
        if not credentials_ok(request.headers.get("authorization"), settings.webui_trigger_user,
                              settings.webui_trigger_password):
            return problem(401, "Unauthorized", "basic auth of the WebUI trigger user required")
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "Bad Request", "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("conf", {}), dict):
            return problem(400, "Bad Request", "the body must be {\"conf\": {...}}")
        if set(body) - {"conf", "dag_run_id", "logical_date", "execution_date", "note"}:
            return problem(400, "Bad Request", f"unknown fields: {', '.join(sorted(set(body) - {'conf'}))}")
        return await _trigger(dag_id, body, problem)

    return app


async def _trigger(dag_id: str, body: dict[str, Any], problem):
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    def start():
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.exceptions import DagNotFound, DagRunAlreadyExists
        from airflow.utils import timezone
        from airflow.utils.types import DagRunTriggeredByType

        logical = body.get("logical_date") or body.get("execution_date")
        try:
            when = timezone.parse(logical) if logical else timezone.utcnow()
            run = trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.REST_API, run_id=body.get("dag_run_id"),
                              conf=body.get("conf") or {}, logical_date=when, note=body.get("note"),
                              triggering_user_name="webui-trigger")
        except DagNotFound:
            return problem(404, "DAG not found", f"DAG with dag_id: '{dag_id}' not found")
        except DagRunAlreadyExists as err:
            return problem(409, "Conflict", str(err))
        except ValueError as err:
            return problem(400, "Bad Request", str(err))
        return JSONResponse(dag_run_json(run))

    return await run_in_threadpool(start)
