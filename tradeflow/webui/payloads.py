"""The WebUI artifact payloads (``signal``, ``llm``, ``chart``) as the backend's contract wants them.

Builders refuse what the WebUI would misrender (the TradingSignal rules, ``tradeflow.trading_signal``;
a confidence outside 0..1; missing lineage) and ``clean_artifact_payload`` keeps only the columns the
service has: any other key makes it answer 500. No HTTP here: ``tradeflow.webui.client`` sends them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import PurePath
from typing import Any, Final

from tradeflow.errors import InputError
from tradeflow.names import DAG_ID
from tradeflow.trading_signal import ACTIONS, check_trading_signal

log = logging.getLogger("tradeflow.webui")

__all__ = ["ACTIONS", "ARTIFACT_KEYS", "ARTIFACT_TYPES", "COMMON_KEYS", "DAG_ID", "IDENTITY_KEYS", "STEP_CHART",
           "STEP_LLM", "STEP_SIGNAL", "chart_artifact", "check_trading_signal", "clean_artifact_payload",
           "llm_artifact", "service_names", "signal_artifact"]

STEP_SIGNAL: Final = "trademaster_autogen_decision"
STEP_LLM: Final = "trademaster_autogen_review"
STEP_CHART: Final = "trademaster_autogen_chart"

ARTIFACT_TYPES: Final = ("llm", "chart", "signal")
COMMON_KEYS: Final = frozenset({"name", "type", "symbol", "run_id", "experiment_id", "workflow_id",
                                "execution_id", "step_name", "dag_id", "task_id", "metadata"})
#: The keys the contract allows per artifact type; anything else is dropped before sending.
ARTIFACT_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "llm": COMMON_KEYS | {"prompt", "response", "model_name"},
    "chart": COMMON_KEYS | {"image_path", "chart_type", "chart_data"},
    "signal": COMMON_KEYS | {"action", "confidence", "signal_data"},
}
#: The identity of an artifact for idempotency (the service has no unique key of its own).
IDENTITY_KEYS: Final = ("execution_id", "step_name", "symbol", "type")


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars, dates and paths become plain; NaN/inf become null
    (PostgreSQL JSON refuses NaN, and the service would answer 500)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / pandas scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    return value


def clean_artifact_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as the service accepts it: only the contract's keys for its ``type`` (others are
    dropped and named in a warning, since any of them would make the service answer 500), ``None``
    values dropped (so an update never blanks a column), values JSON-ready. Raises ``ValueError``
    for a missing name, an unknown type or a signal confidence outside 0..1."""
    kind = payload.get("type")
    if kind not in ARTIFACT_TYPES:
        raise InputError(f"artifact type must be one of {', '.join(ARTIFACT_TYPES)}, got {kind!r}")
    if not payload.get("name"):
        raise InputError("artifact 'name' is required")
    allowed = ARTIFACT_KEYS[kind]
    if dropped := sorted(set(payload) - allowed):
        log.warning("WebUI %s artifact: dropping keys the service does not have (it would answer 500): %s",
                    kind, ", ".join(dropped))
    body = {key: _plain(value) for key, value in payload.items() if key in allowed and value is not None}
    if kind == "signal" and "confidence" in body:
        _check_confidence(body["confidence"])
    return body


def _check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
        raise InputError(f"signal confidence must be a number 0..1 (the UI multiplies by 100), got {confidence!r}")
    return float(confidence)


