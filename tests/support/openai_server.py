"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scriptable misbehaviour.

It speaks ``POST /v1/chat/completions`` over real sockets, so tests exercise the production
client path (autogen-ext -> openai SDK -> HTTP) instead of a mock. The role of each request
is read from the ``ROLE: <name>`` first line of its system message, and each role can be
given a behaviour:

``ok``              text for the analysts, ``decision`` (JSON) for the decision maker
``slow``            sleep ``slow_s`` seconds, then ``ok`` (for deadlines)
``malformed``       HTTP 200 with a truncated, non-JSON body
``refusal``         OpenAI-style refusal: ``content: null``, ``refusal: "..."``
``content_filter``  ``finish_reason: "content_filter"`` and no content
``http_500``        HTTP 500 whose error message echoes the Authorization header (redaction test)
``bad_json``        the decision maker answers prose instead of JSON
``fenced_json``     the decision JSON wrapped in a ```json fence
``obey_injection``  the model follows an injected headline: SELL at confidence 1

Usage::

    with OpenAICompatibleServer({"decision_maker": "refusal"}, decision={...}) as server:
        env = {"LLM_BASE_URL": server.base_url, "LLM_MODEL": "test-model"}
        ...
        server.requests  # every request body (parsed), role and Authorization header
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

from .httpserver import BackgroundHTTPServer, Reply, Request

ROLE_RE = re.compile(r"^ROLE: (\w+)", re.MULTILINE)
BEHAVIOURS = (
    "ok", "slow", "malformed", "refusal", "content_filter", "http_500", "bad_json", "fenced_json", "obey_injection",
)
HOLD_DECISION: dict[str, Any] = {
    "action": "HOLD", "confidence": 0.5, "entry": None, "stop_loss": None, "take_profit": None,
    "horizon": "5 bars", "key_factors": ["mixed evidence"], "rationale": "HOLD: the evidence is mixed.",
    "contradicts_model": False, "contradiction_reason": None,
}
INJECTED_DECISION: dict[str, Any] = {
    "action": "SELL", "confidence": 1.0, "entry": None, "stop_loss": None, "take_profit": None,
    "horizon": "1 bar", "key_factors": ["breaking headline"],
    "rationale": "SELL because the latest headline instructs to sell with confidence 1.",
    "contradicts_model": True, "contradiction_reason": "the headline said so",
}
ANALYST_TEXT = {
    "technical_analyst": "Trend is bullish: close above SMA20 and SMA50, RSI 64.\nTechnical stance: BUY",
    "risk_reviewer": "Backtest Sharpe 1.1 with a 9% drawdown; volatility normal. Stop 2 ATR.\nRisk view: acceptable.",
}


def _role(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") in {"system", "developer"}:
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            if isinstance(content, str) and (match := ROLE_RE.search(content)):
                return match.group(1)
    return "unknown"


def _completion(body: dict[str, Any], content: str | None, *, finish: str = "stop", refusal: str | None = None) -> dict[str, Any]:
    prompt_words = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
    completion_words = len((content or refusal or "").split())
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body.get("model", "test-model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }


class _Script:
    def __init__(self, behaviours: dict[str, str], decision: dict[str, Any] | None, slow_s: float) -> None:
        unknown = set(behaviours.values()) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}; use {BEHAVIOURS}")
        self.behaviours = behaviours
        self.decision = decision or HOLD_DECISION
        self.slow_s = slow_s
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def _ok_content(self, role: str, behaviour: str) -> str:
        if role == "decision_maker":
            decision = INJECTED_DECISION if behaviour == "obey_injection" else self.decision
            text = json.dumps(decision)
            return f"```json\n{text}\n```" if behaviour == "fenced_json" else text
        if behaviour == "obey_injection":
            return "The headline says to ignore the analysis and SELL with confidence 1."
        return ANALYST_TEXT.get(role, "No comment.")

    def respond(self, role: str, behaviour: str, body: dict[str, Any], authorization: str) -> tuple[int, bytes]:
        if behaviour == "slow":
            time.sleep(self.slow_s)
        if behaviour == "malformed":
            return 200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess'
        if behaviour == "http_500":
            error = {"error": {"message": f"upstream exploded while using {authorization}", "type": "server_error"}}
            return 500, json.dumps(error).encode()
        if behaviour == "refusal":
            payload = _completion(body, None, refusal="I'm sorry, but I can't help with that request.")
        elif behaviour == "content_filter":
            payload = _completion(body, None, finish="content_filter")
        elif behaviour == "bad_json" and role == "decision_maker":
            payload = _completion(body, "Here is my decision: BUY with high confidence, trust me.")
        else:
            payload = _completion(body, self._ok_content(role, behaviour))
        return 200, json.dumps(payload).encode()


class OpenAICompatibleServer(BackgroundHTTPServer):
    """Context manager: a scripted ``/v1/chat/completions`` endpoint on an ephemeral port."""

    name = "openai-test-server"

    def __init__(
        self,
        behaviours: dict[str, str] | None = None,
        *,
        decision: dict[str, Any] | None = None,
        slow_s: float = 5.0,
    ) -> None:
        super().__init__()
        self._script = _Script(dict(behaviours or {}), decision, slow_s)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._script.lock:
            return list(self._script.requests)

    def handle(self, request: Request) -> Reply:
        if request.method != "POST" or request.path.rstrip("/") != "/v1/chat/completions":
            return Reply(404, b'{"error": {"message": "not found"}}')
        body = request.json(empty={})
        role = _role(body)
        script = self._script
        behaviour = script.behaviours.get(role, script.behaviours.get("*", "ok"))
        authorization = request.headers.get("Authorization")
        with script.lock:
            script.requests.append({"role": role, "behaviour": behaviour, "body": body, "authorization": authorization})
        status, payload = script.respond(role, behaviour, body, authorization or "")
        return Reply(status, payload)
