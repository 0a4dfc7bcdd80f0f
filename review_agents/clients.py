"""Model clients from configuration: which backend, which model, which endpoint.

``ReviewConfig`` says *what* (provider, model name, temperature, timeout); the environment
says *where and with which key*, so secrets never enter configs, MLflow params or DAG conf.
Every missing variable is reported as one line naming it. ``describe_client`` is the only
view of a client that may be logged: provider, model and endpoint host, never a key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from autogen_core.models import ChatCompletionClient, ModelInfo

from tradeflow.config import ReviewConfig
from tradeflow.errors import ConfigError

from tradeflow.redaction import Redactor
from .rules import RULES_MODEL_NAME, RuleBasedChatCompletionClient

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_AZURE_API_VERSION = "2024-10-21"
DEFAULT_OLLAMA_HOST = "http://localhost:11434"
DEFAULT_MAX_RETRIES = 2
#: What an unknown OpenAI-compatible model is assumed to support unless LLM_MODEL_INFO says more.
#: JSON mode but no json-schema structured output: the guarded client then validates the JSON.
DEFAULT_COMPATIBLE_INFO: ModelInfo = ModelInfo(
    vision=False, function_calling=False, json_output=True, structured_output=False, family="unknown"
)
_MODEL_INFO_KEYS = {"vision", "function_calling", "json_output", "structured_output", "family", "multiple_system_messages"}


class ReviewConfigError(ConfigError):
    """The review backend is misconfigured (e.g. a missing environment variable). One line."""


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value.strip() if value and value.strip() else None


def _require(environ: Mapping[str, str], provider: str, name: str, what: str) -> str:
    value = _env(environ, name)
    if value is None:
        raise ReviewConfigError(f"review provider '{provider}' needs environment variable {name} ({what})")
    return value


def _model_info(environ: Mapping[str, str], base: ModelInfo | None) -> ModelInfo | None:
    """``LLM_MODEL_INFO`` (a JSON object of capability flags) on top of ``base``."""
    raw = _env(environ, "LLM_MODEL_INFO")
    if raw is None:
        return base
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ReviewConfigError(f"environment variable LLM_MODEL_INFO is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict) or not set(value) <= _MODEL_INFO_KEYS:
        raise ReviewConfigError(
            f"environment variable LLM_MODEL_INFO must be a JSON object with keys among {sorted(_MODEL_INFO_KEYS)}"
        )
    merged: dict[str, Any] = dict(base or DEFAULT_COMPATIBLE_INFO)
    merged.update(value)
    return ModelInfo(**merged)  # type: ignore[typeddict-item]


def _retries(environ: Mapping[str, str]) -> int:
    raw = _env(environ, "LLM_MAX_RETRIES")
    if raw is None:
        return DEFAULT_MAX_RETRIES
    if not raw.isdigit() or int(raw) > 10:
        raise ReviewConfigError("environment variable LLM_MAX_RETRIES must be an integer 0..10")
    return int(raw)


def model_name(config: ReviewConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The model (or Azure deployment) a provider would use; ``None`` when it is unset."""
    environ = os.environ if environ is None else environ
    if config.provider == "rules":
        return RULES_MODEL_NAME
    if config.model:
        return config.model
    return {
        "openai": _env(environ, "OPENAI_MODEL") or DEFAULT_OPENAI_MODEL,
        "azure": _env(environ, "AZURE_OPENAI_DEPLOYMENT"),
        "ollama": _env(environ, "OLLAMA_MODEL"),
        "openai_compatible": _env(environ, "LLM_MODEL"),
    }[config.provider]


def _endpoint(config: ReviewConfig, environ: Mapping[str, str]) -> str | None:
    return {
        "rules": None,
        "openai": _env(environ, "OPENAI_BASE_URL") or "https://api.openai.com/v1",
        "azure": _env(environ, "AZURE_OPENAI_ENDPOINT"),
        "ollama": _env(environ, "OLLAMA_HOST") or DEFAULT_OLLAMA_HOST,
        "openai_compatible": _env(environ, "LLM_BASE_URL"),
    }[config.provider]


