"""Builders of the three IBKR DAGs from a strategy file; the DAG files in ``dags/`` (and those the
template generator writes) are three lines calling these.

    ibkr_trading_strategy        start_tracking -> market_open -> ibkr_auth -> per symbol:
                                 data_available -> market_data -> indicators -> (chart, signal)
                                 -> risk -> order ; then portfolio_update -> finish_tracking
    ibkr_market_data_collection  start_tracking -> ibkr_auth -> per symbol: market_data -> indicators
                                 -> chart ; finish_tracking
    ibkr_portfolio_monitoring    start_tracking -> ibkr_auth -> portfolio_update -> finish_tracking

Parsing imports only Airflow, pydantic, yaml and exchange_calendars (for the config check).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from tradeflow.airflow_compat import DAG, DAG_DATES, RETRY_BACKOFF_DOUBLING, Param, TaskGroup, get_current_context, task

from tradeflow.ibkr.airflow.operators import (
    TRACKING_TASK,
    ChartOperator,
    IBKRMarketDataOperator,
    LLMSignalOperator,
    OrderPlacementOperator,
    PortfolioUpdateOperator,
    RiskAssessmentOperator,
    TechnicalIndicatorsOperator,
)
from tradeflow.ibkr.airflow.sensors import DataAvailabilitySensor, IBKRAuthSensor, MarketOpenSensor
from tradeflow.ibkr.strategy import StrategyConfig, load_strategy

TRADING_DAG_ID = "ibkr_trading_strategy"
MARKET_DATA_DAG_ID = "ibkr_market_data_collection"
MONITORING_DAG_ID = "ibkr_portfolio_monitoring"
KINDS = {"trading": TRADING_DAG_ID, "market_data": MARKET_DATA_DAG_ID, "monitoring": MONITORING_DAG_ID}

_DOC = """
# {title}

Strategy `{name}` from `{path}` (symbols {symbols}, calendar {exchange}); guide: `docs/ibkr_workflow.md`.
Paper orders only unless the strategy sets `broker.allow_live` AND the environment `IBKR_ALLOW_LIVE=true`.

