"""Step 4: publish the reviewed decision to the trading WebUI as ``signal``, ``llm`` and ``chart``
artifacts whose ``run_id``/``experiment_id`` point back at the review run.

Idempotent per (execution_id, step_name, symbol, type): a retried task or a re-run with the same
execution id patches the existing artifacts instead of adding new ones. With no
``BACKEND_API_URL`` the step is skipped and says so (tag ``webui.persist=skipped`` + output).
``plan_persist`` shapes the payloads from the review record in memory; ``persist_step`` reads the
record, sends the plan and records what the WebUI answered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from tradeflow.config import RunConfig
from tradeflow.errors import InputError
from tradeflow.runs.records import InferenceRecord, PersistRecord, ReviewRecord, Tag
from tradeflow.runs.tracking import log_own_params, stage_run

log = logging.getLogger(__name__)

STAGE = "persist"
RECORD = PersistRecord
ARTIFACTS = RECORD.described()


def review_record(review_run_id: str, client: MlflowClient | None = None) -> dict[str, Any]:
    """Everything persist needs from the review run (fails clearly if it is not a finished review)."""
    client = client or MlflowClient()
    run = client.get_run(review_run_id)
    if run.info.status != "FINISHED" or run.data.tags.get(Tag.STAGE) != ReviewRecord.stage:
        raise InputError(f"run {review_run_id} is not a FINISHED review run (status {run.info.status})")
    decision = ReviewRecord.decision.load_json(review_run_id)
    signal_data = ReviewRecord.signal_data.load_json(review_run_id)
    evidence = ReviewRecord.evidence.load_json(review_run_id)
    transcript = ReviewRecord.conversation.load_text(review_run_id)
    evidence_uri = run.data.params.get("review.evidence_uri", "")
    chart_uri = snapshot = None
    if evidence_uri.startswith("runs:/"):
        inference_run = client.get_run(evidence_uri.removeprefix("runs:/").split("/", 1)[0])
        chart_uri = InferenceRecord.price_plot.under(inference_run.info.artifact_uri)
        try:
            snapshot = InferenceRecord.price_bars.load_json(inference_run.info.run_id)
        except Exception:  # an inference run from before the snapshot existed
            snapshot = None
    return {
        "run": run, "decision": decision, "signal_data": signal_data, "evidence": evidence,
        "transcript_lines": [json.loads(line) for line in transcript.splitlines() if line.strip()],
        "transcript_uri": ReviewRecord.conversation.under(run.info.artifact_uri), "chart_uri": chart_uri,
        "market_data_snapshot": snapshot, "links": mlflow_links(run),
    }


def mlflow_links(review_run: Any) -> dict[str, str]:
    """Where a person finds the runs behind a WebUI artifact: MLflow UI addresses when the
    tracking URI is a server, else ``runs:/`` URIs (open them with ``mlflow ui`` on the store)."""
    from tradeflow.redaction import strip_credentials
    from tradeflow.runs.tracking import tracking_uri

    base = strip_credentials(tracking_uri()).rstrip("/")  # links are shown: never a password
    experiment = review_run.info.experiment_id

    def link(run_id: str, path: str = "") -> str:
        if base.startswith(("http://", "https://")):
            return f"{base}/#/experiments/{experiment}/runs/{run_id}" + (f"/artifacts/{path}" if path else "")
        return f"runs:/{run_id}" + (f"/{path}" if path else "")

    links = {"review_run": link(review_run.info.run_id),
             "transcript": link(review_run.info.run_id, ReviewRecord.transcript.path)}
    parent = review_run.data.tags.get(Tag.PARENT_RUN_ID)
    if parent:
        links["pipeline_run"] = link(parent)
    trace = review_run.data.tags.get(Tag.REVIEW_TRACE_ID)
    if trace and base.startswith(("http://", "https://")):
        links["trace"] = f"{base}/#/experiments/{experiment}/traces?selectedEvaluationId={trace}"
    return links


def build_artifacts(record: dict[str, Any], *, execution_id: str, dag_id: str, task_id: str) -> list[dict[str, Any]]:
    """The three contract-shaped payloads, lineage included."""
    from tradeflow import webui
    from tradeflow.redaction import inert_text, redact_tree

    run = record["run"]
    symbol = record["signal_data"]["symbol"]
    decision = record["decision"]["decision"]
    lineage = {"symbol": symbol, "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
               "workflow_id": dag_id, "dag_id": dag_id, "execution_id": execution_id, "task_id": task_id}
    prompt = next((line["content"] for line in record["transcript_lines"] if line.get("agent") in ("user", "task")), "")
    links = record.get("links") or {}
    # The WebUI's pages never show `metadata`: the MLflow links go where they are shown (the llm
    # response, the signal_data dump).
    # Model text is data (inert: no markup, no secret), even from a review run recorded before that rule.
    factors = [inert_text(f, 300) for f in decision.get("key_factors") or []]
    response = (inert_text(decision["rationale"]) + ("\nKey factors: " + "; ".join(factors) if factors else "")
                + ("\nMLflow: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in links.items()) if links else ""))
    meta = {"analysis_method": "trademaster_autogen", "mlflow_run_id": run.info.run_id,
            "model_uri": record["evidence"]["model"].get("uri"), "fallback_reason": record["decision"].get("fallback_reason")}
    payloads = [
        webui.signal_artifact(action=decision["action"], confidence=float(decision["confidence"]),
                              signal_data={**record["signal_data"], **({"mlflow": links} if links else {})},
                              metadata={**meta, "mlflow_links": links}, **lineage),
        webui.llm_artifact(prompt=prompt, response=response, model_name=record["decision"]["model_used"],
                           metadata={**meta, "transcript_uri": record["transcript_uri"],
                                     "messages": len(record["transcript_lines"])}, **lineage),
    ]
    if record["chart_uri"]:
        chart_meta = {**meta, **({"market_data_snapshot": record["market_data_snapshot"]}
                                 if record.get("market_data_snapshot") else {})}
        payloads.append(webui.chart_artifact(image_path=record["chart_uri"], chart_type="price",
                                             metadata=chart_meta, **lineage))
    return redact_tree(payloads)  # the redaction boundary: no configured secret or URL userinfo leaves


@dataclass(frozen=True)
class PersistPlan:
    """What persist sends, before any request: the WebUI payloads, lineage included."""

    payloads: list[dict[str, Any]]  # signal, llm and (with a chart) chart artifacts

    @property
    def types(self) -> list[str]:
        return [payload["type"] for payload in self.payloads]


def persist_params(review_run_id: str, *, execution_id: str, dag_id: str, task_id: str) -> dict[str, str]:
    """The run's ``persist.*`` params."""
    return {"persist.review_run_id": review_run_id, "persist.execution_id": execution_id,
            "persist.dag_id": dag_id, "persist.task_id": task_id}


