"""The seven IBKR workflow operators. Each is a thin shell over one ``tradeflow.ibkr.workflow`` step:
it loads the strategy, talks to the gateway through ``IBKRHook``, logs task metrics and artifacts
into the DAG run's MLflow run and returns JSON through XCom.

Every operator templates ``strategy_file`` and ``as_of`` (and ``symbol`` where it has one), so
``"{{ params.as_of }}"`` and ``"{{ dag_run.conf.get('symbol') }}"`` render. Heavy imports (pandas,
mlflow, the review team) happen in ``execute``, never when the DAG file is parsed.

| operator                      | step                     | MLflow                                    |
|-------------------------------|--------------------------|-------------------------------------------|
| IBKRMarketDataOperator        | bars from the gateway    | market_data/<S>.json, <S>.bars            |
| TechnicalIndicatorsOperator   | SMA/RSI/ATR/volatility   | indicators/<S>.json, <S>.rsi_14 ...       |
| ChartOperator                 | price chart (PNG)        | charts/<S>.png                            |
| LLMSignalOperator             | AutoGen review decision  | signals/<S>.json, transcript, confidence  |
| RiskAssessmentOperator        | sizing + limits          | risk/<S>.json, <S>.risk_approved, tag     |
| OrderPlacementOperator        | allocate + bracket, once | orders/<S>.json, <S>.order_quantity       |
| PortfolioUpdateOperator       | positions, exposure      | portfolio/positions.json, equity, alerts  |
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from tradeflow.airflow_compat import BaseOperator

log = logging.getLogger(__name__)

TRACKING_TASK = "start_tracking"
DEFAULT_AS_OF = "{{ params.as_of or '' }}"


class IBKRBaseOperator(BaseOperator):
    """Strategy loading, the gateway session, MLflow bookkeeping and failure tagging."""

    template_fields: tuple[str, ...] = ("strategy_file", "as_of")
    ui_color = "#e8f0fe"
    metric_name = "task"

    def __init__(self, *, strategy_file: str, as_of: str = DEFAULT_AS_OF, tracking_task_id: str | None = TRACKING_TASK,
                 ibkr_conn_id: str = "ibkr_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.strategy_file = strategy_file
        self.as_of = as_of
        self.tracking_task_id = tracking_task_id
        self.ibkr_conn_id = ibkr_conn_id

    # subclasses implement
    def run(self, context: Any, strategy: Any, mlflow_run_id: str | None) -> Any:
        raise NotImplementedError

    def execute(self, context: Any) -> Any:
        from tradeflow.ibkr import mlflow_run
        from tradeflow.ibkr.strategy import load_strategy

        strategy = load_strategy(self.strategy_file)
        ref = context["ti"].xcom_pull(task_ids=self.tracking_task_id) if self.tracking_task_id else None
        run_id = ref["run_id"] if isinstance(ref, dict) else None
        started = time.perf_counter()
        try:
            result = self.run(context, strategy, run_id)
        except Exception as exc:
            if run_id:
                mlflow_run.mark_task(run_id, self.task_id, exc)
            raise
        if run_id:
            mlflow_run.mark_task(run_id, self.task_id, None)
            mlflow_run.log_metrics(run_id, {f"{self._prefix()}{self.metric_name}.seconds": time.perf_counter() - started})
        return result

    def _prefix(self) -> str:
        symbol = getattr(self, "symbol", None)
        return f"{symbol}." if symbol else ""

    def client(self, strategy: Any):
        from tradeflow.ibkr.airflow.hooks import IBKRHook

        return IBKRHook(self.ibkr_conn_id, allow_live=strategy.broker.allow_live,
                        timeout_s=strategy.broker.timeout_s).get_conn()

    def as_of_ts(self):
        from tradeflow.ibkr.workflow import parse_as_of

        return parse_as_of(self.as_of)

    @staticmethod
    def pull(context: Any, task_id: str) -> Any:
        value = context["ti"].xcom_pull(task_ids=task_id)
        if value is None:
            raise RuntimeError(f"no result from upstream task {task_id}")
        return value


class _SymbolOperator(IBKRBaseOperator):
    template_fields = ("strategy_file", "as_of", "symbol")

    def __init__(self, *, symbol: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.symbol = symbol


class IBKRMarketDataOperator(_SymbolOperator):
    """Daily bars of ``symbol`` from the Client Portal gateway (sessions before ``as_of`` only)."""

    metric_name = "market_data"

    def run(self, context, strategy, mlflow_run_id):
        from tradeflow.ibkr import mlflow_run, workflow

        with self.client(strategy) as client:
            payload = workflow.market_data(strategy, self.symbol, client, as_of=self.as_of_ts())
        log.info("%s: %d bars %s..%s (conid %s)", self.symbol, payload["count"], payload["first_date"],
                 payload["last_date"], payload["conid"])
        if mlflow_run_id:
            mlflow_run.log_json(mlflow_run_id, f"market_data/{self.symbol}.json", payload)
            mlflow_run.log_metrics(mlflow_run_id, {f"{self.symbol}.bars": payload["count"]})
        return payload


class TechnicalIndicatorsOperator(_SymbolOperator):
    """SMA 20/50, RSI 14, ATR 14, volatility, support/resistance at the last bar (tradeflow.evidence)."""

    template_fields = (*_SymbolOperator.template_fields, "market_data_task_id")
    metric_name = "indicators"

    def __init__(self, *, market_data_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.market_data_task_id = market_data_task_id

    def run(self, context, strategy, mlflow_run_id):
        from tradeflow.ibkr import mlflow_run, workflow

        values = workflow.indicators(self.pull(context, self.market_data_task_id))
        log.info("%s indicators: %s", self.symbol, values)
        if mlflow_run_id:
            mlflow_run.log_json(mlflow_run_id, f"indicators/{self.symbol}.json", values)
            mlflow_run.log_metrics(mlflow_run_id, {f"{self.symbol}.{k}": v for k, v in values.items()
                                                 if k in ("close", "rsi_14", "atr_14", "sma_20", "sma_50")})
        return values


class ChartOperator(_SymbolOperator):
    """A PNG of the close, its averages and support/resistance, logged to MLflow ``charts/``."""

    template_fields = (*_SymbolOperator.template_fields, "market_data_task_id", "indicators_task_id")
    metric_name = "chart"

    def __init__(self, *, market_data_task_id: str, indicators_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.market_data_task_id = market_data_task_id
        self.indicators_task_id = indicators_task_id

    def run(self, context, strategy, mlflow_run_id):
        from tradeflow.ibkr import mlflow_run, workflow

        path = workflow.chart(self.pull(context, self.market_data_task_id), self.pull(context, self.indicators_task_id),
                              mlflow_run.scratch_dir())
        uri = None
        if mlflow_run_id:
            mlflow_run.log_file(mlflow_run_id, path, "charts")
            uri = f"runs:/{mlflow_run_id}/charts/{path.name}"
        return {"symbol": self.symbol, "chart": uri or str(path)}


class LLMSignalOperator(_SymbolOperator):
    """BUY/SELL/HOLD from the project's AutoGen review team (``review_agents``) on the evidence bundle."""

    template_fields = (*_SymbolOperator.template_fields, "market_data_task_id")
    metric_name = "signal"

    def __init__(self, *, market_data_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.market_data_task_id = market_data_task_id

    def run(self, context, strategy, mlflow_run_id):
        import json

        from tradeflow.ibkr import mlflow_run, workflow

        sig = workflow.signal(strategy, self.pull(context, self.market_data_task_id))
        log.info("%s signal: %s confidence %.2f (model %s%s)", self.symbol, sig["action"], sig["confidence"],
                 sig["model_used"], f", fallback {sig['fallback_reason']}" if sig["fallback_reason"] else "")
        transcript = sig.pop("transcript")
        evidence = sig.pop("evidence")
        if mlflow_run_id:
            mlflow_run.log_json(mlflow_run_id, f"signals/{self.symbol}.json", sig)
            mlflow_run.log_json(mlflow_run_id, f"signals/{self.symbol}_evidence.json", evidence)
            mlflow_run.log_text(mlflow_run_id, f"signals/{self.symbol}_transcript.jsonl",
                              "\n".join(json.dumps(line) for line in transcript) + "\n")
            mlflow_run.log_metrics(mlflow_run_id, {f"{self.symbol}.signal_confidence": sig["confidence"],
                                                 f"{self.symbol}.signal_fallback": sig["fallback_reason"] is not None})
            mlflow_run.set_tags(mlflow_run_id, {f"signal.{self.symbol}": f"{sig['action']} {sig['confidence']:.2f}"})
        return sig


class RiskAssessmentOperator(_SymbolOperator):
    """Sizes the trade from equity and ATR and checks the limits; a refusal is logged (task log,
    MLflow tag ``risk.<S>``, WebUI signal reasoning) and is not an error."""

    template_fields = (*_SymbolOperator.template_fields, "signal_task_id", "indicators_task_id")
    metric_name = "risk"

    def __init__(self, *, signal_task_id: str, indicators_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.signal_task_id = signal_task_id
        self.indicators_task_id = indicators_task_id

    def run(self, context, strategy, mlflow_run_id):
        from tradeflow.ibkr import mlflow_run, workflow

        sig = self.pull(context, self.signal_task_id)
        with self.client(strategy) as client:
            decision = workflow.risk(strategy, sig, self.pull(context, self.indicators_task_id), client)
        if decision["approved"]:
            log.info("%s risk: APPROVED %s %d @ ~%.2f, stop %.2f (%s)", self.symbol, decision["side"],
                     decision["quantity"], decision["entry_price"], decision["stop_price"], decision["reason"])
        else:
            log.warning("%s risk: REFUSED: %s", self.symbol, decision["reason"])
        if mlflow_run_id:
            mlflow_run.log_json(mlflow_run_id, f"risk/{self.symbol}.json", decision)
            mlflow_run.log_metrics(mlflow_run_id, {f"{self.symbol}.risk_approved": decision["approved"],
                                                 f"{self.symbol}.risk_quantity": decision["quantity"],
                                                 f"{self.symbol}.risk_amount": decision["risk_amount"]})
            mlflow_run.set_tags(mlflow_run_id, {f"risk.{self.symbol}": ("approved: " if decision["approved"] else
                                                                      "refused: ") + decision["reason"]})
        publish_signal(strategy, context, self.task_id, mlflow_run_id, sig, decision, None)
        return decision


class OrderPlacementOperator(_SymbolOperator):
    """The serialised allocation (``workflow.allocate_and_place``): under the account's lock it sizes
    again against positions + working orders, cancels a closed position's stops first, refuses a net
    short, places the bracket once (cOID = strategy, session, symbol, intent: looked up first, so
    retries, concurrent and back-to-back runs never double it) and follows its status. A broker
    rejection or refused question is recorded and final (the task succeeds: no Airflow re-send).
    Paper only unless live is explicitly enabled; ``broker.dry_run`` records without sending."""

    template_fields = (*_SymbolOperator.template_fields, "risk_task_id", "market_data_task_id", "signal_task_id")
    metric_name = "order"

    def __init__(self, *, risk_task_id: str, market_data_task_id: str, signal_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.risk_task_id = risk_task_id
        self.market_data_task_id = market_data_task_id
        self.signal_task_id = signal_task_id

    def run(self, context, strategy, mlflow_run_id):
        from tradeflow.ibkr import workflow

        decision = self.pull(context, self.risk_task_id)
        conid = self.pull(context, self.market_data_task_id)["conid"]
        if decision["approved"]:
            sig = self.pull(context, self.signal_task_id)
            values = {"close": decision["entry_price"], "atr_14": decision["checks"].get("atr")}  # what risk sized on
            session = workflow.trading_session(strategy.exchange, self.as_of_ts())
            with self.client(strategy) as client:
                order = workflow.allocate_and_place(strategy, sig, values, conid, client, session=session)
        else:
            order = workflow.not_placed(decision)
        summary = {k: order.get(k) for k in ("status", "coid", "order_id", "already_placed", "dry_run",
                                             "filled_quantity", "final", "reason")}
        if order["status"] in ("Rejected", "Inactive"):
            log.error("%s order REJECTED (final, not re-sent): %s", self.symbol, summary)
        else:
            log.info("%s order: %s", self.symbol, summary)
        if mlflow_run_id:
            record_order(mlflow_run_id, self.symbol, order)
        publish_signal(strategy, context, self.task_id, mlflow_run_id, self.pull(context, self.signal_task_id),
                       decision, order)
        return order


class PortfolioUpdateOperator(IBKRBaseOperator):
    """Positions, equity and exposure after the orders; monitoring alerts in the log and MLflow."""

    metric_name = "portfolio"

    def __init__(self, *, fail_on_alert: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on_alert = fail_on_alert

    def run(self, context, strategy, mlflow_run_id):
        from tradeflow.ibkr import mlflow_run, workflow

        ti = context.get("ti") if isinstance(context, Mapping) else None  # 2.x: a Context, not a dict
        with self.client(strategy) as client:
            snapshot = workflow.portfolio(strategy, client)
            placed = [ti.xcom_pull(task_ids=f"{s}.order") for s in strategy.symbols] if ti is not None else []
            placed = [o for o in placed if isinstance(o, dict)]
            snapshot["orders"] = [workflow.follow_up(client, o) for o in placed]
        for before, order in zip(placed, snapshot["orders"]):
            if not order.get("final") and order.get("order_id"):
                log.warning("order %s %s is still %s (filled %s)", order.get("symbol"), order.get("coid"),
                            order.get("status"), order.get("filled_quantity"))
            changed = any(before.get(k) != order.get(k) for k in ("status", "filled_quantity", "avg_price"))
            if changed and order.get("symbol"):  # a fill (or cancel) after the order step stopped following
                symbol = order["symbol"]
                log.info("order %s %s is now %s (filled %s)", symbol, order.get("coid"), order.get("status"),
                         order.get("filled_quantity"))
                if mlflow_run_id:
                    record_order(mlflow_run_id, symbol, order)
                sig, decision = (ti.xcom_pull(task_ids=f"{symbol}.{t}") for t in ("signal", "risk"))
                if isinstance(sig, dict) and isinstance(decision, dict):
                    publish_signal(strategy, context, self.task_id, mlflow_run_id, sig, decision, order)
        log.info("portfolio %s: equity %.2f, gross exposure %.2f, %d positions", snapshot["account"], snapshot["equity"],
                 snapshot["gross_exposure"], len(snapshot["positions"]))
        for alert in snapshot["alerts"]:
            log.warning("portfolio alert: %s", alert)
        if mlflow_run_id:
            mlflow_run.log_json(mlflow_run_id, "portfolio/positions.json", snapshot)
            mlflow_run.log_metrics(mlflow_run_id, {"portfolio.equity": snapshot["equity"],
                                                 "portfolio.gross_exposure": snapshot["gross_exposure"],
                                                 "portfolio.positions": len(snapshot["positions"]),
                                                 "portfolio.working_orders": len(snapshot["working_orders"]),
                                                 "portfolio.alerts": len(snapshot["alerts"])})
        if self.fail_on_alert and snapshot["alerts"]:
            raise RuntimeError("portfolio alerts: " + "; ".join(snapshot["alerts"]))
        return snapshot


def record_order(mlflow_run_id: str, symbol: str, order: dict[str, Any]) -> None:
    """The order's MLflow record (artifact ``orders/<S>.json``, ``<S>.order_*`` metrics, tag
    ``order.<S>``), written by the order step and again by the portfolio step when the status moved."""
    from tradeflow.ibkr import mlflow_run

    mlflow_run.log_json(mlflow_run_id, f"orders/{symbol}.json", order)
    mlflow_run.log_metrics(mlflow_run_id, {
        f"{symbol}.order_placed": order["status"] not in ("not_placed", "Rejected"),
        f"{symbol}.order_quantity": order.get("filled_quantity") or 0.0,
        f"{symbol}.order_already_placed": bool(order.get("already_placed")),
        f"{symbol}.order_rejected": order["status"] in ("Rejected", "Inactive")})
    tag = f"{order['status']} {order.get('coid') or ''}".strip()
    if order["status"] in ("Rejected", "Inactive", "not_placed") and order.get("reason"):
        tag += f": {order['reason']}"
    mlflow_run.set_tags(mlflow_run_id, {f"order.{symbol}": tag})


def publish_signal(strategy: Any, context: Any, task_id: str, mlflow_run_id: str | None, sig: dict[str, Any],
                   decision: dict[str, Any], order: dict[str, Any] | None) -> None:
    """Upsert the WebUI ``signal`` artifact of this DAG run and symbol: the review's signal with the
    risk verdict (a refusal leads the reasoning, which the UI shows) and, once placed, the order."""
    from tradeflow.webui import WebUIClient, signal_artifact

    if not strategy.webui.publish or mlflow_run_id is None:
        return
    client = WebUIClient.from_env()
    if client is None:
        return
    data = dict(sig["signal_data"])
    verdict = "approved" if decision["approved"] else "refused"
    data["reasoning"] = (f"Order {verdict} by risk: {decision['reason']}. " + data["reasoning"])
    data["risk"] = {k: decision.get(k) for k in ("approved", "reason", "side", "quantity", "stop_price", "notional",
                                                 "risk_amount", "binding_limit", "account")}
    if order is not None:
        data["order"] = {k: order.get(k) for k in ("status", "coid", "order_id", "filled_quantity", "avg_price",
                                                   "already_placed", "dry_run", "final", "reason")}
        if order.get("status") in ("Rejected", "Inactive", "not_placed") and order.get("reason") and decision["approved"]:
            data["reasoning"] = f"Order {order['status']}: {order['reason']}. " + data["reasoning"]
    from tradeflow.ibkr.mlflow_run import experiment_of

    dag_run = context["dag_run"]
    experiment_id = experiment_of(mlflow_run_id)
    payload = signal_artifact(symbol=sig["symbol"], action=sig["action"], confidence=sig["confidence"], signal_data=data,
                              run_id=mlflow_run_id, experiment_id=experiment_id, execution_id=dag_run.run_id,
                              dag_id=dag_run.dag_id, task_id=task_id, step_name="ibkr_trade_decision",
                              name=f"IBKR Signal {sig['symbol']}",
                              metadata={"analysis_method": "ibkr_trading_workflow", "strategy": strategy.name})
    with client:
        client.upsert_artifact(payload)
