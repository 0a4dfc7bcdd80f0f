"""What a task knows of its Airflow run (``RunContext``), the ``dag_run.conf`` layer, and how a task
ends early: failed without retries (``fail_now``) or skipped (``skip``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tradeflow.config import normalise_layer
from tradeflow.errors import ServiceError


class OrchestrationError(ServiceError):
    """A problem the operator must fix (no retry helps); ``str(err)`` is one line."""


@dataclass(frozen=True)
class RunContext:
    """What the tasks need from Airflow's context; built directly in unit tests."""

    dag_id: str
    run_id: str
    conf: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    task_id: str = ""
    map_index: int = -1
    try_number: int = 1

    @classmethod
    def from_airflow(cls, context: Mapping[str, Any]) -> RunContext:
        ti = context["ti"]
        dag_run = context["dag_run"]
        return cls(
            dag_id=dag_run.dag_id,
            run_id=context["run_id"],
            conf=dict(dag_run.conf or {}),
            params=dict(context.get("params") or {}),
            task_id=ti.task_id,
            map_index=-1 if getattr(ti, "map_index", None) is None else ti.map_index,
            try_number=getattr(ti, "try_number", 1) or 1,
        )

    def get(self, key: str, default: Any = None) -> Any:
        """``dag_run.conf`` first (what the caller sent), then the validated params."""
        if key in self.conf and self.conf[key] is not None:
            return self.conf[key]
        return self.params.get(key, default)

    def get_int(self, key: str, default: int) -> int:
        """An integer of ``conf``/params (not a bool); anything else fails the task at once."""
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            fail_now(f"conf.{key} must be an integer, got {value!r}")
        return value


def fail_now(message: str) -> NoReturn:
    """Fail the task without retries (a retry cannot fix it)."""
    try:  # Airflow 3's or 2's (tradeflow.airflow_compat): the class its task runner fails at once on
        from tradeflow.airflow_compat import AirflowFailException
    except ImportError:  # pragma: no cover - outside Airflow
        raise OrchestrationError(message) from None
    raise AirflowFailException(message)


def skip(message: str) -> NoReturn:
    """Skip the task (and, by the default trigger rule, what depends on it)."""
    from tradeflow.airflow_compat import AirflowSkipException

    raise AirflowSkipException(message)


#: What a trigger may send in ``dag_run.conf`` (the DAG's params); anything else is refused, not ignored.
CONF_KEYS = ("mode", "engine", "symbol", "max_symbols", "config", "force", "conid", "workflow_symbol_id")
#: Per-symbol identity: the batch decides it (``conf.symbol`` or the WebUI), never a config layer.
IDENTITY_KEYS = ("symbol",)


def check_conf(conf: Mapping[str, Any]) -> None:
    """Refuse unknown ``dag_run.conf`` keys (naming the known ones) and a ``config`` that sets a
    symbol's identity: ``{"config": {"symbol": "MSFT"}}`` would run MSFT in every mapped task."""
    unknown = sorted(str(k) for k in conf if k not in CONF_KEYS)
    if unknown:
        fail_now(f"dag_run.conf has unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; "
                 f"known: {', '.join(CONF_KEYS)}")
    config = conf.get("config")
    if isinstance(config, Mapping):
        for key in IDENTITY_KEYS:
            if key in config:
                fail_now(f"dag_run.conf.config.{key} is refused: a batch decides each task's {key} "
                         f"(use conf.{key} to run one)")


def conf_layer(ctx: RunContext) -> dict[str, Any]:
    """The ``dag_run.conf`` config layer: its ``config`` object, then ``mode`` and ``engine`` on top.

    Only what the trigger actually sent counts (``dag_run.conf``), not the param defaults, so a
    WebUI link config's ``mode`` is not overridden by the form's default. The conf is checked
    first (``check_conf``).
    """
    check_conf(ctx.conf)
    layer: dict[str, Any] = {}
    config = ctx.conf.get("config")
    if config:
        layer = normalise_layer(config, origin="dag_run.conf.config")
    for key in ("mode", "engine"):  # top-level trigger params, validated by resolve_config like -P
        if ctx.conf.get(key):
            layer[key] = ctx.conf[key]
    return layer