def plan_persist(record: dict[str, Any], *, execution_id: str, dag_id: str, task_id: str) -> PersistPlan:
    """``review_record``'s answer (already read) -> the payloads to upsert."""
    return PersistPlan(build_artifacts(record, execution_id=execution_id, dag_id=dag_id, task_id=task_id))


def persist_step(cfg: RunConfig, review_run_id: str, *, execution_id: str, dag_id: str, task_id: str) -> dict:
    """Open the run, read the review record, ``plan_persist``, send it (or record why not)."""
    from tradeflow.webui import WebUIClient

    tags = {Tag.SYMBOL: cfg.symbol, Tag.EXECUTION_ID: execution_id}
    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags=tags) as run:
        log_own_params({"review_run_id": review_run_id, "execution_id": execution_id, "dag_id": dag_id, "task_id": task_id})
        mlflow.log_params(persist_params(review_run_id, execution_id=execution_id, dag_id=dag_id, task_id=task_id))
        record = review_record(review_run_id)
        client = WebUIClient.from_env()
        # skipped: no payloads are built, as before (nothing would send them)
        plan = plan_persist(record, execution_id=execution_id, dag_id=dag_id, task_id=task_id) if client is not None else None
        return record_persist(run, cfg, plan, client=client, review_run_id=review_run_id, execution_id=execution_id)


def record_persist(run: Any, cfg: RunConfig, plan: PersistPlan | None, *, client: Any, review_run_id: str,
                   execution_id: str) -> dict:
    """Upsert the plan's payloads (``client`` None: skipped, and the run says so) and log the ids."""
    from tradeflow.runs.notes import SEP, set_name_and_note

    if client is None:
        message = "BACKEND_API_URL is not set: WebUI persistence skipped (decision kept in MLflow only)"
        mlflow.set_tag(Tag.WEBUI_PERSIST, "skipped")
        mlflow.log_dict({"skipped": message}, RECORD.webui_artifacts.path)
        print(f"{cfg.symbol}: {message}", flush=True)
        set_name_and_note(run.info.run_id, SEP.join((cfg.symbol, "persist", "skipped (no WebUI)")),
                          f"## {cfg.symbol} · persist: skipped\n\n{message}.")
        return {"run_id": run.info.run_id, "skipped": True, "artifacts": []}
    written = []
    for payload in plan.payloads:
        row, created = client.upsert_artifact(payload)
        written.append({"type": payload["type"], "id": row["id"], "created": created})
        mlflow.set_tag(Tag.WEBUI_ARTIFACT_ID.format(kind=payload["type"]), str(row["id"]))
    mlflow.set_tags({Tag.WEBUI_PERSIST: "done", Tag.WEBUI_URL: client.base_url})
    mlflow.log_dict({"artifacts": written}, RECORD.webui_artifacts.path)
    summary = ", ".join(f"{w['type']} #{w['id']} ({'created' if w['created'] else 'updated'})" for w in written)
    print(f"{cfg.symbol}: WebUI artifacts {summary} for execution {execution_id}", flush=True)
    set_name_and_note(run.info.run_id, SEP.join((cfg.symbol, "persist", summary)),
                      f"## {cfg.symbol} · persist → WebUI `{client.base_url}`\n\nArtifacts: {summary}; "
                      f"execution `{execution_id}`, review run `{review_run_id}`.")
    return {"run_id": run.info.run_id, "skipped": False, "artifacts": written}
