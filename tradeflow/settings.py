"""The environment: every ``TRADEFLOW_*`` name, read and validated in one place.

Two kinds share the prefix:

- **run parameters**: ``TRADEFLOW_<KEY>`` for any flat config key (``TRADEFLOW_EPOCHS=3``) and
  ``TRADEFLOW_CONFIG`` (a JSON layer): the environment layer of ``RunConfig`` (``env_layer``);
- **operational settings**: how the DAG, the stages and the executors run (``Settings``, one typed
  model; the variable of field ``x`` is ``TRADEFLOW_X``).

``current()`` validates both kinds once per distinct environment: an unknown ``TRADEFLOW_*`` name
(a mistyped ``TRADEFLOW_EPOCH=5`` would otherwise be ignored) or a bad value is one ``ConfigError``
line naming the variable, with a did-you-mean and the known names. An empty value means unset.
Standard library and pydantic only: the DAG files import this at parse time.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tradeflow.config import FLAT_KEYS, MAX_SYMBOLS, TOP_LEVEL_KEYS, RunConfig, normalise_layer, resolve_config
from tradeflow.errors import ConfigError

ENV_PREFIX: Final = "TRADEFLOW_"

#: the one reading of a yes/no value (flags, ``dag_run.conf``, the environment)
TRUE_WORDS: Final = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS: Final = frozenset({"false", "0", "no", "off"})


def parse_bool(value: Any, name: str, *, blank: bool | None = False) -> bool:
    """``value`` as a bool: bools as they are, true/1/yes/on, false/0/no/off (any case). ``""`` and
    ``none`` mean unset and give ``blank`` (``None``: unset is an error too). Else one ``ConfigError``
    line naming ``name``."""
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    if text in ("", "none") and blank is not None:
        return blank
    raise ConfigError(f"invalid parameter '{name}': {value!r} is not true/false")


class Settings(BaseModel):
    """Operational settings (not run parameters): field ``x`` is read from ``TRADEFLOW_X``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    # the pipeline DAGs, read when a DAG file is parsed (tradeflow.orchestration.dag_settings.DagSettings)
    dag_schedule: str | None = Field(None, description="cron or preset; unset/none = triggered only")
    parallel_symbols: int = Field(2, ge=1, le=MAX_SYMBOLS, description="symbols running at once per DAG run")
    pool: str | None = Field(None, description="Airflow pool of the symbol tasks")
    task_retries: int = Field(2, ge=0, le=10, description="retries of every task")
    retry_delay_s: float = Field(60.0, ge=0, le=3600, description="first retry delay, doubled each try")
    max_retry_delay_s: float = Field(1800.0, ge=0, le=86400, description="cap of the retry delay")
    symbol_timeout_min: float = Field(180.0, ge=1, le=24 * 60, description="execution_timeout of one symbol")
    dag_max_active_runs: int = Field(1, ge=1, le=16, description="DAG runs at once")
    dag_max_symbols: int = Field(MAX_SYMBOLS, ge=1, le=MAX_SYMBOLS, description="default of the max_symbols param")
    # where a symbol's pipeline runs (run time)
    executor: Literal["local", "databricks"] = Field("local", description="local | databricks")
    git_url: str | None = Field(None, description="the repository Databricks checks out (default: origin)")
    git_commit: str | None = Field(None, description="the commit Databricks runs (default: HEAD)")
    git_provider: str | None = Field(None, description="gitHub, gitLab, ... (default: from the URL)")
    databricks_spec: str = Field("deploy/databricks/pipeline_run_submit.json",
                                 description="the runs/submit template; a relative path is under the repository root")
    databricks_cluster_id: str | None = Field(None, description="an existing cluster instead of a job cluster")
    databricks_conn_id: str = Field("databricks_default", description="Airflow connection of the workspace")
    databricks_poll_s: float = Field(30.0, ge=0.01, le=600, description="seconds between run-state polls")
    # stages, the CLI, reproduce, the stage-cache lease, data and HTTP
    env_manager: Literal["local", "virtualenv", "uv", "conda"] = Field("local", description="how stage runs get their environment")
    log_level: Literal["CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG", "NOTSET"] = Field(
        "INFO", description="entry points' log level")
    reproduction_of: str | None = Field(None, description="set by reproduce for its re-run (registry aliases stay)")
    fork_server: bool = Field(True, description="a pipeline's stages fork from a warm process that imported mlflow, "
                              "torch and the steps (false: each stage starts a fresh interpreter)")
    fork_server_idle_s: float = Field(120.0, ge=0, le=86400, description="seconds the machine's shared warm process "
                                      "of a checkout waits for the next pipeline or Airflow task before it exits "
                                      "(0: a server per pipeline, stopped with it)")
    lease_timeout_s: float = Field(3 * 3600.0, gt=0, description="how long a pipeline waits for another running the same stage")
    csv_roots: str | None = Field(None, description="dirs (os.pathsep-separated) a WebUI link's csv: data_source may read")
    http_deadline_s: float = Field(30.0, gt=0, le=3600, description="total seconds per HTTP request (WebUI, IBKR)")
    link_safety_overrides: bool = Field(False, description="operator flag: let a WebUI link config set safety "
                                        "settings (do_no_harm_gate); off, a link that tries is refused")
    # what the WebUI shows (issue 24)
    mlflow_ui_url: str | None = Field(None, description="the MLflow UI address the WebUI's links open (default: "
                                      "the tracking URI when it is a server); runs:/ URIs are sent beside them")
    webui_chart_dir: str | None = Field(None, description="a directory the WebUI service reads: persist copies each "
                                        "chart PNG there and sends that plain path as image_path")
    webui_chart_bucket: str | None = Field(None, description="the WebUI stack's MinIO/S3 bucket: with "
                                           "MLFLOW_S3_ENDPOINT_URL set, persist uploads each chart there and sends "
                                           "chart_data.minio_url (wins over webui_chart_dir)")
    webui_trigger_user: str | None = Field(None, description="the Airflow user the WebUI backend's auto-trigger "
                                           "sends (basic auth) to the /api/v1 trigger plugin on Airflow 3")
    webui_trigger_password: str | None = Field(None, description="its password (never logged); unset, the "
                                               "plugin refuses every trigger, saying why", repr=False)

    @field_validator("dag_schedule")
    @classmethod
    def _no_schedule(cls, value: str | None) -> str | None:
        return None if value is None or value.lower() in ("none", "null") else value

    @field_validator("executor", "env_manager", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def csv_root_paths(self, project_root: Path) -> list[Path]:
        """Resolved ``csv_roots``; default ``<project>/data`` and ``../shared/data``."""
        raw = self.csv_roots or ""
        roots = [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()] if raw else [
            project_root / "data", project_root.parent / "shared" / "data"]
        return [root.resolve() for root in roots]


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


#: read by the tests and their servers (tests/support, scripts/test.sh), never by the library
TEST_ENV: Final = frozenset({
    "TRADEFLOW_PG_BIN", "TRADEFLOW_PG_OS_USER", "TRADEFLOW_KEEP_SERVER_DIRS", "TRADEFLOW_UPDATE_GOLDEN",
    "TRADEFLOW_LOAD_SYMBOLS", "TRADEFLOW_LOAD_WARM", "TRADEFLOW_LOAD_RESTART", "TRADEFLOW_LOAD_DAG_RUNS",
    "TRADEFLOW_TEST_OUTPUT",
})
#: accepted for older deployments, read by nothing
RETIRED_ENV: Final = frozenset({"TRADEFLOW_HOME"})
#: every ``TRADEFLOW_*`` name that is not a run parameter
OPERATIONAL_ENV: Final = frozenset({env_name(field) for field in Settings.model_fields}) | TEST_ENV | RETIRED_ENV
#: flat keys a ``TRADEFLOW_<KEY>`` run parameter may name
RUN_KEYS: Final = frozenset(TOP_LEVEL_KEYS | set(FLAT_KEYS) | {"config"})


def known_env_names() -> list[str]:
    """Every ``TRADEFLOW_*`` name the project reads: run parameters and operational settings."""
    return sorted({ENV_PREFIX + key.upper() for key in RUN_KEYS} | OPERATIONAL_ENV)


def check_env_names(environ: Mapping[str, str] | None = None) -> None:
    """Refuse an unknown ``TRADEFLOW_*`` name: ``ConfigError`` naming it, the closest known name
    and the list of known ones."""
    environ = os.environ if environ is None else environ
    known = known_env_names()
    unknown = sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)
    if not unknown:
        return
    suffixes = {known_name.removeprefix(ENV_PREFIX): known_name for known_name in known}
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), list(suffixes), n=1, cutoff=0.75)
        hints.append(f"{name}" + (f" (did you mean {suffixes[close[0]]}?)" if close else ""))
    raise ConfigError(f"unknown environment variable{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                      f"known TRADEFLOW_* names: {', '.join(known)}")


def current(environ: Mapping[str, str] | None = None) -> Settings:
    """The validated settings of ``environ`` (default ``os.environ``); parsed once per distinct
    set of ``TRADEFLOW_*`` values. Raises ``ConfigError`` (one line naming the variable)."""
    env = os.environ if environ is None else environ
    return _parse(tuple(sorted((k, v) for k, v in env.items() if k.startswith(ENV_PREFIX))))


@functools.lru_cache(maxsize=64)
def _parse(items: tuple[tuple[str, str], ...]) -> Settings:
    env = dict(items)
    check_env_names(env)
    raw = {field: env[env_name(field)].strip() for field in Settings.model_fields
           if (env.get(env_name(field)) or "").strip()}
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{env_name(field)}={raw.get(field)!r}: {message}") from None


def env_layer(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The environment layer of ``RunConfig``: ``TRADEFLOW_<KEY>`` for flat keys plus
    ``TRADEFLOW_CONFIG`` (JSON). Validates the whole environment first (``current``)."""
    environ = os.environ if environ is None else environ
    current(environ)
    flat = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and (key := name[len(ENV_PREFIX):].lower()) in RUN_KEYS:
            flat[key] = value
    return normalise_layer(flat, origin="environment")


def resolve_with_env(*layers: Mapping[str, Any] | None) -> RunConfig:
    """``resolve_config`` with the environment layer right above the defaults (what an entry
    point or a task resolves; the config model itself never reads the environment)."""
    return resolve_config(env_layer(), *layers)


def log_level(environ: Mapping[str, str] | None = None) -> str:
    """``TRADEFLOW_LOG_LEVEL``, or INFO when the environment does not validate (the entry point
    reports that itself, as one line, when it resolves its config)."""
    try:
        return current(environ).log_level
    except ConfigError:
        logging.getLogger(__name__).debug("environment does not validate; logging at INFO")
        return "INFO"
