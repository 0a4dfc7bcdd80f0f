"""Position sizing and the limits an order must pass; every refusal says why in one line.

What the caps count (``max_position_pct``, ``max_total_exposure_pct``): the positions held, plus
the unfilled part of every working entry order (``working``: notional per symbol, from the broker's
order list). The order step sizes inside the account's allocation lock (``tradeflow.ibkr.ledger``),
so "working" includes what this run and any concurrent run already placed.

Sizing: the stop sits ``atr_stop_multiple`` ATRs from the entry; the quantity risks at most
``max_risk_per_trade`` of net liquidation if that stop is hit, then is cut to the per-symbol and
total exposure caps. Pure functions over plain numbers (no broker, no Airflow): easy to test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tradeflow.ibkr.strategy import RiskSettings
from tradeflow.positions import DEFAULT_POSITION_MODE, allows_short, target_position

#: Beyond these a gateway number is a bug or a lie, not an account: refused, never sized on
#: (an equity of 1e300 once sized an order of 5.6e296 shares).
MAX_PLAUSIBLE_EQUITY = 1e12
MAX_PLAUSIBLE_PRICE = 1e7


@dataclass
class RiskDecision:
    approved: bool
    symbol: str
    action: str
    side: str | None = None
    quantity: int = 0
    entry_price: float | None = None
    stop_price: float | None = None
    notional: float = 0.0
    risk_amount: float = 0.0
    binding_limit: str | None = None  # which limit set the quantity
    reasons: list[str] = field(default_factory=list)  # why refused / how sized
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def assess(
    *,
    symbol: str,
    action: str,
    confidence: float,
    entry_price: float,
    atr: float | None,
    equity: float,
    positions: Mapping[str, float],
    prices: Mapping[str, float],
    limits: RiskSettings,
    position_mode: str = DEFAULT_POSITION_MODE,
    working: Mapping[str, float] | None = None,
) -> RiskDecision:
    """Decide whether (and how much) to trade. ``positions``: shares held per symbol (negative =
    short); ``prices``: the latest price per symbol held; ``equity``: net liquidation value.
    ``position_mode`` (``tradeflow.positions``): in long_only a SELL only closes a long, never shorts."""
    decision = RiskDecision(approved=False, symbol=symbol, action=action, entry_price=entry_price)
    bad = _implausible_inputs(equity, entry_price, positions, prices, symbol)
    if bad:
        decision.reasons.append(bad)
        return decision
    held = float(positions.get(symbol, 0.0))
    pending = {s: abs(float(v)) for s, v in (working or {}).items() if v}
    exposure = {s: abs(q) * float(prices.get(s, entry_price if s == symbol else 0.0)) for s, q in positions.items()}
    for s, notional in pending.items():
        exposure[s] = exposure.get(s, 0.0) + notional
    gross = sum(exposure.values())
    decision.checks = {"confidence": confidence, "min_confidence": limits.min_confidence, "equity": equity,
                       "held": held, "symbol_exposure": exposure.get(symbol, 0.0), "gross_exposure": gross, "atr": atr,
                       "working_exposure": round(sum(pending.values()), 2)}

    def refuse(reason: str) -> RiskDecision:
        decision.reasons.append(reason)
        return decision

    if action not in ("BUY", "SELL"):
        return refuse(f"signal is {action}: nothing to trade")
    if not math.isfinite(confidence) or confidence < limits.min_confidence:
        return refuse(f"confidence {confidence:.2f} is below min_confidence {limits.min_confidence:.2f}")
    if not (equity > 0 and math.isfinite(equity)):
        return refuse(f"account equity {equity!r} is not positive")
    if not (entry_price > 0 and math.isfinite(entry_price)):
        return refuse(f"no usable entry price ({entry_price!r})")
    if atr is None or not math.isfinite(atr) or atr <= 0:
        return refuse("no ATR (too little history): the stop distance cannot be set")

    closing = (action == "SELL" and held > 0) or (action == "BUY" and held < 0)
    if action == "SELL" and held < 0 and not limits.allow_short:
        return refuse(f"the account is NET SHORT {held:g} {symbol} although risk.allow_short is false: a BUY covers it")
    if action == "SELL" and held <= 0 and target_position(action, confidence, mode=position_mode) >= 0:
        return refuse(f"SELL without a long position: in {position_mode} a SELL means exit to flat, never short")
    if action == "SELL" and held <= 0 and not (limits.allow_short and allows_short(position_mode)):
        return refuse("SELL without a long position and risk.allow_short is false")
    stop_distance = limits.atr_stop_multiple * atr
    stop = entry_price - stop_distance if action == "BUY" else entry_price + stop_distance
    if stop <= 0:
        return refuse(f"stop {stop:.2f} ({limits.atr_stop_multiple:g} x ATR {atr:.2f}) is not a valid price")
    decision.stop_price = round(stop, 2)
    decision.side = action

    if closing:  # reducing a position never adds risk: sell (or cover) what is held
        quantity = int(abs(held))
        decision.binding_limit = "close_position"
        decision.reasons.append(f"closes the {held:g}-share position")
    else:
        budget = equity * limits.max_risk_per_trade
        by_risk = math.floor(budget / stop_distance)
        symbol_room = limits.max_position_pct * equity - exposure.get(symbol, 0.0)
        total_room = limits.max_total_exposure_pct * equity - gross
        by_symbol = math.floor(max(symbol_room, 0.0) / entry_price)
        by_total = math.floor(max(total_room, 0.0) / entry_price)
        by_notional = math.floor(limits.max_order_notional / entry_price)
        sizes = {"risk_per_trade": by_risk, "max_position_pct": by_symbol, "max_total_exposure_pct": by_total,
                 "max_order_notional": by_notional}
        decision.checks.update({"risk_budget": round(budget, 2), "stop_distance": round(stop_distance, 4),
                                "size_by_limit": sizes})
        decision.binding_limit = min(sizes, key=lambda k: sizes[k])
        quantity = sizes[decision.binding_limit]
        if quantity < 1:
            texts = {
                "risk_per_trade": f"one share risks {stop_distance:.2f} > budget {budget:.2f} "
                                  f"({limits.max_risk_per_trade:.2%} of equity)",
                "max_position_pct": f"{symbol} exposure {exposure.get(symbol, 0.0):,.0f} leaves no room under "
                                    f"max_position_pct {limits.max_position_pct:.0%} of equity {equity:,.0f}",
                "max_total_exposure_pct": f"gross exposure {gross:,.0f} leaves no room under max_total_exposure_pct "
                                          f"{limits.max_total_exposure_pct:.0%} of equity {equity:,.0f}",
                "max_order_notional": f"one share at {entry_price:,.2f} is over max_order_notional "
                                      f"{limits.max_order_notional:,.0f}",
            }
            return refuse(f"size 0: {texts[decision.binding_limit]}")
        decision.reasons.append(f"{quantity} shares, sized by {decision.binding_limit}")
    decision.quantity = quantity
    decision.notional = round(quantity * entry_price, 2)
    decision.risk_amount = round(quantity * stop_distance, 2)
    decision.approved = True
    return decision


def _implausible_inputs(equity: float, entry_price: float, positions: Mapping[str, float],
                        prices: Mapping[str, float], symbol: str) -> str | None:
    """Why the gateway's numbers cannot be sized on (non-finite, non-positive or implausible
    equity or prices; a negative price would shrink the gross exposure under its cap), or None."""
    def number(value: Any) -> float | None:
        try:
            out = float(value)
        except (TypeError, ValueError):
            return None
        return out if math.isfinite(out) else None

    eq = number(equity)
    if eq is None or not 0 < eq <= MAX_PLAUSIBLE_EQUITY:
        return f"account equity {equity!r} is not a plausible positive number (0 < equity <= {MAX_PLAUSIBLE_EQUITY:g})"
    entry = number(entry_price)
    if entry is None or not 0 < entry <= MAX_PLAUSIBLE_PRICE:
        return f"no usable entry price ({entry_price!r}; 0 < price <= {MAX_PLAUSIBLE_PRICE:g})"
    for held_symbol, quantity in positions.items():
        if number(quantity) is None:
            return f"position {held_symbol} quantity {quantity!r} is not a finite number"
        if held_symbol == symbol and held_symbol not in prices:
            continue
        price = number(prices.get(held_symbol))
        if price is None or not 0 < price <= MAX_PLAUSIBLE_PRICE:
            return f"market price of held {held_symbol} {prices.get(held_symbol)!r} is not a plausible positive price"
    return None
