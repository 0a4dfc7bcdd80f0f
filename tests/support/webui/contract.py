"""The WebUI backend's contract (``shared/contracts/webui-backend.md``): names, columns, defaults and
FastAPI's error shapes, written from the contract and not imported from ``tradeflow.webui`` (a fake
that shared the client's constants would agree with the client's bugs)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..httpserver import Reply

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
LINK_DEFAULTS: dict[str, Any] = {
    "is_active": True, "priority": 0, "timezone": "America/New_York", "session_start": "09:30",
    "session_end": "16:00", "allow_weekend": False, "schedule_interval": None, "config": None,
}
LINK_TYPES: dict[str, tuple[type, ...]] = {
    "is_active": (bool,), "priority": (int,), "timezone": (str,), "session_start": (str,),
    "session_end": (str,), "allow_weekend": (bool,), "schedule_interval": (str, type(None)),
    "config": (dict, list, str, int, float, bool, type(None)),
}
SYMBOL_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str, type(None)), "enabled": (bool,), "priority": (int,), "conid": (int, type(None)),
}
REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def now() -> datetime:
    return datetime.now(UTC)


class Reject(Exception):
    """Abort a handler with an HTTP answer (FastAPI's ``HTTPException``)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(detail)
        self.answer = Reply(status, {"detail": detail})


def invalid(kind: str, loc: list[Any], msg: str) -> Reject:
    """FastAPI's 422 shape for a request that fails validation."""
    return Reject(422, [{"type": kind, "loc": loc, "msg": msg}])


def missing(loc: str) -> Reject:
    return invalid("missing", ["body", *loc.split(".")], "Field required")


def not_object(*loc: Any) -> Reject:
    return invalid("dict_type", ["body", *loc], "Input should be a valid dictionary")


def check_types(body: Mapping[str, Any], types: Mapping[str, tuple[type, ...]], where: str) -> None:
    for key, allowed in types.items():
        if key not in body:
            continue
        value = body[key]
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            raise invalid("type_error", ["body", *filter(None, where.split(".")), key],
                          f"Input should be {' or '.join(t.__name__ for t in allowed)}")

