"""How the fake WebUI misbehaves: the fault plan, its ``for_s``/``count`` bookkeeping and the error
answers a proxy in front of the real service gives."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..httpserver import Reply
from .contract import REASONS

FAULT_MODES = ("normal", "down", "slow", "error_then_recover", "malformed")
#: What ``malformed`` answers: 200, ``application/json``, a truncated HTML error page inside.
MALFORMED_BODY = b'{"artifacts": [{"id": 1, "name": <html>Bad gateway'


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
      Back to ``normal`` once ``count`` is spent (1 when not given).
    - ``malformed``: answer 200, ``Content-Type: application/json``, with a truncated non-JSON body.

    ``methods`` (e.g. ``["POST"]``) and ``paths`` (path prefixes, e.g. ``["/api/artifacts/"]``) limit
    the fault to those requests; other requests behave. ``count`` given with any other mode faults
    that many matching requests, then reverts to ``normal`` (a fault that cannot miss its target on a
    slow machine, unlike a time window). ``for_s`` reverts any mode to ``normal`` after that many seconds.
    """

    mode: str = "normal"
    delay_s: float = 2.0
    count: int | None = None
    status: list[int] = field(default_factory=lambda: [503])
    retry_after: float | None = None
    after: bool = False
    stop_listener: bool = False
    methods: list[str] | None = None
    paths: list[str] | None = None
    for_s: float | None = None
    served: int = 0
    until: float | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> FaultPlan:
        """Validate a control request; raise ``ValueError`` with a one-line reason."""
        known = {"mode", "delay_s", "count", "status", "retry_after", "after", "stop_listener", "methods", "paths",
                 "for_s"}
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
            count=None if spec.get("count") is None else int(spec["count"]),
            status=statuses,
            retry_after=None if spec.get("retry_after") is None else float(spec["retry_after"]),
            after=bool(spec.get("after", False)),
            stop_listener=bool(spec.get("stop_listener", False)),
            methods=None if spec.get("methods") is None else [str(m).upper() for m in spec["methods"]],
            paths=None if spec.get("paths") is None else [str(p) for p in spec["paths"]],
            for_s=None if spec.get("for_s") is None else float(spec["for_s"]),
        )
        if plan.mode == "error_then_recover" and plan.count is None:
            plan.count = 1
        if plan.delay_s < 0 or (plan.count is not None and plan.count < 1) or (plan.for_s is not None and plan.for_s <= 0):
            raise ValueError("delay_s must be >= 0, count >= 1 and for_s > 0")
        if plan.stop_listener and (mode != "down" or plan.for_s is None):
            raise ValueError("stop_listener needs mode 'down' and for_s (nothing could restart it)")
        if plan.for_s is not None:
            plan.until = time.monotonic() + plan.for_s
        return plan

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in {"until"}}


def error_answer(plan: FaultPlan) -> Reply:
    """The answer of an ``error_then_recover`` request: a proxy's plain-text 5xx, or FastAPI's JSON."""
    status = plan.status[plan.served % len(plan.status)]
    headers = {}
    if plan.retry_after is not None and status in {429, 503}:
        headers["Retry-After"] = f"{plan.retry_after:g}"
    if status in {500, 502, 504}:
        return Reply(status, REASONS[status].encode(), "text/plain; charset=utf-8", headers)
    return Reply(status, {"detail": REASONS.get(status, "error")}, headers=headers)


def take(current: FaultPlan, method: str, path: str) -> tuple[FaultPlan, FaultPlan]:
    """(the plan for one API request, the plan in force afterwards): ``for_s`` expiry, ``methods``,
    ``paths`` and ``count`` bookkeeping. The caller holds the backend's lock."""
    if current.until is not None and time.monotonic() >= current.until:
        current = FaultPlan()
    if current.methods is not None and method not in current.methods:
        return FaultPlan(), current
    if current.paths is not None and not any(path.startswith(prefix) for prefix in current.paths):
        return FaultPlan(), current
    if current.count is None:
        return FaultPlan(**asdict(current)), current
    snapshot = FaultPlan(**asdict(current))
    current.served += 1
    return snapshot, (FaultPlan() if current.served >= current.count else current)
