"""The IBKR stand-in's paper account: its state (session, accounts, bars, orders, positions, cash,
faults, request log) and the Client Portal routes, quirks included (see ``tests.support.ibkr_gateway``
for the list). Written from IBKR's documented API, not from ``tradeflow.ibkr``."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .httpserver import Reply

PAPER_ACCOUNT = "DU1234567"
BASE_PATH = "/v1/api"
FAULTS = ("unauthenticated", "reject_orders", "reply_timeout", "error_after_accept", "hang_after_accept",
          "delay_fills", "rate_limited", "unavailable", "competing", "cached_positions")
PAGE_SIZE = 30  # IBKR: "page's default size is 30 positions"
#: Orders that are still working (can fill or be cancelled).
WORKING = ("PreSubmitted", "Submitted")
_PERIOD_RE = re.compile(r"^(\d+)(min|h|d|w|m|y)$")
_PERIOD_DAYS = {"d": 1, "w": 7, "m": 30, "y": 365}
#: The questions a paper account really asks before an order (message ids as IBKR numbers them).
QUESTIONS = (
    ("o354", "You are submitting an order without market data. We strongly recommend against this as it may "
             "result in erroneous and unexpected trades. Are you sure you want to submit this order?"),
    ("o10331", "You are about to submit a stop order. Please be aware of the various stop order types available "
               "and the risks associated with each one. Are you sure you want to submit this order?"),
)
#: Other questions IBKR asks, for tests that pass ``questions=[...]`` (id, text).
CATALOG = {
    "o163": "The following order exceeds the price percentage limit. Are you sure you want to submit this order?",
    "o451": "The following order BUY 5000 AAPL MKT exceeds the Total Value Limit of 500000 USD. Are you sure you "
            "want to submit this order?",
    "o383": "The following order BUY 5000 AAPL MKT size exceeds the Size Limit of 500. Are you sure you want to "
            "submit this order?",
    "o2137": "This order will be routed to a LIVE trading account. It may result in a margin call. Are you sure "
             "you want to submit this order?",
}


class PaperGateway:
    """State and routes; every public method runs under ``lock``."""

    def __init__(self, *, accounts: list[str], cash: float, bars: Mapping[str, Any],
                 questions: int | list[tuple[str, str]]) -> None:
        self.lock = threading.RLock()
        self.accounts = accounts
        self.start_cash = cash
        self.questions = questions
        self.bars: dict[str, list[dict[str, Any]]] = {sym.upper(): to_ibkr_bars(frame) for sym, frame in bars.items()}
        self.conids = {sym: 265598 + 1000 * i for i, sym in enumerate(sorted(self.bars))}
        self.marks: dict[str, float] = {}  # price overrides (move_price) and prices of seeded symbols
        self.reset()

    def reset(self) -> None:
        self.authenticated = True
        self.cash = self.start_cash
        self.orders: list[dict[str, Any]] = []
        self.positions: dict[str, dict[str, float]] = {}
        self.pending: dict[str, dict[str, Any]] = {}  # reply id -> {"acct", "orders", "left"}
        self.iserver_accounts_called = False
        self.portfolio_accounts_called = False
        self.orders_warm = False
        self.faults: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.next_order_id = 1_000_000_001
        self.confirmed: list[str] = []  # message ids answered "confirmed: true"
        self.whatifs: list[dict[str, Any]] = []

    # -- routing ----------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        if not path.startswith(BASE_PATH + "/"):
            return Reply(404, {"error": f"no such path {path}"})
        path = path[len(BASE_PATH):]
        for name, status, text in (("unavailable", 503, "Service Unavailable"), ("rate_limited", 429, "Too many requests")):
            fault = self.faults.get(name)
            if fault and fault.get("times", 1) > 0 and fault.get("path", "") in path:
                fault["times"] = fault.get("times", 1) - 1
                return Reply(status, {"error": text})
        if path == "/iserver/reauthenticate" and method == "POST":
            if "unauthenticated" in self.faults and self.faults["unauthenticated"].get("reauth"):
                self.authenticated = True
                self.faults.pop("unauthenticated")
            return Reply(200, {"message": "triggered"})
        if path == "/iserver/auth/status":
            return Reply(200, self._auth_status())
        if path == "/tickle" and method == "POST":
            return Reply(200, {"session": "b1a2c3", "ssoExpires": 540000, "collission": False, "userId": 7654321,
                                 "hmds": {"error": "no bridge"}, "iserver": {"authStatus": self._auth_status()}})
        if (path.startswith("/iserver/") or path.startswith("/portfolio/")) and not self.authenticated:
            return Reply(401, {"error": "not authenticated", "statusCode": 401})
        if path == "/iserver/accounts":
            self.iserver_accounts_called = True
            return Reply(200, {"accounts": list(self.accounts), "selectedAccount": self.accounts[0],
                                 "aliases": {a: a for a in self.accounts}, "allowFeatures": {}})
        if path == "/iserver/secdef/search":
            symbol = str((body or {}).get("symbol") if method == "POST" else query.get("symbol", "")).upper()
            return self._search(symbol)
        if path == "/iserver/marketdata/history":
            return self._history(query)
        if path == "/trsrv/secdef/schedule":
            return self._schedule(query)
        if path == "/portfolio/accounts":
            self.portfolio_accounts_called = True
            return Reply(200, [{"id": a, "accountId": a, "accountVan": a, "accountTitle": "Paper Trading",
                                  "displayName": a, "currency": "USD", "type": "DEMO" if a.startswith("D") else "INDIVIDUAL",
                                  "tradingType": "PMRGN", "faclient": False, "covestor": False} for a in self.accounts])
        if (match := re.fullmatch(r"/portfolio/([^/]+)/positions/invalidate", path)) and method == "POST":
            return self._portfolio(match.group(1), self._invalidate_positions)
        if match := re.fullmatch(r"/portfolio/([^/]+)/positions/(\d+)", path):
            return self._portfolio(match.group(1), lambda: self._positions(int(match.group(2))))
        if match := re.fullmatch(r"/portfolio/([^/]+)/summary", path):
            return self._portfolio(match.group(1), self._summary)
        if (match := re.fullmatch(r"/iserver/account/([^/]+)/orders/whatif", path)) and method == "POST":
            return self._whatif(match.group(1), body)
        if (match := re.fullmatch(r"/iserver/account/([^/]+)/orders", path)) and method == "POST":
            return self._place(match.group(1), body)
        if (match := re.fullmatch(r"/iserver/account/([^/]+)/order/(\d+)", path)) and method == "DELETE":
            return self._cancel(match.group(1), int(match.group(2)))
        if (match := re.fullmatch(r"/iserver/reply/([^/]+)", path)) and method == "POST":
            return self._reply(match.group(1), body)
        if path == "/iserver/account/orders" and method == "GET":
            return self._live_orders()
        if match := re.fullmatch(r"/iserver/account/order/status/(\d+)", path):
            found = next((o for o in self.orders if o["orderId"] == int(match.group(1))), None)
            if found is not None:
                self._count_read(found)
            return Reply(200, {"order_id": found["orderId"], "order_status": found["status"],
                                 "symbol": found["ticker"], "side": found["side"][0], "total_size": found["totalSize"],
                                 "cum_fill": found["filledQuantity"], "average_price": found["avgPrice"],
                                 "order_ref": found["order_ref"], "parent_order_id": found["parentId"]}) \
                if found else Reply(400, {"error": f"OrderID {match.group(1)} doesn't exist"})
        return Reply(404, {"error": f"no such path {path}"})

    def _auth_status(self) -> dict[str, Any]:
        return {"authenticated": self.authenticated, "competing": "competing" in self.faults, "connected": True,
                "message": "" if self.authenticated else "not authenticated", "MAC": "00:11:22:33:44:55",
                "serverInfo": {"serverName": "standin", "serverVersion": "Build 10.25.0p"},
                "fail": "" if self.authenticated else "session expired"}

    def _search(self, symbol: str) -> Reply:
        if symbol not in self.bars:
            return Reply(200, {"error": "No symbol found"})
        conid = self.conids[symbol]
        return Reply(200, [{"conid": str(conid), "companyHeader": f"{symbol} INC - NASDAQ", "companyName": f"{symbol} INC",
                              "symbol": symbol, "description": "NASDAQ", "restricted": None, "fop": None,
                              "opt": None, "war": None, "sections": [{"secType": "STK"}]}])

    def _symbol_of(self, conid: Any) -> str | None:
        try:
            conid = int(conid)
        except (TypeError, ValueError):
            return None
        return next((s for s, c in self.conids.items() if c == conid), None)

    def _history(self, query: dict[str, str]) -> Reply:
        symbol = self._symbol_of(query.get("conid"))
        if symbol is None:
            return Reply(400, {"error": f"conid {query.get('conid')!r} is not valid"})
        period = _PERIOD_RE.match(query.get("period", "1w"))
        if not period or query.get("bar", "1d") not in ("1d", "1D"):
            return Reply(400, {"error": "period/bar not supported (period like 1y, 6m, 30d; bar 1d)"})
        bars = self.bars[symbol]
        days = int(period.group(1)) * _PERIOD_DAYS.get(period.group(2), 1)
        start = bars[-1]["t"] - days * 86_400_000 if bars else 0
        data = [b for b in bars if b["t"] > start][-1000:]  # at most 1000 points per request
        return Reply(200, {"serverId": "20477", "symbol": symbol, "text": f"{symbol} INC", "priceFactor": 100,
                             "startTime": _ibkr_time(data[0]["t"]) if data else "", "high": "", "low": "",
                             "timePeriod": query.get("period"), "barLength": 86400, "mdAvailability": "S",
                             "mktDataDelay": 0, "outsideRth": False, "volumeFactor": 1, "priceDisplayRule": 1,
                             "priceDisplayValue": "2", "negativeCapable": False, "messageVersion": 2,
                             "data": data, "points": len(data), "travelTime": 12})

    def _schedule(self, query: dict[str, str]) -> Reply:
        symbol = (query.get("symbol") or "").upper()
        if query.get("assetClass") != "STK" or symbol not in self.bars:
            return Reply(400, {"error": "assetClass STK and a known symbol are required"})
        days = [datetime.fromtimestamp(b["t"] / 1000, UTC).strftime("%Y%m%d") for b in self.bars[symbol][-7:]]
        return Reply(200, [{"id": "p102082", "tradeVenueId": "v13038", "exchange": "NASDAQ",
                              "description": "NASDAQ", "timezone": "America/New_York",
                              "schedules": [{"clearingCycleEndTime": "2000", "tradingScheduleDate": d,
                                             "sessions": [{"openingTime": "0400", "closingTime": "2000", "prop": "LIQUID"}],
                                             "tradingtimes": [{"openingTime": "0930", "closingTime": "1600",
                                                               "cancelDayOrders": "Y"}]} for d in days]}])

    def _portfolio(self, account: str, answer: Any) -> Reply:
        if not self.portfolio_accounts_called:
            return Reply(400, {"error": "Please query /portfolio/accounts first"})
        if account not in self.accounts:
            return Reply(400, {"error": f"Account {account} is not valid"})
        return answer()

    def _last_price(self, symbol: str) -> float:
        if symbol in self.marks:
            return self.marks[symbol]
        return float(self.bars[symbol][-1]["c"])

    def conid_of(self, symbol: str) -> int:
        return self.conids.setdefault(symbol, 265598 + 1000 * len(self.conids))

    def _invalidate_positions(self) -> Reply:
        if "cached_positions" in self.faults:
            self.faults["cached_positions"]["snapshot"] = {s: dict(p) for s, p in self.positions.items()}
        return Reply(200, {"message": "success"})

    def _positions(self, page: int) -> Reply:
        rows = []
        cached = self.faults.get("cached_positions")
        held = cached["snapshot"] if cached is not None else self.positions
        for symbol, pos in sorted(held.items()):
            if not pos["qty"]:
                continue
            price = self._last_price(symbol)
            rows.append({"acctId": self.accounts[0], "conid": self.conid_of(symbol), "contractDesc": symbol,
                         "ticker": symbol, "position": pos["qty"], "mktPrice": price, "mktValue": round(pos["qty"] * price, 2),
                         "currency": "USD", "avgCost": pos["avg"], "avgPrice": pos["avg"], "realizedPnl": 0.0,
                         "unrealizedPnl": round(pos["qty"] * (price - pos["avg"]), 2), "assetClass": "STK"})
        return Reply(200, rows[page * PAGE_SIZE:(page + 1) * PAGE_SIZE])

    def _summary(self) -> Reply:
        gross = sum(abs(p["qty"]) * self._last_price(s) for s, p in self.positions.items())
        net = self.cash + sum(p["qty"] * self._last_price(s) for s, p in self.positions.items())

        def value(amount: float) -> dict[str, Any]:
            return {"amount": round(amount, 2), "currency": "USD", "isNull": False,
                    "timestamp": int(time.time() * 1000), "value": None, "severity": 0}

        return Reply(200, {"netliquidation": value(net), "totalcashvalue": value(self.cash),
                             "availablefunds": value(self.cash), "buyingpower": value(self.cash * 4),
                             "grosspositionvalue": value(gross), "equitywithloanvalue": value(net),
                             "accountready": {"amount": 0, "currency": None, "isNull": False, "timestamp": 0,
                                              "value": "true", "severity": 0}})

    # -- orders -----------------------------------------------------------------------------------

    def _place(self, account: str, body: Any) -> Reply:
        if not self.iserver_accounts_called:
            return Reply(400, {"error": "Please query /iserver/accounts first"})
        if account not in self.accounts:
            return Reply(400, {"error": f"Account {account} is not valid"})
        orders = body.get("orders") if isinstance(body, dict) else None
        if not isinstance(orders, list) or not orders:
            return Reply(400, {"error": 'body must be {"orders": [...]}'})
        for order in orders:
            problem = self._order_problem(order)
            if problem:
                return Reply(400, {"error": problem})
        seen = {o["order_ref"] for o in self.orders if o["order_ref"]}
        for order in orders:
            if order.get("cOID") in seen:
                return Reply(200, {"error": f"Local order ID={order['cOID']} is already registered."})
        if "reject_orders" in self.faults:
            return Reply(200, {"error": self.faults["reject_orders"].get("message", "Order rejected - reason: "
                                                                          "insufficient buying power")})
        if self.questions:
            left = len(self.questions) if isinstance(self.questions, list) else self.questions
            return self._question({"acct": account, "orders": orders, "left": left})
        return self._accept(account, orders)

    def _order_problem(self, order: Any) -> str | None:
        if not isinstance(order, dict):
            return "each order must be an object"
        if self._symbol_of(order.get("conid")) is None:
            return f"conid {order.get('conid')!r} is not valid"
        if order.get("side") not in ("BUY", "SELL"):
            return f"side must be BUY or SELL, got {order.get('side')!r}"
        if order.get("orderType") not in ("MKT", "LMT", "STP"):
            return f"orderType {order.get('orderType')!r} is not supported here"
        qty = order.get("quantity")
        if isinstance(qty, bool) or not isinstance(qty, (int, float)) or qty <= 0:
            return f"quantity must be positive, got {qty!r}"
        if order.get("orderType") == "LMT" and not isinstance(order.get("price"), (int, float)):
            return "a LMT order needs price"
        if order.get("orderType") == "STP" and not isinstance(order.get("price"), (int, float)):
            return "a STP order needs price (the stop trigger)"
        return None

    def _question(self, pending: dict[str, Any]) -> Reply:
        reply_id = str(uuid.uuid4())
        self.pending[reply_id] = pending
        asked = self.questions if isinstance(self.questions, list) else list(QUESTIONS)
        total = len(asked) if isinstance(self.questions, list) else self.questions
        message_id, text = asked[(total - pending["left"]) % len(asked)]
        pending["asked"] = message_id
        return Reply(200, [{"id": reply_id, "message": [text], "isSuppressed": False, "messageIds": [message_id]}])

    def _reply(self, reply_id: str, body: Any) -> Reply:
        pending = self.pending.pop(reply_id, None)
        if pending is None:
            return Reply(400, {"error": f"Reply id {reply_id} is not valid or has expired"})
        if not isinstance(body, dict) or body.get("confirmed") is not True:
            return Reply(200, [{"error": "Order was not confirmed; nothing was placed"}])
        self.confirmed.append(pending.get("asked", ""))
        seen = {o["order_ref"] for o in self.orders if o["order_ref"]}
        for order in pending["orders"]:
            if order.get("cOID") in seen:
                return Reply(200, {"error": f"Local order ID={order['cOID']} is already registered."})
        pending["left"] -= 1
        if pending["left"] > 0:
            return self._question(pending)
        return self._accept(pending["acct"], pending["orders"])

    def _accept(self, account: str, orders: list[dict[str, Any]]) -> Reply:
        placed = []
        ids_by_coid: dict[str, int] = {}
        for order in orders:
            symbol = self._symbol_of(order["conid"])
            order_id = self.next_order_id
            self.next_order_id += 1
            qty = float(order["quantity"])
            row = {"acct": account, "conid": int(order["conid"]), "orderId": order_id, "cashCcy": "USD",
                   "ticker": symbol, "secType": "STK", "listingExchange": "NASDAQ", "companyName": f"{symbol} INC",
                   "side": order["side"], "orderType": {"MKT": "Market", "LMT": "Limit", "STP": "Stop"}[order["orderType"]],
                   "origOrderType": order["orderType"], "timeInForce": order.get("tif", "DAY"),
                   "totalSize": qty, "remainingQuantity": qty, "filledQuantity": 0.0, "avgPrice": None,
                   "price": order.get("price"), "status": "PreSubmitted", "order_ref": order.get("cOID"),
                   "parentId": ids_by_coid.get(order.get("parentId", "")),
                   "isSingleGroup": bool(order.get("isSingleGroup")),
                   "lastExecutionTime_r": int(time.time() * 1000)}
            if order.get("cOID"):
                ids_by_coid[order["cOID"]] = order_id
            self.orders.append(row)
            if order.get("parentId") is None:
                delay = self.faults.get("delay_fills")
                if delay is not None and row["origOrderType"] != "STP":
                    row["fill_after_reads"] = delay.get("reads")  # None: only fill_pending() fills it
                else:
                    self._maybe_fill(row)
            else:  # a child (stop, take-profit): inactive until its parent fills, then working
                parent = next(o for o in self.orders if o["orderId"] == row["parentId"])
                row["status"] = "Submitted" if parent["status"] == "Filled" else "PreSubmitted"
            placed.append({"order_id": str(order_id), "order_status": row["status"], "encrypt_message": "1",
                           **({"parent_order_id": str(row["parentId"])} if row["parentId"] else {})})
        for name in ("error_after_accept", "hang_after_accept"):
            fault = self.faults.get(name)
            if fault and fault.get("times", 1) > 0:
                fault["times"] = fault.get("times", 1) - 1
                if name == "error_after_accept":
                    return Reply(500, {"error": "Internal Server Error"})
                return Reply(-1, fault.get("delay_s", 30.0))  # the handler sleeps, outside the lock
        return Reply(200, placed)

    def _maybe_fill(self, row: dict[str, Any]) -> None:
        price = self._last_price(row["ticker"])
        limit = row["price"]
        if row["origOrderType"] == "LMT" and ((row["side"] == "BUY" and limit < price) or
                                              (row["side"] == "SELL" and limit > price)):
            row["status"] = "Submitted"
            return
        qty = row["totalSize"] if row["side"] == "BUY" else -row["totalSize"]
        pos = self.positions.setdefault(row["ticker"], {"qty": 0.0, "avg": 0.0})
        new_qty = pos["qty"] + qty
        if new_qty and (pos["qty"] >= 0) == (qty > 0):
            pos["avg"] = (pos["qty"] * pos["avg"] + qty * price) / new_qty
        pos["qty"] = new_qty
        self.cash -= qty * price
        row.update(status="Filled", filledQuantity=row["totalSize"], remainingQuantity=0.0, avgPrice=price)
        for other in self.orders:
            if other.get("parentId") == row["orderId"] and other["status"] == "PreSubmitted":
                other["status"] = "Submitted"  # the bracket's children go live
            elif (row.get("parentId") is not None and other.get("parentId") == row["parentId"]
                  and other is not row and other["status"] in WORKING):
                other["status"] = "Cancelled"  # one of an OCA group filled: its siblings are cancelled

    def _live_orders(self) -> Reply:
        if not self.iserver_accounts_called:
            return Reply(400, {"error": "Please query /iserver/accounts first"})
        if not self.orders_warm:
            self.orders_warm = True
            return Reply(200, {"orders": [], "snapshot": False})
        for row in self.orders:
            self._count_read(row)
        return Reply(200, {"orders": [{k: v for k, v in o.items() if k != "fill_after_reads"} for o in self.orders],
                           "snapshot": True})

    def _count_read(self, row: dict[str, Any]) -> None:
        """A delayed fill (``delay_fills``, ``reads=n``): the order fills once it was read n times."""
        if row["status"] == "PreSubmitted" and row.get("fill_after_reads") is not None:
            row["fill_after_reads"] -= 1
            if row["fill_after_reads"] <= 0:
                row.pop("fill_after_reads")
                self._maybe_fill(row)

    def fill_pending(self) -> None:
        for row in self.orders:
            if row["status"] == "PreSubmitted" and "fill_after_reads" in row:
                row.pop("fill_after_reads")
                self._maybe_fill(row)

    def move_price(self, symbol: str, price: float) -> None:
        """The market moves: working stops and limits of ``symbol`` that the price crosses fill."""
        self.marks[symbol] = float(price)
        for row in list(self.orders):
            if row["ticker"] != symbol or row["status"] != "Submitted":
                continue
            level, kind, side = row["price"], row["origOrderType"], row["side"]
            hit = ((kind == "STP" and ((side == "SELL" and price <= level) or (side == "BUY" and price >= level))) or
                   (kind == "LMT" and ((side == "SELL" and price >= level) or (side == "BUY" and price <= level))))
            if hit and row["status"] == "Submitted":
                row["origOrderType"] = "MKT"  # triggered: fills at the market
                self._maybe_fill(row)
                row["origOrderType"] = kind

    def seed_positions(self, rows: Mapping[str, tuple[float, float]]) -> None:
        """Positions held before the test (symbol -> (quantity, price)), symbols with or without bars."""
        for symbol, (qty, price) in rows.items():
            self.positions[symbol] = {"qty": float(qty), "avg": float(price)}
            self.marks.setdefault(symbol, float(price)) if symbol not in self.bars else None
            self.conid_of(symbol)
            self.cash -= qty * price

    def _cancel(self, account: str, order_id: int) -> Reply:
        if account not in self.accounts:
            return Reply(400, {"error": f"Account {account} is not valid"})
        row = next((o for o in self.orders if o["orderId"] == order_id), None)
        if row is None:
            return Reply(400, {"error": f"OrderID {order_id} doesn't exist"})
        if row["status"] not in WORKING:
            return Reply(200, {"error": f"OrderID {order_id} is {row['status']}: cannot cancel"})
        group = [row] + [o for o in self.orders if o.get("parentId") is not None and o["status"] in WORKING and
                         (o["parentId"] == order_id or (row.get("parentId") and o["parentId"] == row["parentId"]))]
        for o in group:  # IBKR: cancelling a parent cancels its bracket, a child its OCA siblings
            o["status"] = "Cancelled"
        return Reply(200, {"msg": "Request was submitted", "order_id": order_id, "conid": row["conid"], "account": account})

    def _whatif(self, account: str, body: Any) -> Reply:
        if account not in self.accounts:
            return Reply(400, {"error": f"Account {account} is not valid"})
        orders = body.get("orders") if isinstance(body, dict) else None
        if not isinstance(orders, list) or not orders or self._order_problem(orders[0]):
            return Reply(400, {"error": 'body must be {"orders": [...]}'})
        self.whatifs.append(orders[0])
        symbol = self._symbol_of(orders[0]["conid"])
        amount = float(orders[0]["quantity"]) * self._last_price(symbol)
        equity = self.cash + sum(p["qty"] * self._last_price(s) for s, p in self.positions.items())
        money = lambda v: f"{v:,.2f} USD"  # noqa: E731
        return Reply(200, {"amount": {"amount": money(amount), "commission": "1.00 USD", "total": money(amount + 1)},
                           "equity": {"current": money(equity), "change": "-1.00 USD", "after": money(equity - 1)},
                           "initial": {"current": "0 USD", "change": money(amount / 4), "after": money(amount / 4)},
                           "maintenance": {"current": "0 USD", "change": money(amount / 4), "after": money(amount / 4)},
                           "warn": None, "error": None})


def _ibkr_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d-%H:%M:%S")


def to_ibkr_bars(frame: Any) -> list[dict[str, Any]]:
    """A bars table (date, open, high, low, close[, volume]) -> IBKR bars, oldest first. A daily
    bar is stamped at the session's open, 14:30 UTC (US/Eastern 09:30 in winter)."""
    out = []
    for row in frame.itertuples(index=False):
        stamp = datetime.fromisoformat(str(row.date)[:10]).replace(tzinfo=UTC) + timedelta(hours=14, minutes=30)
        bar = {"t": int(stamp.timestamp() * 1000), "o": float(row.open), "h": float(row.high),
               "l": float(row.low), "c": float(row.close)}
        volume = getattr(row, "volume", None)
        if volume is not None and volume == volume:
            bar["v"] = float(volume)
        out.append(bar)
    return sorted(out, key=lambda b: b["t"])
