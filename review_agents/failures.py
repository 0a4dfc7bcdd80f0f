"""Model failures as short machine-readable reasons, and the client wrapper that detects them.

AutoGen turns an exception inside an agent into ``RuntimeError("<Type>: <message>")`` at the
team level, which is too lossy to classify reliably. So every model call goes through
``GuardedClient``, which classifies the failure where the real exception (or the suspicious
result) is still in hand, records it, and re-raises. It also enforces structured output for
backends that cannot do json-schema output (JSON mode + validation here instead).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import ChatCompletionClient, CreateResult, LLMMessage, ModelInfo, RequestUsage
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ValidationError

#: Every fallback reason this package emits (``http_error:<status>`` carries the status code).
FALLBACK_REASONS = (
    "timeout",          # hard deadline (timeout_s) or an HTTP read timeout
    "refusal",          # the model declined (OpenAI refusal field, empty answer, apology text)
    "content_filter",   # the provider's content filter stopped the answer
    "invalid_json",     # the decision is not parseable JSON for the schema / body not JSON
    "truncated",        # finish_reason=length: the answer was cut off
    "answer_too_large", # one answer over MAX_ANSWER_CHARS (refused before it is parsed or stored)
    "http_error",       # http_error:<status>, after the client's own retries
    "connection_error", # endpoint unreachable
    "token_limit",      # max_total_tokens reached before a decision
    "message_limit",    # max_messages reached before a decision
    "no_decision",      # the team stopped without a decision for another reason
    "error",            # error:<ExceptionType>, anything else
)

_REFUSAL_RE = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|as an ai|"
    r"i (?:can(?:'|no)t|cannot|won'?t|will not|am unable to|am not able to) "
    r"(?:help|assist|comply|provide|do that|fulfil|fulfill|support))",
    re.IGNORECASE,
)
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)
_MAX_TEXT_REFUSAL_CHARS = 300
#: One model answer larger than this is refused before parsing: a decision is a few hundred
#: characters, an analyst's report a few thousand.
MAX_ANSWER_CHARS = 32_000


@dataclass(frozen=True)
class Failure:
    """One classified failure: ``reason`` is machine-readable, ``detail`` one human line."""

    reason: str
    detail: str


class ModelFailure(Exception):
    """Raised by ``GuardedClient``; carries the classified failure through the team."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.reason}: {failure.detail}")
        self.failure = failure


def _first_line(text: object, limit: int = 300) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line[:limit]


def classify_exception(exc: BaseException) -> Failure:
    """Map a client exception to a reason (openai, ollama, httpx, pydantic, json, timeouts)."""
    if isinstance(exc, ModelFailure):
        return exc.failure
    name = type(exc).__name__
    detail = _first_line(exc) or name
    try:
        import openai
    except ImportError:  # pragma: no cover - openai ships with autogen-ext[openai]
        openai = None  # type: ignore[assignment]
    if openai is not None:
        if isinstance(exc, openai.APITimeoutError):
            return Failure("timeout", detail)
        if isinstance(exc, openai.APIStatusError):
            return Failure(f"http_error:{exc.status_code}", detail)
        if isinstance(exc, openai.APIConnectionError):
            return Failure("connection_error", detail)
        if isinstance(exc, openai.APIResponseValidationError):
            return Failure("invalid_json", f"response body invalid: {detail}")
        if isinstance(exc, openai.ContentFilterFinishReasonError):
            return Failure("content_filter", detail)
        if isinstance(exc, openai.LengthFinishReasonError):
            return Failure("truncated", detail)
    status = getattr(exc, "status_code", None)
    if name == "ResponseError" and isinstance(status, int) and status > 0:  # ollama
        return Failure(f"http_error:{status}", detail)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or name.endswith("TimeoutException"):
        return Failure("timeout", detail)
    if isinstance(exc, (json.JSONDecodeError, ValidationError)):
        return Failure("invalid_json", detail)
    if name in {"ConnectError", "ConnectionError", "ConnectionRefusedError", "RequestError"}:
        return Failure("connection_error", detail)
    return Failure(f"error:{name}", detail)


