"""The review as a person reads it: an MLflow 3 trace (one span per agent message) and a transcript.

The trace is built from the review's transcript after the team has finished, with each message's
own timestamps, rather than by MLflow's AutoGen autolog: the transcript is what the decision was
made from (redacted, guardrail notes and fallback included), a rule-based reviewer shows its steps
the same way, and the trace never depends on how autolog patches a given AutoGen release.
Token usage is set on a span only when a language model reported it (the rule-based reviewer
reports none: its "tokens" are an estimate used for the budget guardrail, not usage).
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

import mlflow
from mlflow.entities import SpanType
from mlflow.tracing.constant import SpanAttributeKey

#: transcript "agent" values that are not model messages
GUARDRAIL_AGENTS = {"guardrail"}
TASK_AGENTS = {"user", "task"}


def _ns(timestamp: str | None) -> int | None:
    if not timestamp:
        return None
    try:
        return int(datetime.fromisoformat(timestamp).timestamp() * 1e9)
    except ValueError:
        return None


def _content(text: str) -> Any:
    """JSON content (a decision draft, a final decision) as an object; anything else as text."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text
    return value if isinstance(value, (dict, list)) else text


def log_review_trace(symbol: str, evidence: dict[str, Any], outcome: Any, *, reviewer: str,
                     reports_tokens: bool) -> str:
    """Log one trace for the review (linked to the active run); return its trace id."""
    lines = list(outcome.transcript)
    times = [_ns(line.get("timestamp")) for line in lines]
    known = [t for t in times if t is not None]
    start = min(known) if known else None
    decision = outcome.decision.model_dump(mode="json")
    root = mlflow.start_span_no_context(
        name=f"review {symbol}",
        span_type=SpanType.AGENT,
        inputs={"symbol": symbol, "as_of": evidence.get("as_of"), "model_suggestion": evidence.get("model", {}).get("suggestion"),
                "indicators": evidence.get("indicators"), "backtest": evidence.get("backtest", {}).get("metrics")},
        attributes={"reviewer": reviewer, "messages": outcome.messages, "fallback_reason": outcome.fallback_reason or ""},
        start_time_ns=start,
    )
    previous = start
    for index, (line, at) in enumerate(zip(lines, times)):
        agent, kind = str(line.get("agent", "?")), str(line.get("type", "?"))
        span_type = (SpanType.UNKNOWN if agent in GUARDRAIL_AGENTS else SpanType.CHAIN if agent in TASK_AGENTS
                     else SpanType.CHAT_MODEL)
        span = mlflow.start_span_no_context(
            name=f"{index + 1:02d} {agent}: {kind}", span_type=span_type, parent_span=root,
            inputs={"agent": agent, "type": kind}, start_time_ns=previous if previous is not None else at,
        )
        prompt, completion = line.get("prompt_tokens") or 0, line.get("completion_tokens") or 0
        if reports_tokens and (prompt or completion):
            span.set_attribute(SpanAttributeKey.CHAT_USAGE, {"input_tokens": int(prompt), "output_tokens": int(completion),
                                                             "total_tokens": int(prompt) + int(completion)})
        span.end(outputs=_content(str(line.get("content", ""))), end_time_ns=at if at is not None else None)
        previous = at if at is not None else previous
    root.end(outputs={"decision": decision, "fallback_reason": outcome.fallback_reason,
                      "guardrail_notes": list(outcome.guardrail_notes)},
             end_time_ns=max(known) if known else None)
    for key, value in {"symbol": symbol, "decision": decision["action"], "reviewer": reviewer}.items():
        mlflow.set_trace_tag(root.trace_id, key, str(value))
    flush = getattr(mlflow, "flush_trace_async_logging", None)
    if flush is not None:
        flush()
    return root.trace_id


def transcript_markdown(symbol: str, outcome: Any, *, reviewer: str, reports_tokens: bool) -> str:
    """The conversation as markdown: one section per message, JSON pretty-printed."""
    d = outcome.decision
    out = [f"# {symbol} review: {d.action} (confidence {d.confidence:.2f})", "",
           f"Reviewer: {reviewer}." + (f" FALLBACK: {outcome.fallback_reason}." if outcome.fallback_reason else ""), ""]
    for index, line in enumerate(outcome.transcript, 1):
        tokens = ""
        if reports_tokens and (line.get("prompt_tokens") or line.get("completion_tokens")):
            tokens = f" ({line.get('prompt_tokens', 0)} prompt + {line.get('completion_tokens', 0)} completion tokens)"
        out += [f"## {index}. {line.get('agent')} ({line.get('type')}){tokens}", "", f"_{line.get('timestamp', '')}_", ""]
        content = _content(str(line.get("content", "")))
        if isinstance(content, (dict, list)):
            out += ["```json", json.dumps(content, indent=2, sort_keys=True), "```", ""]
        else:  # model text as data: an indented block (markdown shows it literally, HTML as paragraphs)
            out += ["\n".join("    " + row for row in str(content).splitlines()) or "    ", ""]
    return "\n".join(out)


def transcript_html(markdown_text: str, title: str) -> str:
    """The transcript as a self-contained page (the MLflow artifact viewer renders HTML): headings,
    wrapped paragraphs and JSON blocks; everything escaped."""
    body, in_code = [], False
    for line in markdown_text.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
        elif in_code:
            body.append(html.escape(line))
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_code:
        body.append("</pre>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;line-height:1.4}"
            "h2{font-size:1.05em;border-top:1px solid #ddd;padding-top:.6em}"
            "pre{white-space:pre-wrap;background:#f6f8fa;padding:.6em;border-radius:4px}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
