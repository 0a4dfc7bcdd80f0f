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


def review_record(review_run_id: str, client: MlflowClient | None = None, *,
                  pipeline_run_id: str | None = None) -> dict[str, Any]:
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
        "market_data_snapshot": snapshot, "links": mlflow_links(run, pipeline_run_id=pipeline_run_id),
    }


def mlflow_links(review_run: Any, *, pipeline_run_id: str | None = None,
                 ui_url: str | None = None) -> dict[str, str]:
    """Where a person finds the runs behind a WebUI artifact: clickable MLflow UI addresses (the
    ``TRADEFLOW_MLFLOW_UI_URL`` setting, else the tracking URI when it is a server), each with its
    ``runs:/`` URI beside it (``<name>_uri``). ``pipeline_run_id`` is this execution's own pipeline
    run: when the review was reused from an earlier execution, its parent is that execution's run,
    and both are linked."""
    from tradeflow.redaction import strip_credentials
    from tradeflow.runs.tracking import tracking_uri
    from tradeflow.settings import current

    if ui_url is None:
        ui_url = current().mlflow_ui_url or tracking_uri()
    base = strip_credentials(ui_url).rstrip("/")  # links are shown: never a password
    served = base.startswith(("http://", "https://"))
    experiment = review_run.info.experiment_id
    links: dict[str, str] = {}

    def add(name: str, run_id: str, path: str = "") -> None:
        uri = f"runs:/{run_id}" + (f"/{path}" if path else "")
        if served:
            links[name] = f"{base}/#/experiments/{experiment}/runs/{run_id}" + (f"/artifacts/{path}" if path else "")
            links[f"{name}_uri"] = uri
        else:
            links[name] = uri

    add("review_run", review_run.info.run_id)
    add("transcript", review_run.info.run_id, ReviewRecord.transcript.path)
    evidence_uri = (getattr(review_run.data, "params", None) or {}).get("review.evidence_uri", "")
    if evidence_uri.startswith("runs:/") and "/" in evidence_uri.removeprefix("runs:/"):
        inference_id, path = evidence_uri.removeprefix("runs:/").split("/", 1)
        add("evidence", inference_id, path)
    parent = review_run.data.tags.get(Tag.PARENT_RUN_ID)
    if pipeline_run_id:
        add("pipeline_run", pipeline_run_id)
        if parent and parent != pipeline_run_id:
            add("reused_from_pipeline_run", parent)
    elif parent:
        add("pipeline_run", parent)
    trace = review_run.data.tags.get(Tag.REVIEW_TRACE_ID)
    if trace and served:
        links["trace"] = f"{base}/#/experiments/{experiment}/traces?selectedEvaluationId={trace}"
    return links


#: what plots/price.png draws (tradeflow.steps.inference.price_chart), as the chart page lists it
CHART_INDICATORS = ("SMA 20", "SMA 50", "support", "resistance")
PROMPT_TEXT_MAX = 2000
PROMPT_LINE_MAX = 240


def readable_prompt(prompt: str, evidence_link: str | None) -> str:
    """The agents' question and evidence as lines of text (the WebUI prints the prompt whole; the
    evidence was one minified 4 KB JSON line), with the full JSON linked, not pasted. Each line
    that is a JSON object becomes ``key: value`` lines; other lines are kept (clipped)."""
    lines: list[str] = []

    def walk(value: Any, label: str, depth: int) -> None:
        pad = "  " * depth
        if isinstance(value, dict):
            if label:
                lines.append(f"{pad}{label}:")
            for key, sub in value.items():
                walk(sub, str(key), depth + (1 if label else 0))
        elif isinstance(value, list) and value and all(isinstance(v, (dict, list)) for v in value):
            lines.append(f"{pad}{label}: {len(value)} entries (see the JSON)")
        else:
            if isinstance(value, list):
                value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"{pad}{label}: {shown}"[:PROMPT_LINE_MAX])

    for line in str(prompt or "").splitlines():
        data = None
        if line.lstrip().startswith(("{", "[")):
            try:
                data = json.loads(line)
            except ValueError:
                data = None
        if isinstance(data, dict):
            walk(data, "", 0)
        elif line.strip():
            lines.append(line if len(line) <= PROMPT_LINE_MAX else line[: PROMPT_LINE_MAX - 3] + "...")
    text = "\n".join(lines)
    if len(text) > PROMPT_TEXT_MAX:
        text = text[:PROMPT_TEXT_MAX].rsplit("\n", 1)[0] + "\n... (the rest: see the JSON)"
    return text + (f"\nFull evidence (JSON): {evidence_link}" if evidence_link else "")


