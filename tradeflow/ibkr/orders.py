"""What the IBKR workflow asks the broker to place and what it got back: the ``OrderTicket`` (an
entry with its bracket: a protective stop and a take-profit, children of the entry and so one OCA
group at IBKR; a close has no children), the ``OrderResult``, and the idempotency key / client order
id (``cOID``) that makes every attempt, retry or concurrent run of one intent find the same order.

The key is (strategy, trading session, symbol, intent), not the DAG run: two runs of one strategy on
one session that both want to open AAPL long are one order, however they were started (schedule,
manual trigger, a second scheduler, ``airflow dags test``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


#: What an order is for; the code goes into the cOID so a person reading the blotter sees it.
INTENTS = {"open_long": "OL", "close_long": "CL", "open_short": "OS", "close_short": "CS"}
#: Statuses after which an order never changes again (IBKR's ``order_status`` values).
TERMINAL_STATUSES = frozenset({"Filled", "Cancelled", "Inactive", "Rejected", "ApiCancelled", "Expired"})
#: Of those, the ones that mean "not executed".
FAILED_STATUSES = frozenset({"Inactive", "Rejected"})


def intent_of(side: str, held: float) -> str:
    """``open_long`` / ``close_long`` / ``open_short`` / ``close_short`` from the side and what is held."""
    if side == "BUY":
        return "close_short" if held < 0 else "open_long"
    return "close_long" if held > 0 else "open_short"


def client_order_id(strategy: str, session: str, symbol: str, intent: str) -> str:
    """The order's ``cOID``, the idempotency key: one per (strategy, trading session, symbol,
    intent). Every attempt and every run with that key looks the order up before placing."""
    if intent not in INTENTS:
        raise ValueError(f"intent {intent!r}: one of {', '.join(INTENTS)}")
    digest = hashlib.sha256(f"{strategy}|{session}|{symbol}|{intent}".encode()).hexdigest()[:12]
    return f"tf-{symbol}-{INTENTS[intent]}-{digest}"


@dataclass
class OrderTicket:
    """What the workflow wants placed: a parent order and its optional bracket children (a stop
    and a take-profit, both ``parentId`` = the parent's cOID: IBKR makes them one OCA group, so
    one filling cancels the other, and cancelling the parent cancels both)."""

    symbol: str
    conid: int
    side: str  # BUY | SELL
    quantity: int
    coid: str
    order_type: str = "MKT"
    limit_price: float | None = None
    stop_price: float | None = None
    tif: str = "DAY"
    outside_rth: bool = False
    take_profit: float | None = None
    intent: str = "open_long"

    def payload(self, account_id: str) -> dict[str, Any]:
        parent = {"acctId": account_id, "conid": self.conid, "cOID": self.coid, "orderType": self.order_type,
                  "side": self.side, "quantity": self.quantity, "tif": self.tif, "outsideRTH": self.outside_rth}
        if self.order_type == "LMT":
            parent["price"] = self.limit_price
        orders = [parent]
        exit_side = "SELL" if self.side == "BUY" else "BUY"
        for suffix, kind, price in (("SL", "STP", self.stop_price), ("TP", "LMT", self.take_profit)):
            if price is not None:
                orders.append({"acctId": account_id, "conid": self.conid, "cOID": f"{self.coid}-{suffix}",
                               "parentId": self.coid, "orderType": kind, "price": price, "side": exit_side,
                               "quantity": self.quantity, "tif": "GTC"})
        return {"orders": orders}


@dataclass
class OrderResult:
    coid: str
    status: str  # Filled | Submitted | PreSubmitted | Cancelled | Rejected | dry_run | ...
    order_id: str | None
    account_id: str
    already_placed: bool = False  # found by cOID: an earlier attempt placed it
    dry_run: bool = False
    replies: list[str] = field(default_factory=list)  # confirmation questions answered (message ids)
    questions: list[dict[str, Any]] = field(default_factory=list)  # {"id", "text", "accepted"} of each asked
    filled_quantity: float = 0.0
    avg_price: float | None = None
    request: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
