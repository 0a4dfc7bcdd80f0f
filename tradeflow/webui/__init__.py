"""The trading WebUI backend: ``client`` (HTTP, idempotent upserts, one-line ``WebUIError``) and
``payloads`` (the artifact payloads and their contract). Import from here."""

from tradeflow.trading_signal import check_trading_signal
from tradeflow.webui.client import PAGE_SIZE, SESSION_KEYS, WebUIClient
from tradeflow.webui.errors import WebUIError, WebUINotFoundError
from tradeflow.webui.payloads import (
    ACTIONS,
    ARTIFACT_KEYS,
    ARTIFACT_TYPES,
    COMMON_KEYS,
    DAG_ID,
    IDENTITY_KEYS,
    STEP_CHART,
    STEP_LLM,
    STEP_SIGNAL,
    chart_artifact,
    clean_artifact_payload,
    llm_artifact,
    signal_artifact,
)

__all__ = [
    "ACTIONS",
    "ARTIFACT_KEYS",
    "ARTIFACT_TYPES",
    "COMMON_KEYS",
    "DAG_ID",
    "IDENTITY_KEYS",
    "PAGE_SIZE",
    "SESSION_KEYS",
    "STEP_CHART",
    "STEP_LLM",
    "STEP_SIGNAL",
    "WebUIClient",
    "WebUIError",
    "WebUINotFoundError",
    "chart_artifact",
    "check_trading_signal",
    "clean_artifact_payload",
    "llm_artifact",
    "signal_artifact",
]