`dag_run.conf`: `as_of` (ISO time the run acts at; default now). MLflow experiment
`{experiment}`, run `<dag_id> <run_id>`.
"""


def _default_args(strategy: StrategyConfig) -> dict[str, Any]:
    a = strategy.airflow
    return {"owner": "tradeflow", "retries": a.retries, "retry_delay": timedelta(seconds=a.retry_delay_s),
            "retry_exponential_backoff": RETRY_BACKOFF_DOUBLING, "execution_timeout": timedelta(seconds=a.execution_timeout_s)}


def _sensor_args(strategy: StrategyConfig) -> dict[str, Any]:
    a = strategy.airflow
    return {"poke_interval": a.sensor_poke_s, "timeout": a.sensor_timeout_s, "retries": 0}


def _tracking_tasks(strategy: StrategyConfig, path: str, kind: str):
    @task(task_id=TRACKING_TASK)
    def start_tracking() -> dict[str, str]:
        from tradeflow.ibkr import mlflow_run

        ctx = get_current_context()
        run = ctx["dag_run"]
        params = {"strategy": strategy.name, "strategy_file": path, "symbols": ",".join(strategy.symbols),
                  "exchange": strategy.exchange, "as_of": ctx["params"].get("as_of") or "now",
                  "dry_run": strategy.broker.dry_run, "allow_live": strategy.broker.allow_live,
                  "reviewer": strategy.signal.review.provider,
                  **{f"risk.{k}": v for k, v in strategy.risk.model_dump().items()},
                  **{f"orders.{k}": v for k, v in strategy.orders.model_dump().items()}}
        return mlflow_run.open_run(experiment=strategy.tracking.experiment, dag_id=run.dag_id, execution_id=run.run_id,
                                 strategy=strategy.name, kind=kind, params=params)

    @task(task_id="finish_tracking", trigger_rule="all_done", retries=1)
    def finish_tracking(ref: dict[str, str] | None) -> dict[str, Any]:
        from tradeflow.ibkr import mlflow_run

        if not ref:
            raise RuntimeError("start_tracking did not open an MLflow run")
        failed = mlflow_run.finish_run(ref["run_id"])
        if failed:
            raise RuntimeError(f"failed tasks: {', '.join(failed)} (MLflow run {ref['run_id']})")
        return {"run_id": ref["run_id"], "failed": failed}

    return start_tracking, finish_tracking


def _dag(dag_id: str, strategy: StrategyConfig, path: str, title: str, schedule: str | None) -> DAG:
    return DAG(
        dag_id=dag_id, schedule=schedule, catchup=False, max_active_runs=1,
        doc_md=_DOC.format(title=title, name=strategy.name, path=path, symbols=", ".join(strategy.symbols),
                           exchange=strategy.exchange, experiment=strategy.tracking.experiment),
        params={"as_of": Param(None, type=["null", "string"], description="ISO time the run acts at (default: now)")},
        default_args=_default_args(strategy), tags=["tradeflow", "ibkr", strategy.name], **DAG_DATES,
    )


def _data_steps(symbol: str, common: dict[str, Any]):
    """market_data -> indicators -> chart of one symbol (inside its TaskGroup)."""
    bars = IBKRMarketDataOperator(task_id="market_data", symbol=symbol, **common)
    values = TechnicalIndicatorsOperator(task_id="indicators", symbol=symbol, market_data_task_id=f"{symbol}.market_data",
                                         **common)
    chart = ChartOperator(task_id="chart", symbol=symbol, market_data_task_id=f"{symbol}.market_data",
                          indicators_task_id=f"{symbol}.indicators", **common)
    bars >> values >> chart
    return bars, values, chart


@dataclass
class _Frame:
    """What every IBKR DAG starts with: its strategy, the tracking run and the gateway login sensor."""

    dag: DAG
    strategy: StrategyConfig
    common: dict[str, Any]
    ref: Any
    auth: Any
    finish_tracking: Any


@contextmanager
def _frame(path: str | Path, dag_id: str, kind: str, title: str) -> Iterator[_Frame]:
    """The DAG of ``kind`` for the strategy at ``path``: start_tracking and ibkr_auth made (not wired)."""
    path = str(path)
    strategy = load_strategy(path)
    common = {"strategy_file": path}
    with _dag(dag_id, strategy, path, title, getattr(strategy.schedule, kind)) as dag:
        start_tracking, finish_tracking = _tracking_tasks(strategy, path, kind)
        ref = start_tracking()
        auth = IBKRAuthSensor(task_id="ibkr_auth", **common, **_sensor_args(strategy))
        yield _Frame(dag, strategy, common, ref, auth, finish_tracking)


def build_trading_dag(path: str | Path, dag_id: str = TRADING_DAG_ID) -> DAG:
    with _frame(path, dag_id, "trading", "IBKR trading strategy") as f:
        strategy, common = f.strategy, f.common
        market_open = MarketOpenSensor(task_id="market_open", exchange=strategy.exchange,
                                       enabled=strategy.airflow.require_market_open, **_sensor_args(strategy))
        f.ref >> market_open >> f.auth
        portfolio = PortfolioUpdateOperator(task_id="portfolio_update", trigger_rule="all_done", **common)
        for symbol in strategy.symbols:
            with TaskGroup(group_id=symbol):
                ids = {name: f"{symbol}.{name}" for name in ("market_data", "indicators", "signal", "risk")}
                ready = DataAvailabilitySensor(task_id="data_available", symbol=symbol, **common, **_sensor_args(strategy))
                bars, values, chart = _data_steps(symbol, common)
                sig = LLMSignalOperator(task_id="signal", symbol=symbol, market_data_task_id=ids["market_data"], **common)
                risk = RiskAssessmentOperator(task_id="risk", symbol=symbol, signal_task_id=ids["signal"],
                                              indicators_task_id=ids["indicators"], **common)
                order = OrderPlacementOperator(task_id="order", symbol=symbol, risk_task_id=ids["risk"],
                                               market_data_task_id=ids["market_data"], signal_task_id=ids["signal"],
                                               execution_timeout=timedelta(seconds=strategy.airflow.order_timeout_s),
                                               **common)
                f.auth >> ready >> bars
                values >> sig
                [values, sig] >> risk >> order
                [chart, order] >> portfolio
        portfolio >> f.finish_tracking(f.ref)
    return f.dag


def build_market_data_dag(path: str | Path, dag_id: str = MARKET_DATA_DAG_ID) -> DAG:
    with _frame(path, dag_id, "market_data", "IBKR market data collection") as f:
        f.ref >> f.auth
        done = f.finish_tracking(f.ref)
        for symbol in f.strategy.symbols:
            with TaskGroup(group_id=symbol):
                bars, _, chart = _data_steps(symbol, f.common)
                f.auth >> bars
                chart >> done
    return f.dag


def build_monitoring_dag(path: str | Path, dag_id: str = MONITORING_DAG_ID) -> DAG:
    with _frame(path, dag_id, "monitoring", "IBKR portfolio monitoring") as f:
        portfolio = PortfolioUpdateOperator(task_id="portfolio_update", **f.common)
        f.ref >> f.auth >> portfolio >> f.finish_tracking(f.ref)
    return f.dag


BUILDERS = {"trading": build_trading_dag, "market_data": build_market_data_dag, "monitoring": build_monitoring_dag}
