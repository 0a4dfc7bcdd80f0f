"""Step 3: the AutoGen team reviews the evidence and emits an auditable decision.

A model failure never crashes the step: the team's guardrails turn it into HOLD with confidence 0,
and this step labels the run ``review.fallback=true`` with the reason. ``compute_review`` runs the
team and shapes every record in memory; ``record_review`` writes the ``ReviewOutcome`` through
``ReviewRecord`` (and the MLflow trace).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow

from tradeflow.config import RunConfig
from tradeflow.errors import InputError, NotFoundError
from tradeflow.runs.records import ReviewRecord, Tag
from tradeflow.runs.tracking import code_version, log_own_params, stage_run

log = logging.getLogger(__name__)

STAGE = "review"
RECORD = ReviewRecord
ARTIFACTS = RECORD.described()


#: evidence.json is a few KB; anything far bigger is not evidence (and must not be downloaded whole).
MAX_EVIDENCE_BYTES = 2 * 1024 * 1024
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})/((?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+\.json)$")


def load_evidence(evidence_uri: str) -> dict[str, Any]:
    """Read evidence.json from ``runs:/<run id>/<path>.json`` or a regular local file, at most
    ``MAX_EVIDENCE_BYTES``. Everything else (directories, ``file://``, ``ftp://``, ``s3://`` ...)
    is refused in one line before anything is read or downloaded; numbers must be finite."""
    if "://" in evidence_uri:
        raise InputError(f"evidence_uri {evidence_uri[:80]!r}: only runs:/<run id>/<path>.json or a local file path "
                         "is accepted (no other URI schemes)")
    if evidence_uri.startswith("runs:/"):
        text = _load_run_artifact(evidence_uri)
    else:
        path = Path(evidence_uri)
        if not path.is_file():
            raise NotFoundError(f"evidence_uri {evidence_uri[:200]!r} is not a regular file")
        size = path.stat().st_size
        if size > MAX_EVIDENCE_BYTES:
            raise InputError(f"evidence_uri {evidence_uri[:200]!r} is {size:,} bytes, over the "
                             f"{MAX_EVIDENCE_BYTES:,}-byte limit for evidence")
        text = path.read_text(errors="replace")
    try:
        evidence = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"evidence_uri {evidence_uri[:200]!r} is not JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"evidence_uri {evidence_uri[:200]!r} is JSON nested too deep") from None
    except ValueError as exc:  # NaN / Infinity literals
        raise InputError(f"evidence_uri {evidence_uri[:200]!r}: {exc}") from None
    if not isinstance(evidence, dict):
        raise InputError(f"evidence_uri {evidence_uri[:200]!r} is not a JSON object")
    if where := _non_finite(evidence, "evidence"):
        raise InputError(f"evidence_uri {evidence_uri[:200]!r}: {where} is not a finite number")
    missing = [k for k in ("symbol", "indicators", "model", "latest_bars") if k not in evidence]
    if missing:
        raise InputError(f"evidence {evidence_uri!r} lacks {', '.join(missing)}; produce it with the inference entry point")
    return evidence


def _load_run_artifact(uri: str) -> str:
    """One file artifact of a run, after checking (by listing its folder) that it is a file under
    the size limit: ``load_text`` on a directory would download all of it first."""
    from mlflow.tracking import MlflowClient

    match = _RUNS_URI.match(uri)
    if not match or any(part in {".", ".."} for part in match.group(2).split("/")):
        raise InputError(f"evidence_uri {uri[:200]!r} must look like runs:/<32-hex run id>/<path>.json")
    run_id, path = match.groups()
    folder = path.rsplit("/", 1)[0] if "/" in path else None
    try:
        listed = MlflowClient().list_artifacts(run_id, folder)
    except Exception as exc:
        raise NotFoundError(f"evidence_uri {uri!r} cannot be read: {' '.join(str(exc).split())[:300]}") from None
    entry = next((item for item in listed if item.path == path), None)
    if entry is None or entry.is_dir:
        raise NotFoundError(f"evidence_uri {uri!r}: run {run_id} has no file {path}")
    if (entry.file_size or 0) > MAX_EVIDENCE_BYTES:
        raise InputError(f"evidence_uri {uri!r} is {entry.file_size:,} bytes, over the {MAX_EVIDENCE_BYTES:,}-byte "
                         "limit for evidence")
    try:
        return mlflow.artifacts.load_text(uri)
    except Exception as exc:
        raise NotFoundError(f"evidence_uri {uri!r} cannot be read: {' '.join(str(exc).split())[:300]}") from None


def _no_constant(name: str) -> float:
    raise InputError(f"{name} is not a finite number")


def _non_finite(value: Any, where: str, depth: int = 0) -> str | None:
    """The path of the first non-finite number (1e400 parses as inf), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        for key, item in value.items():
            if found := _non_finite(item, f"{where}.{key}", depth + 1):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := _non_finite(item, f"{where}[{index}]", depth + 1):
                return found
    return None


@dataclass(frozen=True, eq=False)
class ReviewOutcome:
    """The team's decision and everything the review run records about it, unrecorded."""

    outcome: Any  # review_agents' ReviewOutcome: decision, transcript, usage, fallback, guardrails
    signal_data: dict[str, Any]  # signal_data.json (TradingSignal rules checked)
    decision: dict[str, Any]  # decision.json
    #: only a language model reports token usage (the rules reviewer's counts are budget estimates)
    reports_tokens: bool
    conversation: str  # autogen_conversation.jsonl
    markdown: str  # transcript.md
    html: str  # transcript.html
    metrics: dict[str, float]
    tags: dict[str, str]  # the review.* tags (the trace id is added when the trace is logged)

    @property
    def action(self) -> str:
        return self.outcome.decision.action

    @property
    def confidence(self) -> float:
        return self.outcome.decision.confidence


def compute_review(cfg: RunConfig, evidence: dict[str, Any], evidence_uri: str, *,
                   reviewer: Callable[..., Any] | None = None) -> ReviewOutcome:
    """Review ``evidence`` (``reviewer`` defaults to ``review_agents.review``: with provider
    ``rules`` no model is called) and shape the decision, transcript, metrics and tags."""
    from review_agents import review, signal_payload, validate_signal_data

    from tradeflow.runs.review_trace import transcript_html, transcript_markdown

    outcome = (reviewer or review)(evidence, cfg.review)
    decision = outcome.decision
    reports_tokens = cfg.review.provider != "rules"
    transcript = outcome.transcript if reports_tokens else [
        {**line, "prompt_tokens": None, "completion_tokens": None} for line in outcome.transcript]
    markdown = transcript_markdown(cfg.symbol, outcome, reviewer=outcome.model_used, reports_tokens=reports_tokens)
    metrics = {
        "confidence": float(decision.confidence),
        **({"prompt_tokens": float(outcome.usage.get("prompt_tokens", 0)),
            "completion_tokens": float(outcome.usage.get("completion_tokens", 0)),
            "total_tokens": float(outcome.usage.get("total_tokens", 0))} if reports_tokens else {}),
        "latency_s": float(outcome.latency_s),
        "messages": float(outcome.messages),
    }
    tags = {
        Tag.REVIEW_ACTION: decision.action,
        Tag.REVIEW_MODEL_USED: outcome.model_used,
        Tag.REVIEW_FALLBACK: str(outcome.fallback_reason is not None).lower(),
        **({Tag.REVIEW_FALLBACK_REASON: outcome.fallback_reason} if outcome.fallback_reason else {}),
        Tag.REVIEW_CONTRADICTS_MODEL: str(bool(decision.contradicts_model)).lower(),
        **({Tag.REVIEW_GUARDRAILS: ",".join(outcome.guardrail_codes)[:5000]} if outcome.guardrail_codes else {}),
    }
    return ReviewOutcome(
        outcome=outcome, signal_data=validate_signal_data(signal_payload(outcome, evidence)),
        decision={"decision": decision.model_dump(mode="json"), "fallback_reason": outcome.fallback_reason,
                  "guardrail_notes": list(outcome.guardrail_notes), "model_used": outcome.model_used,
                  "evidence_uri": evidence_uri},
        reports_tokens=reports_tokens,
        conversation="\n".join(json.dumps(line, sort_keys=True, default=str) for line in transcript) + "\n",
        markdown=markdown, html=transcript_html(markdown, f"{cfg.symbol} review"), metrics=metrics, tags=tags)


def review_step(cfg: RunConfig, evidence: dict[str, Any], evidence_uri: str) -> dict:
    """Open the run, ``compute_review``, ``record_review``."""
    from review_agents import describe_client

    from tradeflow.runs import notes as run_notes

    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags={Tag.SYMBOL: cfg.symbol}) as run:
        own_params = run_notes.resolved_params(STAGE, cfg, evidence_uri=evidence_uri)
        log_own_params(own_params)
        client_info = describe_client(cfg.review)
        mlflow.log_params({"review.evidence_uri": evidence_uri,
                           **{f"review.{k}": v for k, v in client_info.items()},
                           **{k: v for k, v in cfg.flat_params().items() if k.startswith("cfg.review.")}})
        reviewed = compute_review(cfg, evidence, evidence_uri)
        return record_review(run, cfg, reviewed, evidence=evidence, own_params=own_params)