def _lineage(kind: str, *, symbol: str, run_id: str, experiment_id: str | int, execution_id: str,
             dag_id: str, workflow_id: str | None, task_id: str | None, step_name: str,
             name: str | None, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The common keys. ``run_id``/``experiment_id`` are required: the service cannot fill them."""
    if not symbol or not run_id or experiment_id in (None, "") or not execution_id:
        raise InputError(f"{kind} artifact needs symbol, run_id, experiment_id and execution_id "
                         f"(got {symbol!r}, {run_id!r}, {experiment_id!r}, {execution_id!r})")
    titles = {"signal": "Signal", "llm": "Review", "chart": "Chart"}
    return {
        "name": name or f"TradeMaster AutoGen {titles[kind]} {symbol}", "type": kind, "symbol": symbol,
        "run_id": run_id, "experiment_id": str(experiment_id), "workflow_id": workflow_id or dag_id,
        "execution_id": execution_id, "step_name": step_name, "dag_id": dag_id, "task_id": task_id,
        "metadata": {"analysis_method": "trademaster_autogen", **(metadata or {})},
    }


def signal_artifact(
    *,
    symbol: str,
    action: str,
    confidence: float,
    signal_data: Mapping[str, Any],
    run_id: str,
    experiment_id: str | int,
    execution_id: str,
    dag_id: str = DAG_ID,
    workflow_id: str | None = None,
    task_id: str | None = None,
    step_name: str = STEP_SIGNAL,
    metadata: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A ``signal`` payload as the WebUI renders it. ``confidence`` is 0..1 and must agree with
    ``signal_data.confidence_score`` (0..100); ``action`` with ``signal_data.action``."""
    action = action.strip().upper()
    confidence = _check_confidence(confidence)
    check_trading_signal(signal_data)
    if signal_data["action"] != action:
        raise InputError(f"signal action {action} disagrees with signal_data.action {signal_data['action']}")
    if abs(confidence * 100 - float(signal_data["confidence_score"])) > 0.5:
        raise InputError(f"signal confidence {confidence:g} disagrees with signal_data.confidence_score "
                         f"{signal_data['confidence_score']:g} (expected confidence * 100)")
    if signal_data.get("symbol") not in (None, symbol):
        raise InputError(f"signal symbol {symbol} disagrees with signal_data.symbol {signal_data['symbol']}")
    payload = _lineage("signal", symbol=symbol, run_id=run_id, experiment_id=experiment_id,
                       execution_id=execution_id, dag_id=dag_id, workflow_id=workflow_id, task_id=task_id,
                       step_name=step_name, name=name, metadata=metadata)
    return {**payload, "action": action, "confidence": confidence,
            "signal_data": _plain({**service_names(signal_data), **signal_data})}


def service_names(signal_data: Mapping[str, Any]) -> dict[str, Any]:
    """The names the service's own ``llm_analysis`` summary reads (``confidence_level``,
    ``entry_price``, ``stop_loss``, ``take_profit``, ``is_actionable``), copied from the
    TradingSignal fields; without them the summary never appears. A name already set wins."""
    entry = signal_data.get("suggested_entry_price")
    return {"confidence_level": signal_data.get("confidence"), "entry_price": entry,
            "stop_loss": signal_data.get("suggested_stop_loss"),
            "take_profit": signal_data.get("suggested_take_profit"),
            "is_actionable": signal_data.get("action") in ("BUY", "SELL") and entry is not None}


def llm_artifact(
    *,
    symbol: str,
    prompt: str,
    response: str,
    model_name: str,
    run_id: str,
    experiment_id: str | int,
    execution_id: str,
    transcript_uri: str | None = None,
    dag_id: str = DAG_ID,
    workflow_id: str | None = None,
    task_id: str | None = None,
    step_name: str = STEP_LLM,
    metadata: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """An ``llm`` payload; its metadata must point at the conversation transcript
    (``transcript_uri`` here or ``metadata["transcript_uri"]``, e.g. the MLflow artifact URI)."""
    meta = {**(metadata or {}), **({"transcript_uri": transcript_uri} if transcript_uri else {})}
    if not meta.get("transcript_uri"):
        raise InputError("llm artifact needs transcript_uri (the MLflow URI of autogen_conversation.jsonl)")
    if not response or not model_name:
        raise InputError("llm artifact needs a non-empty response and model_name")
    payload = _lineage("llm", symbol=symbol, run_id=run_id, experiment_id=experiment_id,
                       execution_id=execution_id, dag_id=dag_id, workflow_id=workflow_id, task_id=task_id,
                       step_name=step_name, name=name, metadata=meta)
    return {**payload, "prompt": prompt, "response": response, "model_name": model_name}


def chart_artifact(
    *,
    symbol: str,
    image_path: str,
    chart_type: str,
    run_id: str,
    experiment_id: str | int,
    execution_id: str,
    chart_data: Any = None,
    dag_id: str = DAG_ID,
    workflow_id: str | None = None,
    task_id: str | None = None,
    step_name: str = STEP_CHART,
    metadata: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A ``chart`` payload; ``image_path`` is a plain file path the service can read (it never
    resolves a URI such as ``file://``), or ``chart_data.minio_url`` names the uploaded object."""
    if not image_path or not chart_type:
        raise InputError("chart artifact needs image_path and chart_type")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", str(image_path)) and not (isinstance(chart_data, Mapping) and chart_data.get("minio_url")):
        raise InputError(f"chart image_path must be a plain file path the WebUI service reads, got the URI "
                         f"{image_path!r} (set TRADEFLOW_WEBUI_CHART_DIR to a directory it reads)")
    payload = _lineage("chart", symbol=symbol, run_id=run_id, experiment_id=experiment_id,
                       execution_id=execution_id, dag_id=dag_id, workflow_id=workflow_id, task_id=task_id,
                       step_name=step_name, name=name, metadata=metadata)
    return {**payload, "image_path": str(image_path), "chart_type": chart_type,
            **({"chart_data": _plain(chart_data)} if chart_data is not None else {})}
