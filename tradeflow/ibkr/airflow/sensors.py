"""Sensors of the IBKR workflows: the exchange is open, the gateway is logged in, today's bars exist.

Market hours come from ``exchange_calendars`` (maintained calendars with holidays, early closes
and historical sessions), not from hand-written hours. All three template ``as_of``/``symbol``
and default to ``mode="reschedule"`` so a waiting sensor does not hold a worker slot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tradeflow.airflow_compat import BaseSensorOperator

from tradeflow.ibkr.airflow.operators import DEFAULT_AS_OF

log = logging.getLogger(__name__)


class MarketOpenSensor(BaseSensorOperator):
    """True while ``exchange`` is in a regular session at ``as_of`` (empty: now)."""

    template_fields = ("exchange", "as_of")

    def __init__(self, *, exchange: str = "XNYS", as_of: str = DEFAULT_AS_OF, enabled: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.exchange = exchange
        self.as_of = as_of
        self.enabled = enabled

    def poke(self, context: Any) -> bool:
        from tradeflow.ibkr.workflow import market_is_open, parse_as_of

        if not self.enabled:
            log.info("market-hours check disabled by the strategy (airflow.require_market_open: false)")
            return True
        at = parse_as_of(self.as_of)
        is_open = market_is_open(self.exchange, at)
        log.info("%s at %s: %s", self.exchange, at.isoformat(), "open" if is_open else "closed")
        return is_open


class IBKRAuthSensor(BaseSensorOperator):
    """True once the gateway answers and its brokerage session is authenticated (tickles it).

    Reads the one session classification (``tradeflow.ibkr.errors.session_state``): ``down`` (refused,
    503), ``unauthenticated`` (re-authenticated once per poke when ``broker.reauthenticate``) and
    ``rate_limited`` wait; ``competing`` fails at once (a person must close the other session). Each
    poke's state goes to the MLflow run (tag ``tradeflow.ibkr.session``) and a failure (competing,
    timeout, a live account refused) is recorded on the run as this task's, with the reason."""

    template_fields = ("strategy_file",)

    def __init__(self, *, strategy_file: str, ibkr_conn_id: str = "ibkr_default",
                 tracking_task_id: str | None = "start_tracking", **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.strategy_file = strategy_file
        self.ibkr_conn_id = ibkr_conn_id
        self.tracking_task_id = tracking_task_id

    def _run_id(self, context: Any) -> str | None:
        ti = context.get("ti") if isinstance(context, Mapping) else None  # 2.x: a Context, not a dict
        ref = ti.xcom_pull(task_ids=self.tracking_task_id) if ti is not None and self.tracking_task_id else None
        return ref.get("run_id") if isinstance(ref, dict) else None

    def execute(self, context: Any) -> Any:
        from tradeflow.airflow_compat import AirflowRescheduleException

        try:
            return super().execute(context)
        except AirflowRescheduleException:
            raise
        except Exception as exc:
            run_id = self._run_id(context)
            if run_id:
                from mlflow.tracking import MlflowClient

                from tradeflow.ibkr import mlflow_run
                from tradeflow.runs.records import Tag

                last = MlflowClient().get_run(run_id).data.tags.get(Tag.IBKR_SESSION)
                reason = f"{exc}" + (f" (gateway session: {last})" if last and last not in str(exc) else "")
                mlflow_run.mark_task(run_id, self.task_id, RuntimeError(reason))
            raise

    def poke(self, context: Any) -> bool:
        from tradeflow.ibkr.airflow.hooks import IBKRHook
        from tradeflow.ibkr.errors import TRANSIENT_STATES, BrokerError, session_state
        from tradeflow.ibkr.strategy import load_strategy

        strategy = load_strategy(self.strategy_file)
        try:
            with IBKRHook(self.ibkr_conn_id, allow_live=strategy.broker.allow_live, timeout_s=strategy.broker.timeout_s).get_conn() as client:
                client.ensure_authenticated(reauthenticate=strategy.broker.reauthenticate)
                account = client.trading_account()  # refuses a live account here, before any data work
        except BrokerError as exc:
            state = session_state(exc)
            self._record(context, f"{state}: {exc}")
            if state in TRANSIENT_STATES:
                log.warning("IBKR gateway not ready (%s): %s", state, exc)
                return False
            raise
        self._record(context, "ready")
        log.info("IBKR gateway authenticated; trading account %s", account)
        return True

    def _record(self, context: Any, state: str) -> None:
        run_id = self._run_id(context)
        if run_id:
            from tradeflow.ibkr import mlflow_run
            from tradeflow.runs.records import Tag

            mlflow_run.set_tags(run_id, {Tag.IBKR_SESSION: state})


class DataAvailabilitySensor(BaseSensorOperator):
    """True once the gateway has ``symbol``'s bar of the last session closed before ``as_of``."""

    template_fields = ("strategy_file", "symbol", "as_of")

    def __init__(self, *, strategy_file: str, symbol: str, as_of: str = DEFAULT_AS_OF,
                 ibkr_conn_id: str = "ibkr_default", **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.strategy_file = strategy_file
        self.symbol = symbol
        self.as_of = as_of
        self.ibkr_conn_id = ibkr_conn_id

    def poke(self, context: Any) -> bool:
        from tradeflow.ibkr.airflow.hooks import IBKRHook
        from tradeflow.ibkr.strategy import load_strategy
        from tradeflow.ibkr.workflow import MarketDataError, data_is_available, parse_as_of

        strategy = load_strategy(self.strategy_file)
        with IBKRHook(self.ibkr_conn_id, allow_live=strategy.broker.allow_live, timeout_s=strategy.broker.timeout_s).get_conn() as client:
            try:
                ok, detail = data_is_available(strategy, self.symbol, client, as_of=parse_as_of(self.as_of))
            except MarketDataError as exc:
                ok, detail = False, str(exc)
        log.info("data availability: %s (%s)", detail, "ready" if ok else "waiting")
        return ok
