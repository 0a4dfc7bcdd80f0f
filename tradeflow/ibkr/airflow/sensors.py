"""Sensors of the IBKR workflows: the exchange is open, the gateway is logged in, today's bars exist.

Market hours come from ``exchange_calendars`` (maintained calendars with holidays, early closes
and historical sessions), not from hand-written hours. All three template ``as_of``/``symbol``
and default to ``mode="reschedule"`` so a waiting sensor does not hold a worker slot.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseSensorOperator

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
    """True once the gateway answers and its brokerage session is authenticated (tickles it)."""

    template_fields = ("strategy_file",)

    def __init__(self, *, strategy_file: str, ibkr_conn_id: str = "ibkr_default", **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.strategy_file = strategy_file
        self.ibkr_conn_id = ibkr_conn_id

    def poke(self, context: Any) -> bool:
        from tradeflow.ibkr.airflow.hooks import IBKRHook
        from tradeflow.ibkr.errors import GatewayDown, NotAuthenticated
        from tradeflow.ibkr.strategy import load_strategy

        strategy = load_strategy(self.strategy_file)
        try:
            with IBKRHook(self.ibkr_conn_id, allow_live=strategy.broker.allow_live, timeout_s=strategy.broker.timeout_s).get_conn() as client:
                client.ensure_authenticated()
                account = client.trading_account()  # refuses a live account here, before any data work
        except (GatewayDown, NotAuthenticated) as exc:
            log.warning("IBKR gateway not ready: %s", exc)
            return False
        log.info("IBKR gateway authenticated; trading account %s", account)
        return True


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