def describe_client(config: ReviewConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Provider, model and endpoint host: safe for MLflow params/tags (never a key, path or query)."""
    environ = os.environ if environ is None else environ
    out = {"provider": config.provider, "model": model_name(config, environ) or "(unset)"}
    endpoint = _endpoint(config, environ)
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parsed.hostname:
            out["endpoint_host"] = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
    return out


def make_client(config: ReviewConfig, environ: Mapping[str, str] | None = None) -> ChatCompletionClient:
    """A fresh client for one review. Raises ``ReviewConfigError`` naming a missing variable."""
    environ = os.environ if environ is None else environ
    provider = config.provider
    if provider == "rules":
        return RuleBasedChatCompletionClient(atr_multiple_cap=config.atr_multiple_cap)
    common: dict[str, Any] = {
        "temperature": config.temperature,
        "timeout": config.timeout_s,
    }
    try:
        if provider == "openai":
            from autogen_ext.models.openai import OpenAIChatCompletionClient

            kwargs = dict(common, max_retries=_retries(environ))
            if base_url := _env(environ, "OPENAI_BASE_URL"):
                kwargs["base_url"] = base_url
            if info := _model_info(environ, None):
                kwargs["model_info"] = info
            return OpenAIChatCompletionClient(
                model=model_name(config, environ) or DEFAULT_OPENAI_MODEL,
                api_key=_require(environ, provider, "OPENAI_API_KEY", "the OpenAI API key"),
                **kwargs,
            )
        if provider == "azure":
            from autogen_ext.models.openai import AzureOpenAIChatCompletionClient

            endpoint = _require(environ, provider, "AZURE_OPENAI_ENDPOINT", "https://<resource>.openai.azure.com/")
            key = _require(environ, provider, "AZURE_OPENAI_API_KEY", "the Azure OpenAI key")
            deployment = config.model or _require(environ, provider, "AZURE_OPENAI_DEPLOYMENT", "the deployment name")
            kwargs = dict(common, max_retries=_retries(environ))
            if info := _model_info(environ, None):
                kwargs["model_info"] = info
            return AzureOpenAIChatCompletionClient(
                azure_endpoint=endpoint,
                azure_deployment=deployment,
                model=_env(environ, "AZURE_OPENAI_MODEL") or deployment,
                api_version=_env(environ, "AZURE_OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION,
                api_key=key,
                **kwargs,
            )
        if provider == "ollama":
            from autogen_ext.models.ollama import OllamaChatCompletionClient

            model = config.model or _require(environ, provider, "OLLAMA_MODEL", "e.g. llama3.1")
            kwargs = {"options": {"temperature": config.temperature}, "timeout": config.timeout_s}
            if info := _model_info(environ, None):
                kwargs["model_info"] = info
            return OllamaChatCompletionClient(model=model, host=_endpoint(config, environ), **kwargs)
        if provider == "openai_compatible":
            from autogen_ext.models.openai import OpenAIChatCompletionClient

            base_url = _require(environ, provider, "LLM_BASE_URL", "e.g. http://localhost:8000/v1")
            model = config.model or _require(environ, provider, "LLM_MODEL", "the served model name")
            return OpenAIChatCompletionClient(
                model=model,
                base_url=base_url,
                api_key=_env(environ, "LLM_API_KEY") or "not-needed",
                model_info=_model_info(environ, DEFAULT_COMPATIBLE_INFO),
                max_retries=_retries(environ),
                **common,
            )
    except ReviewConfigError:
        raise
    except ValueError as exc:  # autogen-ext refuses models it does not know without model_info
        raise ReviewConfigError(
            f"review provider '{provider}': {Redactor.from_env(environ)(str(exc).splitlines()[0])} "
            "(set LLM_MODEL_INFO, e.g. '{\"family\": \"unknown\", \"json_output\": true}')"
        ) from None
    raise ReviewConfigError(f"unknown review provider '{provider}'")  # pragma: no cover - Literal-typed
