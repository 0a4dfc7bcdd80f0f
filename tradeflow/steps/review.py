"""Step 3: the AutoGen team reviews the evidence and emits an auditable decision.

A model failure never crashes the step: the team's guardrails turn it into HOLD with confidence 0,
and this step labels the run ``review.fallback=true`` with the reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import mlflow

from tradeflow.config import RunConfig
from tradeflow.tracking import TAG_SYMBOL, code_version, log_own_params, stage_run

log = logging.getLogger(__name__)

STAGE = "review"
ARTIFACTS = {
    "autogen_conversation.jsonl": "one line per message: agent, type, content, tokens (null: none reported), timestamp",
    "transcript.md": "the conversation, readable: one section per message, JSON pretty-printed",
    "transcript.html": "the same as a page the MLflow artifact viewer renders",
    "decision.json": "the validated TradeDecision, guardrail notes and fallback reason",
    "signal_data.json": "the WebUI signal_data payload (TradingSignal rules checked)",
    "evidence.json": "a copy of the evidence reviewed (so the run stands alone)",
}


def load_evidence(evidence_uri: str) -> dict[str, Any]:
    """Read evidence.json from a local path or any MLflow artifact URI (``runs:/...``)."""
    path = Path(evidence_uri)
    if path.is_file():
        text = path.read_text()
    else:
        try:
            text = mlflow.artifacts.load_text(evidence_uri)
        except Exception as exc:
            raise LookupError(f"evidence_uri {evidence_uri!r} cannot be read: {' '.join(str(exc).split())[:300]}") from None
    try:
        evidence = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"evidence_uri {evidence_uri!r} is not JSON ({exc.msg})") from None
    missing = [k for k in ("symbol", "indicators", "model", "latest_bars") if k not in evidence]
    if missing:
        raise ValueError(f"evidence {evidence_uri!r} lacks {', '.join(missing)}; produce it with the inference entry point")
    return evidence


def review_step(cfg: RunConfig, evidence: dict[str, Any], evidence_uri: str) -> dict:
    from review_agents import describe_client, review, signal_payload, validate_signal_data

    from tradeflow import run_notes
    from tradeflow.review_trace import log_review_trace, transcript_html, transcript_markdown

    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags={TAG_SYMBOL: cfg.symbol}) as run:
        own_params = run_notes.resolved_params(STAGE, cfg, evidence_uri=evidence_uri)
        log_own_params(own_params)
        client_info = describe_client(cfg.review)
        mlflow.log_params({"review.evidence_uri": evidence_uri,
                           **{f"review.{k}": v for k, v in client_info.items()},
                           **{k: v for k, v in cfg.flat_params().items() if k.startswith("cfg.review.")}})
        outcome = review(evidence, cfg.review)
        decision = outcome.decision
        signal_data = validate_signal_data(signal_payload(outcome, evidence))

        # Only a language model reports token usage; the rule-based reviewer's counts are estimates
        # for its budget guardrail and are not logged as usage.
        reports_tokens = cfg.review.provider != "rules"
        transcript = outcome.transcript if reports_tokens else [
            {**line, "prompt_tokens": None, "completion_tokens": None} for line in outcome.transcript]
        lines = "\n".join(json.dumps(line, sort_keys=True, default=str) for line in transcript)
        mlflow.log_text(lines + "\n", "autogen_conversation.jsonl")
        reviewer = outcome.model_used
        markdown = transcript_markdown(cfg.symbol, outcome, reviewer=reviewer, reports_tokens=reports_tokens)
        mlflow.log_text(markdown, "transcript.md")
        mlflow.log_text(transcript_html(markdown, f"{cfg.symbol} review"), "transcript.html")
        trace_id = log_review_trace(cfg.symbol, evidence, outcome, reviewer=reviewer, reports_tokens=reports_tokens)
        mlflow.set_tag("review.trace_id", trace_id)
        mlflow.log_dict({"decision": decision.model_dump(mode="json"), "fallback_reason": outcome.fallback_reason,
                         "guardrail_notes": list(outcome.guardrail_notes), "model_used": outcome.model_used,
                         "evidence_uri": evidence_uri}, "decision.json")
        mlflow.log_dict(signal_data, "signal_data.json")
        mlflow.log_dict(evidence, "evidence.json")
        mlflow.log_metrics({
            "confidence": float(decision.confidence),
            **({"prompt_tokens": float(outcome.usage.get("prompt_tokens", 0)),
                "completion_tokens": float(outcome.usage.get("completion_tokens", 0)),
                "total_tokens": float(outcome.usage.get("total_tokens", 0))} if reports_tokens else {}),
            "latency_s": float(outcome.latency_s),
            "messages": float(outcome.messages),
        })
        mlflow.set_tags({
            "review.action": decision.action,
            "review.model_used": outcome.model_used,
            "review.fallback": str(outcome.fallback_reason is not None).lower(),
            **({"review.fallback_reason": outcome.fallback_reason} if outcome.fallback_reason else {}),
            "review.contradicts_model": str(bool(decision.contradicts_model)).lower(),
            **({"review.guardrails": ",".join(outcome.guardrail_codes)[:5000]} if outcome.guardrail_codes else {}),
        })
        run_notes.set_name_and_note(
            run.info.run_id,
            run_notes.review_name(cfg.symbol, decision.action, decision.confidence, cfg.review.provider,
                                  outcome.fallback_reason is not None),
            run_notes.review_note(cfg.symbol, decision.model_dump(mode="json"),
                                  suggestion=evidence.get("model", {}).get("suggestion"), reviewer=reviewer,
                                  fallback_reason=outcome.fallback_reason, reports_tokens=reports_tokens,
                                  usage=outcome.usage, data=evidence.get("data", {}), as_of=evidence.get("as_of"),
                                  reproduce=run_notes.reproduce_block(STAGE, own_params, commit=code_version(),
                                                                      run_id=run.info.run_id,
                                                                      experiment_name=cfg.experiment_name)))
        label = f" (FALLBACK: {outcome.fallback_reason})" if outcome.fallback_reason else ""
        tokens = f"{outcome.usage.get('total_tokens', 0)} tokens" if reports_tokens else "no model tokens"
        print(f"{cfg.symbol}: review decision {decision.action} confidence {decision.confidence:.2f} "
              f"by {outcome.model_used}{label}; {outcome.messages} messages, "
              f"{tokens}, {outcome.latency_s:.2f}s; trace {trace_id}", flush=True)
        return {"run_id": run.info.run_id, "action": decision.action, "confidence": decision.confidence,
                "fallback_reason": outcome.fallback_reason}