def classify_team_error(message: str) -> Failure:
    """Last resort for an error AutoGen flattened to ``"<Type>: <message>"`` (no guarded call)."""
    head = _first_line(message)
    kind = head.split(":", 1)[0].strip()
    if kind == "ValidationError" or "validation error" in head.lower():
        return Failure("invalid_json", head)
    return Failure(f"error:{kind or 'RuntimeError'}", head)


def looks_like_refusal(text: str) -> bool:
    return bool(_REFUSAL_RE.match(text))


def strip_fences(text: str) -> str:
    """```json ... ``` around a JSON answer is common in JSON mode; remove it."""
    match = _FENCE_RE.match(text)
    return match.group(1) if match else text.strip()


def _is_model_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


class GuardedClient(ChatCompletionClient):
    """Delegates to a real client; classifies failures into ``failures`` and raises ``ModelFailure``."""

    def __init__(self, inner: ChatCompletionClient, redact: Callable[[str], str] = lambda text: text) -> None:
        self.inner = inner
        self.failures: list[Failure] = []
        self.calls = 0
        self._redact = redact

    def _fail(self, failure: Failure) -> ModelFailure:
        # Redact here: AutoGen logs and re-raises this message, and providers echo keys in errors.
        failure = Failure(failure.reason, self._redact(failure.detail))
        self.failures.append(failure)
        return ModelFailure(failure)

    def _request_format(self, json_output: bool | type[BaseModel] | None) -> bool | type[BaseModel] | None:
        if _is_model_type(json_output) and not self.inner.model_info.get("structured_output", False):
            return True if self.inner.model_info.get("json_output", False) else None
        return json_output

    def _check(self, result: CreateResult, json_output: bool | type[BaseModel] | None) -> CreateResult:
        if result.finish_reason == "content_filter":
            raise self._fail(Failure("content_filter", "finish_reason=content_filter"))
        if not isinstance(result.content, str):
            raise self._fail(Failure("invalid_json", "unexpected tool call (no tools are offered)"))
        text = result.content
        if len(text) > MAX_ANSWER_CHARS:
            raise self._fail(Failure("answer_too_large", f"{len(text):,} characters, over the {MAX_ANSWER_CHARS:,} cap"))
        if not text.strip():
            raise self._fail(Failure("refusal", "empty completion (a refusal, or the model returned nothing)"))
        if _is_model_type(json_output):
            cleaned = strip_fences(text)
            try:
                json_output.model_validate_json(cleaned)  # type: ignore[union-attr]
            except ValidationError as exc:
                if looks_like_refusal(text):
                    raise self._fail(Failure("refusal", _first_line(text))) from None
                if result.finish_reason == "length":
                    raise self._fail(Failure("truncated", "finish_reason=length")) from None
                raise self._fail(Failure("invalid_json", _first_line(exc.errors()[0]["msg"]))) from None
            return result.model_copy(update={"content": cleaned}) if cleaned != text else result
        if len(text) <= _MAX_TEXT_REFUSAL_CHARS and looks_like_refusal(text):
            raise self._fail(Failure("refusal", _first_line(text)))
        return result

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        self.calls += 1
        try:
            result = await self.inner.create(
                messages,
                tools=tools,
                tool_choice=tool_choice,
                json_output=self._request_format(json_output),
                extra_create_args=extra_create_args,
                cancellation_token=cancellation_token,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified, recorded and re-raised
            raise self._fail(classify_exception(exc)) from None  # the cause may quote a key
        return self._check(result, json_output)

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )

    async def close(self) -> None:
        await self.inner.close()

    def actual_usage(self) -> RequestUsage:
        return self.inner.actual_usage()

    def total_usage(self) -> RequestUsage:
        return self.inner.total_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return self.inner.count_tokens(messages, tools=tools)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return self.inner.remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> Any:  # deprecated in autogen-core; kept for the ABC
        return self.inner.model_info

    @property
    def model_info(self) -> ModelInfo:
        return self.inner.model_info
