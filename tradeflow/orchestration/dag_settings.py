"""The pipeline DAGs' names and structure: DAG and task ids, the per-DAG config layer, and
``DagSettings`` (retries, timeouts, parallelism, trigger params) read when a DAG file is parsed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tradeflow import settings as env_settings
from tradeflow.config import ENGINES, MAX_SYMBOLS
from tradeflow.names import DAG_ID, FINAGENT_DAG_ID, MODES, SYMBOL_PATTERN

__all__ = ["DAG_ID", "FINAGENT_DAG_ID", "PIPELINE_LAYERS", "RUN_SYMBOL_TASK", "RESOLVE_TASK", "DagSettings"]

#: per-DAG config layer (above the TRADEFLOW_* env, below the WebUI link config and dag_run.conf);
#: its keys are also required of the final config: a DAG runs its own engine, whatever conf says
PIPELINE_LAYERS: dict[str, dict[str, Any]] = {FINAGENT_DAG_ID: {"engine": "finagent"}}
RUN_SYMBOL_TASK = "run_symbol"
RESOLVE_TASK = "resolve_targets"


@dataclass(frozen=True)
class DagSettings:
    """The DAG-structure view of the operational settings (``tradeflow.settings.Settings``)."""

    schedule: str | None = None
    parallel_symbols: int = 2
    pool: str | None = None
    retries: int = 2
    retry_delay_s: float = 60.0
    max_retry_delay_s: float = 1800.0
    symbol_timeout_min: float = 180.0
    max_active_runs: int = 1
    default_max_symbols: int = MAX_SYMBOLS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DagSettings:
        """From ``TRADEFLOW_*``; a bad or unknown name is one ``ConfigError`` line (an import error
        of the DAG file, named in ``airflow dags list-import-errors``)."""
        s = env_settings.current(environ)
        return cls(schedule=s.dag_schedule, parallel_symbols=s.parallel_symbols, pool=s.pool, retries=s.task_retries,
                   retry_delay_s=s.retry_delay_s, max_retry_delay_s=s.max_retry_delay_s,
                   symbol_timeout_min=s.symbol_timeout_min, max_active_runs=s.dag_max_active_runs,
                   default_max_symbols=s.dag_max_symbols)

    def default_args(self) -> dict[str, Any]:
        """Every task: retries with exponential backoff (delay x2 per try, capped), a timeout."""
        from tradeflow.airflow_compat import RETRY_BACKOFF_DOUBLING

        return {
            "owner": "tradeflow",
            "retries": self.retries,
            "retry_delay": timedelta(seconds=self.retry_delay_s),
            "retry_exponential_backoff": RETRY_BACKOFF_DOUBLING,
            "max_retry_delay": timedelta(seconds=self.max_retry_delay_s),
            "execution_timeout": timedelta(minutes=10),
        }

    def symbol_task_args(self) -> dict[str, Any]:
        """The mapped per-symbol task: at most ``parallel_symbols`` at once per DAG run."""
        args: dict[str, Any] = {
            "max_active_tis_per_dagrun": self.parallel_symbols,
            "execution_timeout": timedelta(minutes=self.symbol_timeout_min),
            "map_index_template": "{{ tradeflow_symbol }}",
        }
        if self.pool:
            args["pool"] = self.pool
        return args

    def params(self) -> dict[str, Any]:
        """Trigger params, validated by Airflow (JSON schema) before the run is created."""
        from tradeflow.airflow_compat import Param

        return {
            "mode": Param("both", type="string", enum=list(MODES), title="Mode",
                          description="both = train+backtest, then inference, review, persist; "
                                      "train_backtest; inference (needs a registered model)"),
            "symbol": Param(None, type=["null", "string"], pattern=SYMBOL_PATTERN, title="Symbol",
                            description="run only this symbol; empty = the WebUI's assigned symbols"),
            "engine": Param(None, type=["null", "string"], enum=[None, *ENGINES], title="Engine",
                            description="builtin, trademaster or finagent (upstream); empty = the config's"),
            "max_symbols": Param(self.default_max_symbols, type="integer", minimum=1, maximum=MAX_SYMBOLS,
                                 title="Max symbols", description=f"batch cap (hard cap {MAX_SYMBOLS})"),
            "config": Param({}, type="object", title="Config overrides",
                            description='per-run config layer, e.g. {"trademaster": {"epochs": 5}}'),
            "force": Param(False, type="boolean", title="Force",
                           description="re-run every stage even if a cached run exists"),
            "conid": Param(None, type=["null", "integer", "string"], title="IBKR conid",
                           description="sent by the WebUI auto-trigger"),
            "workflow_symbol_id": Param(None, type=["null", "integer"], title="WebUI workflow symbol id",
                                        description="sent by the WebUI auto-trigger"),
        }
