"""A paper-trading stand-in for the IBKR Client Portal Web API gateway, on a real loopback socket.

Written from IBKR's documented Client Portal Web API (``/v1/api``), quirks included, and
deliberately without importing ``tradeflow.ibkr``: a fake that shared the client's constants
would agree with the client's bugs. State lives in memory; orders fill on paper.

What it speaks (paths under ``/v1/api``)::

    GET|POST /iserver/auth/status        {"authenticated", "competing", "connected", "message", "MAC", "serverInfo", "fail"}
    POST     /tickle                     {"session", "ssoExpires", "collission", "userId", "iserver": {"authStatus": {...}}}
    GET      /iserver/accounts           {"accounts": [...], "selectedAccount"}; must precede order calls
    GET|POST /iserver/secdef/search      [{"conid": "265598" (a STRING here), "symbol", "companyName", ...}]
                                         unknown symbol: 200 {"error": "No symbol found"}
    GET      /iserver/marketdata/history ?conid=&period=1y&bar=1d -> {"data": [{"t" ms, "o","h","l","c","v"}], ...}
    GET      /trsrv/secdef/schedule      ?assetClass=STK&symbol= -> [{"schedules": [{"tradingScheduleDate", "tradingtimes"}]}]
    GET      /portfolio/accounts         [{"id": "DU...", "type": "DEMO", ...}]; must precede other /portfolio calls
    GET      /portfolio/{acct}/positions/{page}   30 per page (IBKR's documented size), [] past the last
    POST     /portfolio/{acct}/positions/invalidate  refreshes the positions cache -> {"message": "success"}
    GET      /portfolio/{acct}/summary   {"netliquidation": {"amount", "currency", ...}, "availablefunds": ..., ...}
    POST     /iserver/account/{acct}/orders  {"orders": [{"conid","cOID","orderType","side","quantity","tif","price"?,
                                         "auxPrice"?, "parentId"?}]} -> [{"id", "message": [...], "messageIds"}] (a
                                         question) or [{"order_id", "order_status", "encrypt_message": "1"}]
    POST     /iserver/reply/{replyId}    {"confirmed": true} -> the next question or the placed orders
    GET      /iserver/account/orders     {"orders": [...], "snapshot": bool}; the FIRST call after login answers
                                         {"orders": [], "snapshot": false} (the subscription warms up): call again
    GET      /iserver/account/order/status/{orderId}   {"order_status", "cum_fill", "total_size", ...}
    DELETE   /iserver/account/{acct}/order/{orderId}  cancels a working order (a parent: its bracket; a
                                         child: its OCA siblings) -> {"msg": "Request was submitted", ...}
    POST     /iserver/account/{acct}/orders/whatif    {"amount", "equity", "initial", "maintenance", "warn", "error"}
    POST     /iserver/reauthenticate     {"message": "triggered"} (restores the session if the fault allows)

Quirks modelled: conid as a string in search results and an int elsewhere; ``/iserver/accounts`` and
``/portfolio/accounts`` must be called first (400 otherwise); every ``/iserver`` and ``/portfolio``
call answers 401 when the brokerage session is not authenticated; a ``cOID`` may be used once
(``{"error": "Local order ID=... is already registered."}``); a market order fills at once at the
last bar's close; children (``parentId`` = the parent's ``cOID``) are PreSubmitted until the parent
fills, then Submitted (working) as one OCA group: when one fills (``move_price``) its siblings are
cancelled; a separate order (a close) cancels nothing, as at IBKR.

Faults (``set_fault(name, **options)``, or ``POST /__control__ {"fault": name, ...}``)::

    down                stop(): connection refused until start()
    unauthenticated     the session is logged out (auth/status says so, protected calls answer 401)
    reject_orders       orders answer {"error": <message>} and nothing is placed
    reply_timeout       /iserver/reply/{id} sleeps ``delay_s`` before answering (the client times out)
    error_after_accept  the order IS placed, then the call answers 500 (``times``: how many submissions)
    hang_after_accept   the order IS placed, then the call hangs ``delay_s`` (a worker dies meanwhile)
    delay_fills         market parents stay PreSubmitted until read ``reads`` times (None: until fill_pending())
    rate_limited        ``times`` calls (whose path contains ``path``) answer 429 "Too many requests"
    unavailable         ``times`` calls answer 503 "Service Unavailable"
    competing           auth/status says ``competing: true`` (another session holds the login)
    cached_positions    positions answer the backend's cache, as IBKR's do: what was held when the fault
                        was set or at the last ``POST /portfolio/{acct}/positions/invalidate`` (fills since: unseen)

Python API::

    with IBKRGateway(bars={"AAPL": frame}) as gw:     # frame: date, open, high, low, close[, volume]
        gw.url                                        # http://127.0.0.1:<port>/v1/api  (IBKR_API_URL)
        gw.set_fault("error_after_accept", times=1)
        gw.orders(), gw.positions(), gw.requests, gw.confirmed, gw.whatifs
        gw.move_price("AAPL", 140.0), gw.fill_pending(), gw.seed_positions({"XOM": (100, 60.0)})

Standalone: ``python -m tests.support.ibkr_gateway --csv <dj30.csv> --symbols AAPL,MSFT``
(first stdout line: the base URL).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

from .httpserver import BackgroundHTTPServer, Reply, Request
from .ibkr_paper import BASE_PATH, CATALOG, FAULTS, PAGE_SIZE, PAPER_ACCOUNT, QUESTIONS, PaperGateway

__all__ = ["BASE_PATH", "CATALOG", "FAULTS", "PAGE_SIZE", "PAPER_ACCOUNT", "QUESTIONS", "IBKRGateway"]


class IBKRGateway(BackgroundHTTPServer):
    """The Client Portal gateway on a real loopback socket; context manager; thread-safe.

    ``stop()``: the gateway is down, connections are refused until ``start()`` (same port, same state)."""

    name = "ibkr-gateway"

    def __init__(self, *, bars: Mapping[str, Any], accounts: list[str] | None = None, cash: float = 1_000_000.0,
                 questions: int | list[tuple[str, str]] = 1, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._gateway = PaperGateway(accounts=accounts or [PAPER_ACCOUNT], cash=cash, bars=bars, questions=questions)

    @property
    def url(self) -> str:
        """The base URL as ``IBKR_API_URL`` wants it (``.../v1/api``, no trailing slash)."""
        return f"http://{self.host}:{self.port}{BASE_PATH}"

    def handle(self, request: Request) -> Reply:
        answer = self._handle(request)
        answer.content_type = "application/json;charset=utf-8"
        return answer

    def _handle(self, request: Request) -> Reply:
        try:
            body: Any = request.json()
        except ValueError:
            return Reply(400, {"error": "body is not JSON"})
        path = request.path
        if path == "/__control__":
            return self._control(body or {})
        gw = self._gateway
        with gw.lock:
            if path.endswith("/iserver/reply/" + path.rsplit("/", 1)[-1]) and "reply_timeout" in gw.faults:
                delay = float(gw.faults["reply_timeout"].get("delay_s", 30.0))
            else:
                delay = 0.0
        if delay:
            time.sleep(delay)
        with gw.lock:
            answer = gw.route(request.method, path, request.query, body)
            gw.requests.append({"method": request.method, "path": path, "query": request.query, "body": body,
                                "status": answer.status, "ts": time.time()})
        if answer.status == -1:  # hang_after_accept: the order is placed; the caller never hears back
            time.sleep(float(answer.body))
            answer = Reply(500, {"error": "Internal Server Error"})
        return answer

    def set_fault(self, name: str | None, **options: Any) -> None:
        """Add a fault (see the module docstring); ``None`` clears all of them."""
        with self._gateway.lock:
            if name is None:
                self._gateway.faults.clear()
                self._gateway.authenticated = True
                return
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; one of {', '.join(FAULTS)}")
            if name == "unauthenticated":
                self._gateway.authenticated = False
            if name == "cached_positions":  # the positions as they are now, until the next invalidate
                options = {**options, "snapshot": {s: dict(p) for s, p in self._gateway.positions.items()}}
            self._gateway.faults[name] = dict(options)

    def _control(self, body: Mapping[str, Any]) -> Reply:
        try:
            if "fault" in body:
                self.set_fault(body["fault"], **{k: v for k, v in body.items() if k != "fault"})
            return Reply(200, {"faults": self._gateway.faults, "orders": self.orders()})
        except ValueError as exc:
            return Reply(400, {"error": str(exc)})

    def orders(self) -> list[dict[str, Any]]:
        with self._gateway.lock:
            return [dict(o) for o in self._gateway.orders]

    def positions(self) -> dict[str, float]:
        with self._gateway.lock:
            return {s: p["qty"] for s, p in self._gateway.positions.items() if p["qty"]}

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._gateway.lock:
            return list(self._gateway.requests)

    def conid(self, symbol: str) -> int:
        return self._gateway.conids[symbol.upper()]

    def fill_pending(self) -> None:
        """Fill the market orders that ``delay_fills`` keeps PreSubmitted."""
        with self._gateway.lock:
            self._gateway.fill_pending()

    def move_price(self, symbol: str, price: float) -> None:
        """The next bar: working stops / take-profits the price crosses fill (OCA siblings cancel)."""
        with self._gateway.lock:
            self._gateway.move_price(symbol.upper(), price)

    def seed_positions(self, rows: Mapping[str, tuple[float, float]]) -> None:
        with self._gateway.lock:
            self._gateway.seed_positions(rows)

    @property
    def confirmed(self) -> list[str]:
        """The question ids answered yes."""
        with self._gateway.lock:
            return list(self._gateway.confirmed)

    @property
    def whatifs(self) -> list[dict[str, Any]]:
        with self._gateway.lock:
            return list(self._gateway.whatifs)


def _main() -> None:  # pragma: no cover - exercised by the standalone bench/docs only
    from .data import trademaster_bars

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True)
    parser.add_argument("--symbols", default="AAPL")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    bars = {s: trademaster_bars(args.csv, s) for s in args.symbols.split(",")}
    gateway = IBKRGateway(bars=bars, port=args.port).start()
    print(gateway.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    gateway.stop()


if __name__ == "__main__":  # pragma: no cover
    _main()
