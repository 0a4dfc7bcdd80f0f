"""``review``/``areview``: run one fresh team on one evidence bundle and always return an outcome.

Our own small interface in front of AutoGen (so the framework can be swapped): evidence in,
``ReviewOutcome`` out. Model failures never raise: they become HOLD at confidence 0 with a
``fallback_reason``. What does raise is misuse found before any model call: ``EvidenceError``
(bad bundle) and ``ReviewConfigError`` (missing environment variable).

The deadline is hard: a ``CancellationToken`` cancelled by a timer at ``timeout_s`` cancels the
in-flight model call (``asyncio.wait_for`` around ``team.run`` would only stop waiting), and
a short grace period after it bounds the team's own shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, ModelClientStreamingChunkEvent, StructuredMessage
from autogen_core import CancellationToken
from autogen_core.models import ChatCompletionClient

from tradeflow.config import ReviewConfig

from .clients import describe_client, make_client
from .evidence_view import Evidence, parse_evidence
from .failures import Failure, GuardedClient, classify_exception, classify_team_error
from .decision_rule import serve
from .guardrails import apply_guardrails, fallback_decision
from .prompts import forecaster_prompt, task_message
from tradeflow.redaction import Redactor, secret_values
from .schema import DecisionDraft, ReviewOutcome, TradeDecision, Usage
from .team import Limits, build_team, is_decision

log = logging.getLogger(__name__)

#: After the deadline fires, how long the team may take to unwind before we stop waiting.
SHUTDOWN_GRACE_S = 2.0
GUARDRAIL = "guardrail"

Message = BaseAgentEvent | BaseChatMessage


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _line(message: Message, redact: Callable[[str], str]) -> dict[str, Any]:
    """One transcript record; structured content is serialised as JSON."""
    if isinstance(message, StructuredMessage):
        content = message.content.model_dump_json()
    elif isinstance(getattr(message, "content", None), str):
        content = message.content  # type: ignore[union-attr]
    else:
        content = message.to_text()
    usage = message.models_usage
    return {
        "agent": message.source,
        "type": message.type,
        "content": redact(content),
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "timestamp": message.created_at.isoformat(),
    }


def _guardrail_line(kind: str, content: str, redact: Callable[[str], str]) -> dict[str, Any]:
    return {
        "agent": GUARDRAIL,
        "type": kind,
        "content": redact(content),
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "timestamp": _now(),
    }


async def _consume(team: Any, task: str, token: CancellationToken, sink: list[Message]) -> None:
    async for item in team.run_stream(task=task, cancellation_token=token):
        if not isinstance(item, (TaskResult, ModelClientStreamingChunkEvent)):
            sink.append(item)


async def _run_team(team: Any, task: str, timeout_s: float, sink: list[Message]) -> Failure | None:
    """Run until done or the deadline. Returns the failure (if any) that ended the run early."""
    token = CancellationToken()
    timer = asyncio.get_running_loop().call_later(timeout_s, token.cancel)
    runner = asyncio.ensure_future(_consume(team, task, token, sink))
    try:
        done, _ = await asyncio.wait({runner}, timeout=timeout_s + SHUTDOWN_GRACE_S)
    except asyncio.CancelledError:  # our caller was cancelled: stop the team too, then propagate
        token.cancel()
        runner.cancel()
        raise
    finally:
        timer.cancel()
    if not done:
        runner.cancel()
        return Failure("timeout", f"no answer within {timeout_s:g}s (team did not unwind)")
    if runner.cancelled():
        return Failure("timeout", f"deadline of {timeout_s:g}s reached")
    exc = runner.exception()
    if exc is None:
        return None
    if token.is_cancelled():
        return Failure("timeout", f"deadline of {timeout_s:g}s reached")
    return classify_exception(exc) if not isinstance(exc, RuntimeError) else classify_team_error(str(exc))


def _forecaster_message(evidence: dict[str, Any]) -> str | None:
    """The forecaster's system message when the evidence carries upstream's forecaster prompt."""
    entry = (evidence.get("prompts") or {}).get("forecaster") if isinstance(evidence.get("prompts"), dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) or not entry["text"].strip():
        return None
    return forecaster_prompt(entry["text"], str(entry.get("source") or "upstream FinAgent"))


def _model_used(config: ReviewConfig, client: ChatCompletionClient | None, environ: Mapping[str, str]) -> str:
    if client is None:
        return describe_client(config, environ)["model"]
    name = getattr(client, "model_name", None)
    if isinstance(name, str) and name:
        return name
    create_args = getattr(client, "_create_args", None)  # the OpenAI clients keep the model here
    if isinstance(create_args, dict) and create_args.get("model"):
        return str(create_args["model"])
    return type(client).__name__


def _no_decision_reason(limits: Limits | None) -> Failure:
    if limits is None:
        return Failure("no_decision", "the team was not built")
    if limits.tokens.fired:
        return Failure("token_limit", "max_total_tokens reached before the decision maker answered")
    if limits.messages.fired:
        return Failure("message_limit", "max_messages reached before the decision maker answered")
    return Failure("no_decision", "the team stopped without a structured decision")


async def areview(
    evidence: dict[str, Any],
    config: ReviewConfig,
    *,
    client: ChatCompletionClient | None = None,
    environ: Mapping[str, str] | None = None,
) -> ReviewOutcome:
    """Review one evidence bundle with a fresh team. Model failures give a HOLD fallback.

    ``client`` overrides the provider in ``config`` (tests, replay); it is not closed here.
    Raises only ``EvidenceError`` / ``ReviewConfigError``, before any model call.
    """
    started = time.perf_counter()
    environ = os.environ if environ is None else environ
    ev = parse_evidence(evidence)
    redact = Redactor([*secret_values(environ), *secret_values(os.environ)])
    owned = client is None
    base = make_client(config, environ) if client is None else client
    model_used = _model_used(config, client, environ)
    guarded = GuardedClient(base, redact)
    messages: list[Message] = []
    failure: Failure | None = None
    limits: Limits | None = None
    try:
        team, limits = build_team(guarded, config, forecaster_system_message=_forecaster_message(evidence))
        failure = await _run_team(team, task_message(evidence, ev), config.timeout_s, messages)
        if failure is not None and guarded.failures and failure.reason != "timeout":
            failure = guarded.failures[0]  # the precise reason, classified at the call
    except Exception as exc:  # noqa: BLE001 - a review never raises on a model/framework failure
        failure = guarded.failures[0] if guarded.failures else classify_exception(exc)
    finally:
        if owned:
            try:
                await base.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("review: closing the model client failed", exc_info=True)

    transcript = [_line(m, redact) for m in messages]
    draft = next((m.content for m in messages if is_decision(m)), None) if failure is None else None
    if failure is None and draft is None:
        failure = _no_decision_reason(limits)
    notes: list[str] = []
    decision: TradeDecision
    if failure is None and isinstance(draft, DecisionDraft):
        try:
            decision, notes = apply_guardrails(draft, ev, config)
            decision, served_notes = serve(decision, ev, evidence)
            notes += served_notes
        except Exception as exc:  # noqa: BLE001 - a guardrail bug must not become a trade
            failure = Failure(f"error:{type(exc).__name__}", f"guardrails failed: {exc}")
    if failure is not None:
        decision = fallback_decision(failure.reason, ev)
        transcript.append(_guardrail_line("Fallback", f"{failure.reason}: {failure.detail}", redact))
    decision = inert_decision(decision, redact)
    transcript += [_guardrail_line("GuardrailNote", note, redact) for note in notes]
    transcript.append(_guardrail_line("FinalDecision", decision.model_dump_json(), redact))

    usage = Usage(
        prompt_tokens=sum(line["prompt_tokens"] for line in transcript),
        completion_tokens=sum(line["completion_tokens"] for line in transcript),
    )
    outcome = ReviewOutcome(
        decision=decision,
        transcript=transcript,
        fallback_reason=failure.reason if failure else None,
        model_used=model_used,
        usage=usage.as_dict(),
        latency_s=round(time.perf_counter() - started, 4),
        messages=sum(1 for m in messages if isinstance(m, BaseChatMessage)),
        guardrail_notes=[redact(n) for n in notes],
        position_mode=config.position_mode,
    )
    _log_outcome(ev, outcome, failure, redact, reports_tokens=config.provider != "rules")
    return outcome


def inert_decision(decision: TradeDecision, redact: Callable[[str], str]) -> TradeDecision:
    """The decision's model-written text as data before it is stored anywhere: configured secrets
    and key shapes masked, one line, capped, no markup (``tradeflow.redaction.inert_text``)."""
    from tradeflow.redaction import inert_text

    def clean(text: str, cap: int) -> str:
        return inert_text(redact(text), cap)

    return decision.model_copy(update={
        "rationale": clean(decision.rationale, 2000),
        "key_factors": [clean(f, 300) for f in decision.key_factors],
        "horizon": clean(decision.horizon, 40),
        "contradiction_reason": clean(decision.contradiction_reason, 500) if decision.contradiction_reason else None,
    })


def _log_outcome(ev: Evidence, outcome: ReviewOutcome, failure: Failure | None, redact: Callable[[str], str],
                 *, reports_tokens: bool) -> None:
    d = outcome.decision
    if failure is not None:
        log.warning(redact(f"review {ev.symbol}: fallback HOLD ({failure.reason}: {failure.detail})"))
    # the rules reviewer only estimates tokens (for the token limit); it is not a language model
    tokens = f"tokens={outcome.usage['total_tokens']} " if reports_tokens else ""
    log.info(
        redact(
            f"review {ev.symbol}: {d.action} confidence={d.confidence:.2f} model={outcome.model_used} "
            f"messages={outcome.messages} {tokens}"
            f"latency={outcome.latency_s:.2f}s notes={len(outcome.guardrail_notes)}"
        )
    )


def review(
    evidence: dict[str, Any],
    config: ReviewConfig,
    *,
    client: ChatCompletionClient | None = None,
    environ: Mapping[str, str] | None = None,
) -> ReviewOutcome:
    """Synchronous ``areview``; safe to call from code that already runs an event loop."""
    coro = areview(evidence, config, client=client, environ=environ)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="review") as pool:
        return pool.submit(asyncio.run, coro).result()
