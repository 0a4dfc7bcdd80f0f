"""The steps of the IBKR workflows as plain functions: bars -> indicators -> chart -> signal ->
risk -> order -> portfolio. The Airflow operators are thin wrappers around these (and so are the
tests and the benchmark); every step returns JSON-ready data that travels through XCom.

Signals come from the existing AutoGen review team (``review_agents.review``) on the project's
evidence bundle (``tradeflow.evidence``): no second signal implementation lives here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from tradeflow.errors import ServiceError
from tradeflow.ibkr.client import ClientPortal
from tradeflow.ibkr.strategy import StrategyConfig
from tradeflow.ibkr.gateway_settings import GatewaySettings
from tradeflow.ibkr.errors import BrokerError, CancelNotConfirmed, OrderRejected
from tradeflow.ibkr.orders import FAILED_STATUSES, TERMINAL_STATUSES, OrderTicket, client_order_id, intent_of
from tradeflow.ibkr.risk import assess

log = logging.getLogger(__name__)

PERIODS_PER_YEAR = 252
BAR_SIZE = "1 day"
#: IBKR order statuses of an order that can still fill or be cancelled.
WORKING_STATUSES = frozenset({"PendingSubmit", "PreSubmitted", "Submitted"})


class MarketDataError(ServiceError):
    """The gateway's bars are missing, too few or too old; one line."""


def open_client(strategy: StrategyConfig, environ: Mapping[str, str] | None = None) -> ClientPortal:
    settings = GatewaySettings.from_env(environ, allow_live=strategy.broker.allow_live,
                                        timeout_s=strategy.broker.timeout_s)
    return ClientPortal(settings)


def parse_as_of(value: str | None) -> pd.Timestamp:
    """The moment the workflow acts at (UTC); empty means now. Tests and backfills pass one."""
    if value in (None, "", "None"):
        return pd.Timestamp(datetime.now(timezone.utc))
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def calendar(exchange: str):
    import exchange_calendars

    return exchange_calendars.get_calendar(exchange)


def market_is_open(exchange: str, at: pd.Timestamp) -> bool:
    cal = calendar(exchange)
    minute = at.floor("min")
    if not cal.first_minute <= minute <= cal.last_minute:
        raise MarketDataError(f"{at.isoformat()} is outside the {exchange} calendar's range")
    return bool(cal.is_open_on_minute(minute))


def trading_session(exchange: str, at: pd.Timestamp) -> str:
    """The session an order made at ``at`` is for (the open one, else the next): the idempotency
    key's "trading session" (``tradeflow.ibkr.orders.client_order_id``)."""
    cal = calendar(exchange)
    minute = at.floor("min")
    if not cal.first_minute <= minute <= cal.last_minute:
        raise MarketDataError(f"{at.isoformat()} is outside the {exchange} calendar's range")
    return cal.minute_to_session(minute, direction="next").date().isoformat()


def required_last_session(exchange: str, at: pd.Timestamp, staleness: int) -> pd.Timestamp:
    """The oldest session the last bar may be from: the last session closed before ``at``,
    minus ``staleness`` sessions."""
    cal = calendar(exchange)
    last_closed = cal.minute_to_past_session(at.floor("min"), count=1)
    return cal.session_offset(last_closed, -staleness) if staleness else last_closed


# -- steps ------------------------------------------------------------------------------------------

def market_data(strategy: StrategyConfig, symbol: str, client: ClientPortal, *, as_of: pd.Timestamp) -> dict[str, Any]:
    """Daily bars of ``symbol`` from the gateway, only sessions before ``as_of`` (no look-ahead)."""
    from tradeflow.data.ibkr_bars import parse_ibkr_bars

    conid = client.search(symbol)
    raw = client.history(conid, period=strategy.market_data.period, bar=strategy.market_data.bar)
    bars, has_volume = parse_ibkr_bars(raw, where=f"{symbol} IBKR history (conid {conid})")
    bars = bars[bars["date"] < as_of.tz_localize(None).normalize()].reset_index(drop=True)
    if len(bars) < strategy.market_data.min_bars:
        raise MarketDataError(f"{symbol}: {len(bars)} daily bars before {as_of.date()} from the gateway; the strategy "
                              f"needs market_data.min_bars={strategy.market_data.min_bars}")
    return {"symbol": symbol, "conid": conid, "as_of": as_of.isoformat(), "count": len(bars),
            "first_date": bars["date"].iloc[0].date().isoformat(), "last_date": bars["date"].iloc[-1].date().isoformat(),
            "has_volume": has_volume, "bars": _records(bars)}


