"""What the IBKR workflow asks the broker to place and what it got back: the ``OrderTicket`` (a
parent order and an optional protective stop, as the Client Portal payload), the ``OrderResult``, and
the deterministic client order id (``cOID``) that makes a retried placement find its first attempt."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def client_order_id(dag_id: str, run_id: str, symbol: str, side: str) -> str:
    """The order's ``cOID``: the same DAG run, symbol and side always give the same id, so a
    retried task finds the order it already placed instead of placing a second one."""
    digest = hashlib.sha256(f"{dag_id}|{run_id}|{symbol}|{side}".encode()).hexdigest()[:12]
    return f"tf-{symbol}-{side[0]}-{digest}"


@dataclass
class OrderTicket:
    """What the workflow wants placed: a parent order and an optional protective stop."""

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

    def payload(self, account_id: str) -> dict[str, Any]:
        parent = {"acctId": account_id, "conid": self.conid, "cOID": self.coid, "orderType": self.order_type,
                  "side": self.side, "quantity": self.quantity, "tif": self.tif, "outsideRTH": self.outside_rth}
        if self.order_type == "LMT":
            parent["price"] = self.limit_price
        orders = [parent]
        if self.stop_price is not None:
            orders.append({"acctId": account_id, "conid": self.conid, "cOID": f"{self.coid}-SL", "parentId": self.coid,
                           "orderType": "STP", "price": self.stop_price,
                           "side": "SELL" if self.side == "BUY" else "BUY", "quantity": self.quantity, "tif": "GTC"})
        return {"orders": orders}


@dataclass
class OrderResult:
    coid: str
    status: str  # Filled | Submitted | PreSubmitted | dry_run | ...
    order_id: str | None
    account_id: str
    already_placed: bool = False  # found by cOID: an earlier attempt placed it
    dry_run: bool = False
    replies: list[str] = field(default_factory=list)  # confirmation questions answered (message ids)
    filled_quantity: float = 0.0
    avg_price: float | None = None
    request: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
