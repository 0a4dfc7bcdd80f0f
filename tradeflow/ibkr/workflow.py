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
from tradeflow.ibkr.orders import OrderTicket, client_order_id
from tradeflow.ibkr.risk import assess

log = logging.getLogger(__name__)

PERIODS_PER_YEAR = 252
BAR_SIZE = "1 day"


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


def place(strategy: StrategyConfig, decision: Mapping[str, Any], conid: int, client: ClientPortal, *,
          dag_id: str, run_id: str) -> dict[str, Any]:
    """Place the approved order once (cOID from DAG run, symbol, side)."""
    symbol = decision["symbol"]
    if not decision["approved"]:
        raise ValueError(f"{symbol}: the risk check refused this order ({decision['reason']}); nothing to place")
    side = decision["side"]
    orders = strategy.orders
    limit = None
    if orders.order_type == "LMT":
        factor = 1 + orders.limit_offset_pct if side == "BUY" else 1 - orders.limit_offset_pct
        limit = round(decision["entry_price"] * factor, 2)
    ticket = OrderTicket(symbol=symbol, conid=int(conid), side=side, quantity=int(decision["quantity"]),
                         coid=client_order_id(dag_id, run_id, symbol, side), order_type=orders.order_type,
                         limit_price=limit, stop_price=decision["stop_price"] if orders.attach_stop else None,
                         tif=orders.tif, outside_rth=orders.outside_rth)
    result = client.place_order(ticket, dry_run=strategy.broker.dry_run, reply_rounds=strategy.broker.reply_rounds)
    return {"symbol": symbol, **result.as_dict()}


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
    limits = strategy.monitoring
    if equity and gross / equity > limits.max_gross_exposure_pct:
        alerts.append(f"gross exposure {gross / equity:.1%} > {limits.max_gross_exposure_pct:.0%}")
    for r in rows:
        if r["pnl_pct"] < -limits.max_position_loss_pct:
            alerts.append(f"{r['symbol']} is down {r['pnl_pct']:.1%} (> {limits.max_position_loss_pct:.0%})")
    return {"account": snapshot["account"], "equity": equity, "cash": snapshot["summary"].get("totalcashvalue"),
            "gross_exposure": gross, "gross_exposure_pct": gross / equity if equity else None,
            "positions": rows, "alerts": alerts, "checked_at": datetime.now(timezone.utc).isoformat()}


def _records(bars: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in bars.itertuples(index=False):
        volume = row.volume
        out.append({"date": row.date.date().isoformat(), "open": float(row.open), "high": float(row.high),
                    "low": float(row.low), "close": float(row.close),
                    "volume": None if volume is None or not math.isfinite(volume) else float(volume)})
    return out