def data_is_available(strategy: StrategyConfig, symbol: str, client: ClientPortal, *, as_of: pd.Timestamp) -> tuple[bool, str]:
    """Whether the gateway already has the bar of the last closed session (within the staleness)."""
    data = market_data(strategy, symbol, client, as_of=as_of)
    needed = required_last_session(strategy.exchange, as_of, strategy.market_data.max_staleness_sessions)
    last = pd.Timestamp(data["last_date"])
    ok = last >= needed
    return ok, f"{symbol}: last bar {last.date()}, needed {needed.date()} or later"


def bars_frame(payload: Mapping[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(payload["bars"])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def indicators(payload: Mapping[str, Any]) -> dict[str, Any]:
    from tradeflow.evidence import indicators as compute

    return {"symbol": payload["symbol"], "as_of": payload["last_date"],
            **compute(bars_frame(payload), PERIODS_PER_YEAR)}


def chart(payload: Mapping[str, Any], values: Mapping[str, Any], out_dir: Path) -> Path:
    """Close with its 20/50-day averages and the support/resistance of the last 20 bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = bars_frame(payload).tail(180)
    close = bars_frame(payload)["close"]
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(bars["date"], bars["close"], label="close", linewidth=1.2)
    for window in (20, 50):
        ax.plot(bars["date"], close.rolling(window).mean().tail(len(bars)), label=f"SMA {window}", linewidth=0.9)
    for name in ("support", "resistance"):
        if values.get(name) is not None:
            ax.axhline(values[name], linestyle="--", linewidth=0.8, alpha=0.6, label=name)
    ax.set_title(f"{payload['symbol']}: daily close to {payload['last_date']} (RSI {values.get('rsi_14')}, "
                 f"ATR {values.get('atr_14')})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{payload['symbol']}.png"
    figure.savefig(path, dpi=80)
    return path


def signal(strategy: StrategyConfig, payload: Mapping[str, Any], *, data_note: str = "ibkr") -> dict[str, Any]:
    """Ask the existing AutoGen review team; returns the decision, the WebUI signal_data and the
    transcript. A model failure comes back as HOLD with ``fallback_reason`` (never an exception)."""
    from review_agents import review, signal_payload, validate_signal_data
    from tradeflow.evidence import build_evidence

    evidence = build_evidence(symbol=payload["symbol"], bars=bars_frame(payload), bar_size=BAR_SIZE,
                              periods_per_year=PERIODS_PER_YEAR, model={}, training_run={},
                              data={"source": data_note, "conid": payload["conid"], "bars": payload["count"],
                                    "first_date": payload["first_date"], "last_date": payload["last_date"]})
    outcome = review(evidence, strategy.signal.review)
    signal_data = validate_signal_data(signal_payload(outcome, evidence))
    d = outcome.decision
    return {"symbol": payload["symbol"], "action": d.action, "confidence": float(d.confidence),
            "entry": d.entry, "stop_loss": d.stop_loss, "take_profit": d.take_profit,
            "fallback_reason": outcome.fallback_reason, "model_used": outcome.model_used,
            "signal_data": signal_data, "transcript": outcome.transcript, "evidence": evidence}


def account_snapshot(client: ClientPortal) -> dict[str, Any]:
    account = client.trading_account()
    summary = client.summary(account)
    positions = client.positions(account)
    held = {str(p.get("ticker") or p.get("contractDesc")): float(p.get("position") or 0.0) for p in positions}
    prices = {str(p.get("ticker") or p.get("contractDesc")): float(p.get("mktPrice") or 0.0) for p in positions}
    return {"account": account, "equity": summary["netliquidation"], "summary": summary,
            "positions": {k: v for k, v in held.items() if v}, "prices": prices, "rows": positions}


def risk(strategy: StrategyConfig, sig: Mapping[str, Any], values: Mapping[str, Any], client: ClientPortal) -> dict[str, Any]:
    snapshot = account_snapshot(client)
    entry = float(sig.get("entry") or values["close"])
    decision = assess(symbol=sig["symbol"], action=sig["action"], confidence=float(sig["confidence"]),
                      entry_price=entry, atr=values.get("atr_14"), equity=snapshot["equity"],
                      positions=snapshot["positions"], prices=snapshot["prices"], limits=strategy.risk,
                      position_mode=strategy.signal.review.position_mode)
    out = decision.as_dict()
    out["account"] = snapshot["account"]
    return out


def working_orders(live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in live if str(o.get("status")) in WORKING_STATUSES]


def _remaining(order: Mapping[str, Any]) -> float:
    total = float(order.get("totalSize") or 0.0)
    return max(total - float(order.get("filledQuantity") or 0.0), 0.0) if total else float(order.get("remainingQuantity") or 0.0)


def working_exposure(live: list[dict[str, Any]], prices: Mapping[str, float],
                     known: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """Notional of the unfilled part of each working entry order (no ``parentId``), per symbol:
    what the caps count besides positions. Priced by the entry price the book recorded for its cOID,
    else the order's price, else the position's mark; ``unpriced`` lists the orders with none."""
    out: dict[str, float] = {}
    unpriced = []
    for order in working_orders(live):
        if order.get("parentId"):
            continue  # a bracket child only ever reduces a position
        symbol = str(order.get("ticker"))
        price = known.get(str(order.get("order_ref"))) or order.get("price") or prices.get(symbol)
        try:
            price = float(price) if price is not None else None
        except (TypeError, ValueError):
            price = None
        if not price or not math.isfinite(price):
            unpriced.append(f"{symbol} {order.get('side')} {order.get('orderId')}")
            continue
        out[symbol] = out.get(symbol, 0.0) + _remaining(order) * price
    return out, unpriced


def working_exits(live: list[dict[str, Any]], symbol: str, side: str) -> list[dict[str, Any]]:
    """The working orders of ``symbol`` on ``side`` that can reduce (or flip) a position: bracket
    children whose entry filled, even in part (or whose entry is unknown), and standalone orders."""
    by_id = {str(o.get("orderId")): o for o in live}
    out = []
    for order in working_orders(live):
        if order.get("ticker") != symbol or order.get("side") != side:
            continue
        parent = by_id.get(str(order.get("parentId"))) if order.get("parentId") else None
        if parent is not None and parent.get("status") != "Filled" and not float(parent.get("filledQuantity") or 0):
            continue  # inactive until its entry fills, and then the entry's shares cover it
        out.append(order)
    return out


def exit_quantity(orders: list[dict[str, Any]]) -> float:
    """What these exits can sell at most: an OCA group (children of one entry) counts once."""
    groups: dict[str, float] = {}
    for order in orders:
        key = f"parent:{order['parentId']}" if order.get("parentId") else f"order:{order.get('orderId')}"
        groups[key] = max(groups.get(key, 0.0), _remaining(order))
    return sum(groups.values())


def _ticket(strategy: StrategyConfig, decision: Mapping[str, Any], sig: Mapping[str, Any], conid: int, *,
            coid: str, intent: str) -> OrderTicket:
    side = decision["side"]
    orders = strategy.orders
    limit = None
    if orders.order_type == "LMT":
        factor = 1 + orders.limit_offset_pct if side == "BUY" else 1 - orders.limit_offset_pct
        limit = round(decision["entry_price"] * factor, 2)
    opening = intent.startswith("open_")
    take_profit = None
    target = sig.get("take_profit")
    if opening and orders.take_profit and isinstance(target, (int, float)) and math.isfinite(target):
        entry = decision["entry_price"]
        if (side == "BUY" and target > entry) or (side == "SELL" and 0 < target < entry):
            take_profit = round(float(target), 2)
    return OrderTicket(symbol=decision["symbol"], conid=int(conid), side=side, quantity=int(decision["quantity"]),
                       coid=coid, order_type=orders.order_type, limit_price=limit,
                       stop_price=decision["stop_price"] if opening and orders.attach_stop else None,
                       take_profit=take_profit, tif=orders.tif, outside_rth=orders.outside_rth, intent=intent)


def allocate_and_place(strategy: StrategyConfig, sig: Mapping[str, Any], values: Mapping[str, Any], conid: int,
                       client: ClientPortal, *, session: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The serialised allocation: under the account's lock (``tradeflow.ibkr.ledger``) read positions
    and working orders, size against them (``risk.assess``), cancel a closed position's working
    exits and verify, refuse anything that could leave the account net short when shorts are not
    allowed, preview (what-if) a live order, place once (cOID = strategy, session, symbol, intent),
    follow the status (bounded) and record the outcome. A rejection is final for its key."""
    from tradeflow.ibkr import ledger

    symbol = sig["symbol"]
    broker = strategy.broker
    account = client.trading_account()
    with ledger.hold(account, timeout_s=broker.lock_timeout_s, environ=environ) as book:
        snapshot = account_snapshot(client)
        live = client.live_orders()
        held = float(snapshot["positions"].get(symbol, 0.0))
        side = sig["action"]
        intent = intent_of(side, held) if side in ("BUY", "SELL") else "open_long"
        coid = client_order_id(strategy.name, session, symbol, intent)
        base = {"symbol": symbol, "coid": coid, "intent": intent, "session": session, "account": account}
        prior = book.get(coid)
        if prior and prior.get("status") in ("Rejected", "refused_question"):
            log.warning("%s: %s was rejected before (%s): final, not sent again", symbol, coid, prior.get("reason"))
            return {**base, "status": "Rejected", "reason": prior.get("reason"), "final": True, "resent": False}
        existing = next((o for o in live if o.get("order_ref") == coid), None)
        if existing is not None:
            log.info("%s: %s already placed (order %s, %s): not placing it again", symbol, coid,
                     existing.get("orderId"), existing.get("status"))
            out = {**base, "status": str(existing.get("status")), "order_id": str(existing.get("orderId")),
                   "already_placed": True, "filled_quantity": float(existing.get("filledQuantity") or 0.0)}
            return _follow(strategy, client, out)
        known = {k: float(v["entry_price"]) for k, v in book.entries.items() if v.get("entry_price")}
        pending, unpriced = working_exposure(live, snapshot["prices"], known)
        entry = float(sig.get("entry") or values["close"])
        decision = assess(symbol=symbol, action=side, confidence=float(sig["confidence"]), entry_price=entry,
                          atr=values.get("atr_14"), equity=snapshot["equity"], positions=snapshot["positions"],
                          prices=snapshot["prices"], limits=strategy.risk, position_mode=strategy.signal.review.position_mode,
                          working=pending).as_dict()
        base["allocation"] = decision
        if unpriced:
            return {**base, "status": "not_placed", "reason": "working orders with no known price (cannot count them "
                    f"against the caps): {', '.join(unpriced)}"}
        if not decision["approved"]:
            return {**base, "status": "not_placed", "reason": f"allocation: {decision['reason']}"}
        exit_side = "SELL" if decision["side"] == "BUY" else "BUY"
        cancelled = []
        if intent.startswith("close_"):  # the position's stops and take-profits die with it, first
            for order in working_exits(live, symbol, decision["side"]):
                try:
                    status = client.cancel_order(order["orderId"], timeout_s=max(broker.fill_timeout_s, 5.0),
                                                 poll_s=min(broker.poll_s, 0.5))
                except CancelNotConfirmed as exc:
                    return {**base, "status": "not_placed", "reason": f"the position's working exit could not be "
                            f"cancelled, so it is not closed (an exit left working could flip it short): {exc}"}
                cancelled.append({"order_id": str(order["orderId"]), "order_ref": order.get("order_ref"),
                                  "type": order.get("origOrderType") or order.get("orderType"),
                                  "status": status.get("order_status")})
            live = client.live_orders()
            snapshot = account_snapshot(client)
            held = float(snapshot["positions"].get(symbol, 0.0))
            if held == 0:
                return {**base, "status": "not_placed", "cancelled": cancelled,
                        "reason": "the position closed while its exits were cancelled (an exit filled): nothing to close"}
            decision["quantity"] = min(int(decision["quantity"]), int(abs(held)))
        if decision["side"] == "SELL" and not strategy.risk.allow_short:
            exits = exit_quantity(working_exits(live, symbol, "SELL"))
            after = held - exits - decision["quantity"]
            if after < 0:
                return {**base, "status": "not_placed", "cancelled": cancelled,
                        "reason": f"would leave the account net short ({held:g} held, {exits:g} in working sells, "
                                  f"{decision['quantity']} to sell) and risk.allow_short is false"}
        ticket = _ticket(strategy, decision, sig, conid, coid=coid, intent=intent)
        out = {**base, "cancelled": cancelled, "exit_side": exit_side}
        if broker.dry_run:
            result = client.place_order(ticket, dry_run=True)
            return {**out, **result.as_dict()}
        if broker.preview == "always" or client.is_live():
            try:
                out["whatif"] = client.whatif(ticket)
            except OrderRejected as exc:
                book.record(coid, status="Rejected", reason=str(exc))
                return {**out, "status": "Rejected", "reason": str(exc), "final": True}
            log.info("%s what-if: %s", symbol, {k: out["whatif"].get(k) for k in ("amount", "equity", "initial", "warn")})
        try:
            result = client.place_order(ticket, reply_rounds=broker.reply_rounds,
                                        accept_questions=frozenset(broker.accept_questions))
        except OrderRejected as exc:  # final: recorded, never re-sent for this key
            log.error("%s: %s", symbol, exc)
            book.record(coid, status="Rejected", reason=str(exc))
            return {**out, "status": "Rejected", "reason": str(exc), "final": True}
        book.record(coid, status="placed", order_id=result.order_id, entry_price=entry, quantity=ticket.quantity)
        out.update(result.as_dict())
        out = _follow(strategy, client, out)
        book.record(coid, status=out["status"], order_id=result.order_id, entry_price=entry, quantity=ticket.quantity)
        return out


def _follow(strategy: StrategyConfig, client: ClientPortal, out: dict[str, Any]) -> dict[str, Any]:
    """Poll a placed order until it is final or ``broker.fill_timeout_s`` passed; ``final`` says which."""
    if out.get("dry_run") or not out.get("order_id") or out.get("status") in TERMINAL_STATUSES:
        out["final"] = out.get("status") in TERMINAL_STATUSES
        return out
    try:
        status = client.follow_order(out["order_id"], timeout_s=strategy.broker.fill_timeout_s,
                                     poll_s=strategy.broker.poll_s)
    except BrokerError as exc:
        log.warning("%s: following order %s: %s", out["symbol"], out["order_id"], exc)
        out["final"] = False
        return out
    return {**out, **_status_fields(status)}


def _status_fields(status: Mapping[str, Any]) -> dict[str, Any]:
    state = str(status.get("order_status"))
    avg = status.get("average_price")
    fields = {"status": state, "filled_quantity": float(status.get("cum_fill") or 0.0), "final": state in TERMINAL_STATUSES}
    if avg not in (None, ""):
        try:
            fields["avg_price"] = float(avg)
        except (TypeError, ValueError):
            pass
    if state in FAILED_STATUSES:
        fields["reason"] = f"the broker reports the order {state}"
    return fields


def follow_up(client: ClientPortal, order: Mapping[str, Any]) -> dict[str, Any]:
    """The portfolio step's look at an order this run left working: its status now."""
    if not order.get("order_id") or order.get("final") or order.get("status") in ("not_placed", "dry_run"):
        return dict(order)
    try:
        return {**order, **_status_fields(client.order_status(order["order_id"]))}
    except BrokerError as exc:
        return {**order, "follow_up_error": str(exc)}


def not_placed(decision: Mapping[str, Any]) -> dict[str, Any]:
    """The order step's record when the risk check refused: nothing is sent, the reason is kept."""
    return {"symbol": decision["symbol"], "status": "not_placed", "reason": decision["reason"], "coid": None}


def portfolio(strategy: StrategyConfig, client: ClientPortal) -> dict[str, Any]:
    """Positions, equity, exposure and the monitoring alerts."""
    snapshot = account_snapshot(client)
    equity = snapshot["equity"]
    rows = []
    for p in snapshot["rows"]:
        qty = float(p.get("position") or 0.0)
        if not qty:
            continue
        value = float(p.get("mktValue") or 0.0)
        cost = abs(qty) * float(p.get("avgCost") or 0.0)
        pnl = float(p.get("unrealizedPnl") or 0.0)
        rows.append({"symbol": p.get("ticker") or p.get("contractDesc"), "quantity": qty, "market_value": value,
                     "unrealized_pnl": pnl, "pnl_pct": (pnl / cost) if cost else 0.0,
                     "weight": abs(value) / equity if equity else math.nan})
    gross = sum(abs(r["market_value"]) for r in rows)
    alerts = []
    live = client.live_orders()
    working = [{"symbol": o.get("ticker"), "side": o.get("side"), "type": o.get("origOrderType") or o.get("orderType"),
                "quantity": _remaining(o), "price": o.get("price"), "status": o.get("status"),
                "order_id": str(o.get("orderId")), "order_ref": o.get("order_ref"),
                "parent_id": str(o["parentId"]) if o.get("parentId") else None} for o in working_orders(live)]
    held = {str(r["symbol"]): r["quantity"] for r in rows}
    if not strategy.risk.allow_short:
        alerts += [f"{s} is NET SHORT {q:g} although risk.allow_short is false" for s, q in held.items() if q < 0]
    for symbol in sorted({str(w["symbol"]) for w in working}):
        for side, sign in (("SELL", 1), ("BUY", -1)):
            exits = exit_quantity(working_exits(live, symbol, side))
            position = sign * held.get(symbol, 0.0)
            if exits and exits > max(position, 0.0) and not strategy.risk.allow_short:
                alerts.append(f"{symbol}: working {side} exits of {exits:g} exceed the {max(position, 0.0):g} held "
                              "(an orphaned stop would open a short)")
    limits = strategy.monitoring
    if equity and gross / equity > limits.max_gross_exposure_pct:
        alerts.append(f"gross exposure {gross / equity:.1%} > {limits.max_gross_exposure_pct:.0%}")
    for r in rows:
        if r["pnl_pct"] < -limits.max_position_loss_pct:
            alerts.append(f"{r['symbol']} is down {r['pnl_pct']:.1%} (> {limits.max_position_loss_pct:.0%})")
    return {"account": snapshot["account"], "equity": equity, "cash": snapshot["summary"].get("totalcashvalue"),
            "gross_exposure": gross, "gross_exposure_pct": gross / equity if equity else None,
            "positions": rows, "working_orders": working, "alerts": alerts,
            "checked_at": datetime.now(timezone.utc).isoformat()}


def _records(bars: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in bars.itertuples(index=False):
        volume = row.volume
        out.append({"date": row.date.date().isoformat(), "open": float(row.open), "high": float(row.high),
                    "low": float(row.low), "close": float(row.close),
                    "volume": None if volume is None or not math.isfinite(volume) else float(volume)})
    return out