def record_review(run: Any, cfg: RunConfig, reviewed: ReviewOutcome, *, evidence: dict[str, Any],
                  own_params: dict) -> dict:
    """Log the outcome through ``ReviewRecord``, the conversation as an MLflow trace, the description."""
    from tradeflow.runs import notes as run_notes
    from tradeflow.runs.review_trace import log_review_trace

    outcome, reports_tokens = reviewed.outcome, reviewed.reports_tokens
    decision = outcome.decision
    reviewer = outcome.model_used
    mlflow.log_text(reviewed.conversation, RECORD.conversation.path)
    mlflow.log_text(reviewed.markdown, RECORD.transcript.path)
    mlflow.log_text(reviewed.html, RECORD.transcript_html.path)
    trace_id = log_review_trace(cfg.symbol, evidence, outcome, reviewer=reviewer, reports_tokens=reports_tokens)
    mlflow.set_tag(Tag.REVIEW_TRACE_ID, trace_id)
    mlflow.log_dict(reviewed.decision, RECORD.decision.path)
    mlflow.log_dict(reviewed.signal_data, RECORD.signal_data.path)
    mlflow.log_dict(evidence, RECORD.evidence.path)
    mlflow.log_metrics(reviewed.metrics)
    mlflow.set_tags(reviewed.tags)
    run_notes.set_name_and_note(
        run.info.run_id,
        run_notes.review_name(cfg.symbol, decision.action, decision.confidence, cfg.review.provider,
                              outcome.fallback_reason is not None),
        run_notes.review_note(cfg.symbol, decision.model_dump(mode="json"),
                              suggestion=evidence.get("model", {}).get("suggestion"), reviewer=reviewer,
                              fallback_reason=outcome.fallback_reason, reports_tokens=reports_tokens,
                              usage=outcome.usage, data=evidence.get("data", {}), as_of=evidence.get("as_of"),
                              position_mode=cfg.review.position_mode,
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