def chart_target(chart_dir: str, symbol: str, execution_id: str) -> str:
    """Where persist writes this execution's chart for the WebUI: one file per (symbol, execution),
    so a re-run of the execution replaces the image and another execution never does."""
    import re
    from pathlib import Path

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", execution_id).strip("._") or "execution"
    return str(Path(chart_dir).expanduser().resolve() / re.sub(r"[^A-Za-z0-9._-]+", "_", symbol) / f"{safe}.png")


def chart_object_url(endpoint: str, bucket: str, symbol: str, execution_id: str) -> str:
    """The WebUI's ``chart_data.minio_url`` for this execution's chart: path-style
    ``<endpoint>/<bucket>/charts/<symbol>/<execution>.png`` (the service reads the bucket and the
    object name from the path and fetches it with its own MinIO client; it must end in ``.png``)."""
    from pathlib import PurePosixPath

    relative = PurePosixPath(chart_target("/", symbol, execution_id)).relative_to("/")
    return f"{endpoint.rstrip('/')}/{bucket}/charts/{relative}"


def chart_image_path(chart_uri: str, chart_dir: str | None, symbol: str, execution_id: str) -> str | None:
    """The plain path the WebUI reads: under ``chart_dir`` when set; else the local store's own
    file (a ``file://`` URI is never found by the service); None when neither exists."""
    from urllib.parse import unquote, urlparse

    if chart_dir:
        return chart_target(chart_dir, symbol, execution_id)
    parsed = urlparse(chart_uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" and chart_uri.startswith("/"):
        return chart_uri
    return None


def build_artifacts(record: dict[str, Any], *, execution_id: str, dag_id: str, task_id: str,
                    chart_dir: str | None = None, chart_store: tuple[str, str] | None = None) -> list[dict[str, Any]]:
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
    prompt = readable_prompt(prompt, links.get("evidence"))
    # The WebUI's pages never show `metadata`: the MLflow links go where they are shown (the llm
    # response, the signal_data dump).
    # Model text is data (inert: no markup, no secret), even from a review run recorded before that rule.
    factors = [inert_text(f, 300) for f in decision.get("key_factors") or []]
    shown = [(k, v, links.get(f"{k}_uri")) for k, v in links.items() if not k.endswith("_uri")]
    response = (inert_text(decision["rationale"]) + ("\nKey factors: " + "; ".join(factors) if factors else "")
                + ("\nMLflow:" + "".join(f"\n- {k.replace('_', ' ')}: {v}" + (f" ({uri})" if uri else "")
                                          for k, v, uri in shown) if links else ""))
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
    minio_url = (chart_object_url(*chart_store, symbol, execution_id)
                 if record["chart_uri"] and chart_store else None)
    image_path = minio_url or (chart_image_path(record["chart_uri"], chart_dir, symbol, execution_id)
                               if record["chart_uri"] else None)
    if image_path:
        snapshot = record.get("market_data_snapshot") or {}
        chart_data = {"timeframe": snapshot.get("timeframe") or record["signal_data"].get("timeframe_analyzed"),
                      "bars_count": snapshot.get("bar_count", len(snapshot.get("bars") or [])) if snapshot else None,
                      "indicators": list(CHART_INDICATORS), **({"minio_url": minio_url} if minio_url else {})}
        # chart_data is sent whole: a PATCH replaces the service's own (its minio_url of a redraw
        # would otherwise win over our image for good)
        chart_meta = {**meta, "timeframe": chart_data["timeframe"], "indicators": list(CHART_INDICATORS),
                      **({"market_data_snapshot": snapshot} if snapshot else {})}
        payloads.append(webui.chart_artifact(image_path=image_path, chart_type="price", chart_data=chart_data,
                                             metadata=chart_meta, **lineage))
    elif record["chart_uri"]:
        log.warning("chart %s is not on a disk the WebUI reads: chart artifact not sent "
                    "(set TRADEFLOW_WEBUI_CHART_DIR)", record["chart_uri"])
    return redact_tree(payloads)  # the redaction boundary: no configured secret or URL userinfo leaves


@dataclass(frozen=True)
class PersistPlan:
    """What persist sends, before any request: the WebUI payloads, lineage included."""

    payloads: list[dict[str, Any]]  # signal, llm and (with a chart) chart artifacts
    chart_copy: tuple[str, str] | None = None  # (the MLflow chart URI, the path the WebUI reads) to write first

    @property
    def types(self) -> list[str]:
        return [payload["type"] for payload in self.payloads]


def persist_params(review_run_id: str, *, execution_id: str, dag_id: str, task_id: str) -> dict[str, str]:
    """The run's ``persist.*`` params."""
    return {"persist.review_run_id": review_run_id, "persist.execution_id": execution_id,
            "persist.dag_id": dag_id, "persist.task_id": task_id}


def plan_persist(record: dict[str, Any], *, execution_id: str, dag_id: str, task_id: str,
                 chart_dir: str | None = None, chart_store: tuple[str, str] | None = None) -> PersistPlan:
    """``review_record``'s answer (already read) -> the payloads to upsert (and, with
    ``chart_store`` = (S3 endpoint, bucket) or ``chart_dir``, where to write the chart first)."""
    payloads = build_artifacts(record, execution_id=execution_id, dag_id=dag_id, task_id=task_id,
                               chart_dir=chart_dir, chart_store=chart_store)
    chart = next((p for p in payloads if p["type"] == "chart"), None)
    copy = ((record["chart_uri"], chart["image_path"]) if chart is not None and (chart_dir or chart_store)
            else None)
    return PersistPlan(payloads, chart_copy=copy)


def persist_step(cfg: RunConfig, review_run_id: str, *, execution_id: str, dag_id: str, task_id: str) -> dict:
    """Open the run, read the review record, ``plan_persist``, send it (or record why not)."""
    from tradeflow.webui import WebUIClient

    tags = {Tag.SYMBOL: cfg.symbol, Tag.EXECUTION_ID: execution_id}
    with stage_run(STAGE, experiment_name=cfg.experiment_name, tags=tags) as run:
        log_own_params({"review_run_id": review_run_id, "execution_id": execution_id, "dag_id": dag_id, "task_id": task_id})
        mlflow.log_params(persist_params(review_run_id, execution_id=execution_id, dag_id=dag_id, task_id=task_id))
        from tradeflow.settings import current

        pipeline_run_id = MlflowClient().get_run(run.info.run_id).data.tags.get(Tag.PARENT_RUN_ID)
        record = review_record(review_run_id, pipeline_run_id=pipeline_run_id)
        client = WebUIClient.from_env()
        # skipped: no payloads are built, as before (nothing would send them)
        plan = plan_persist(record, execution_id=execution_id, dag_id=dag_id, task_id=task_id,
                            chart_dir=current().webui_chart_dir, chart_store=webui_chart_store()) if client is not None else None
        settle_first = bool(client is not None and interrupted_attempts(run, cfg.symbol, execution_id))
        return record_persist(run, cfg, plan, client=client, review_run_id=review_run_id, execution_id=execution_id,
                              settle_first=settle_first)


#: how the failure tag of a persist run begins when its process was stopped, not failed by itself
#: (``pipeline.close_abandoned_runs``, ``cli``'s SIGTERM, ``runs.projects``' cancel): its POST may
#: have been in flight
_INTERRUPTED = ("abandoned:", "terminated by signal", "entry point 'persist' cancelled")


def interrupted_attempts(run: Any, symbol: str, execution_id: str) -> list[str]:
    """Earlier persist runs of this symbol and execution that were stopped mid-way (killed worker,
    SIGTERM) rather than failing on their own: a POST of theirs may still be stored after this
    process looks, so ``upsert_artifact`` settles before its first POST (no duplicate artifact)."""
    client = MlflowClient()
    runs = client.search_runs([run.info.experiment_id], (
        f"tags.`{Tag.STAGE}` = '{STAGE}' and tags.`{Tag.SYMBOL}` = '{symbol}' "
        f"and tags.`{Tag.EXECUTION_ID}` = '{execution_id}' and attributes.status != 'FINISHED'"))
    return [r.info.run_id for r in runs if r.info.run_id != run.info.run_id
            and (r.info.status in ("RUNNING", "KILLED") or r.data.tags.get(Tag.FAILURE, "").startswith(_INTERRUPTED))]


def record_persist(run: Any, cfg: RunConfig, plan: PersistPlan | None, *, client: Any, review_run_id: str,
                   execution_id: str, settle_first: bool = False) -> dict:
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
    if plan.chart_copy:
        publish_chart(*plan.chart_copy)
    written = []
    for payload in plan.payloads:
        row, created = client.upsert_artifact(payload, settle_first=settle_first)
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


def webui_chart_store() -> tuple[str, str] | None:
    """(S3 endpoint, bucket) of the WebUI's MinIO when ``TRADEFLOW_WEBUI_CHART_BUCKET`` is set; its
    endpoint is ``MLFLOW_S3_ENDPOINT_URL`` (what the WebUI stack sets). A bucket without an endpoint
    is a clear error, not a silent local fallback."""
    import os

    from tradeflow.settings import current

    bucket = current().webui_chart_bucket
    if not bucket:
        return None
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL", "").strip()
    if not endpoint.startswith(("http://", "https://")):
        raise InputError("TRADEFLOW_WEBUI_CHART_BUCKET is set but MLFLOW_S3_ENDPOINT_URL is not an http(s) URL: "
                         "set it to the WebUI stack's MinIO endpoint")
    return endpoint, bucket


def upload_chart(local: str, minio_url: str) -> None:
    """Put the PNG at ``minio_url``'s bucket and key (boto3, credentials from the usual AWS_*
    variables, as MLflow's own S3 store does); the same key each run of the execution, so a re-run
    replaces the image the WebUI shows."""
    from urllib.parse import urlparse

    try:
        import boto3
    except ImportError:
        raise InputError("TRADEFLOW_WEBUI_CHART_BUCKET needs boto3 (pip install boto3==1.44.18)") from None
    parsed = urlparse(minio_url)
    bucket, key = parsed.path.lstrip("/").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=f"{parsed.scheme}://{parsed.netloc}")
    s3.upload_file(local, bucket, key, ExtraArgs={"ContentType": "image/png"})


def publish_chart(chart_uri: str, target: str) -> None:
    """Write the run's chart PNG at ``target``: an object in the WebUI's MinIO (``http...``), or a
    file (atomically: the WebUI never reads half a file). A re-run replaces it."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    local = mlflow.artifacts.download_artifacts(artifact_uri=chart_uri)
    if target.startswith(("http://", "https://")):
        upload_chart(local, target)
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=Path(target).parent, suffix=".png.tmp")
    os.close(fd)
    try:
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
