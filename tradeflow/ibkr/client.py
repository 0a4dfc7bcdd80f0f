"""The IBKR Client Portal Web API client: auth, contracts, history, portfolio and paper orders.

Why not ``ibind`` (checked: 0.2.2 installs with our pins): its ``RestClient`` retries *every*
method on a read timeout, so an order POST whose answer is slow would be sent again, which is
exactly how a retry places an order twice. Orders here are sent once per attempt; an attempt whose
outcome is unknown (timeout, dropped connection, 5xx) looks the order up by its client order id
(``cOID``) instead of resending it, and so does every retried Airflow task before it places.

Safety:
- **confirmation questions by allow-list**: only the message ids the strategy accepts
  (``broker.accept_questions``) are answered yes; any other question, and a question that says the
  order goes to a LIVE account when live trading is not enabled, is answered no: the order is refused
  (``QuestionRefused``) with the question's text;
- **one session classification** (``tradeflow.ibkr.errors.session_state``): 429 is ``RateLimited``
  (never a rejection), 503 and connection errors ``GatewayDown``, 401 ``NotAuthenticated``, a
  competing login ``CompetingSession``; ``reauthenticate`` asks the gateway to restore a session;
  a session in use is tickled every ``tickle_s`` seconds (keepalive while a run trades);
- **paper only by default**: an account that is not a paper account (``DU...``/``DF...``) is refused
  unless the strategy sets ``broker.allow_live`` AND the environment sets ``IBKR_ALLOW_LIVE=true``;
- ``dry_run`` records the order it would place and sends nothing;
- the session cookie / headers are never logged (only method, path and status).

Around it: the errors in ``tradeflow.ibkr.errors``, the settings from the environment in
``tradeflow.ibkr.gateway_settings``, order tickets, results and ``cOID`` in ``tradeflow.ibkr.orders``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import requests

from tradeflow.http.client import HttpClient, HttpError, Limits, Reply, RetryPolicy
from tradeflow.ibkr.errors import (
    BrokerError,
    CancelNotConfirmed,
    CompetingSession,
    GatewayDown,
    LiveTradingRefused,
    NotAuthenticated,
    OrderRejected,
    OutcomeUnknown,
    QuestionRefused,
    RateLimited,
)
from tradeflow.ibkr.gateway_settings import ENV_ACCOUNT, ENV_ALLOW_LIVE, ENV_VERIFY, GatewaySettings, is_paper_account
from tradeflow.ibkr.orders import TERMINAL_STATUSES, OrderResult, OrderTicket

log = logging.getLogger(__name__)

#: Reads retry under the project policy (``tradeflow.http.client``); orders and replies are sent once.
RETRY = RetryPolicy(attempts=3, backoff_s=0.5)
_DUPLICATE_RE = re.compile(r"Local order ID=(\S+?) is already registered", re.I)
#: IBKR: "The endpoint supports paging, page's default size is 30 positions."
POSITIONS_PAGE_SIZE = 30
MAX_POSITION_PAGES = 200
#: Questions that say the order goes to a live account (refused unless live trading is enabled).
_LIVE_QUESTION_RE = re.compile(r"\bLIVE\b.*\baccount\b", re.I)
#: The keepalive: a session idle for longer than this is tickled before the next call.
TICKLE_S = 60.0


class ClientPortal:
    """One gateway session. Every HTTP call goes through ``_request`` (the one place for the
    transport and its retry policy: reads retry on connection errors and 5xx; order placement
    and replies never retry; their unknown outcomes are resolved by looking the ``cOID`` up)."""

    def __init__(self, settings: GatewaySettings, *, session: requests.Session | None = None) -> None:
        self.settings = settings
        self._http = HttpClient(policy=RETRY, session=session, verify=settings.verify_tls,
                                limits=Limits(read_s=settings.timeout_s, deadline_s=max(30.0, 2 * settings.timeout_s)),
                                headers={"User-Agent": "tradeflow-ibkr", "Accept": "application/json"})
        self._iserver_accounts: list[str] | None = None
        self._portfolio_accounts: list[dict[str, Any]] | None = None
        # None: this client has not called yet, so its first call tickles too: each task opens its own
        # client, and the step before it (a slow review, the lock wait) may have left the session idle
        self._last_call: float | None = None
        self._live_warned = False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ClientPortal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 body: Any = None, retry: bool = True) -> Any:
        """One call through the project's HTTP layer (``tradeflow.http.client``: its retry policy, total
        deadline and size cap). ``retry=False`` (orders, replies) sends once: an answer that may
        have been applied becomes ``OutcomeUnknown`` for the caller to resolve by ``cOID``."""
        url = f"{self.settings.base_url}{path}"
        if path != "/tickle" and (self._last_call is None or time.monotonic() - self._last_call > TICKLE_S):
            self._last_call = time.monotonic()
            self.tickle()  # keepalive: IBKR drops a session idle ~5 minutes (a long fill wait, a slow run)
        self._last_call = time.monotonic()
        try:
            reply = self._http.send(method, url, params=params, json_body=body,
                                    attempts=None if retry else 1, label=f"{method} {path}")
        except HttpError as exc:
            if exc.kind == "TLS check failed":
                raise BrokerError(f"{method} {path}: TLS check failed for {self.settings.base_url} (the gateway's "
                                  f"certificate is self-signed: set {ENV_VERIFY}=false)") from None
            if exc.status == 429:
                raise RateLimited(f"{method} {path}: the gateway is rate limiting (429 Too many requests, "
                                  f"{exc.tries} attempts); nothing was placed, slow down and retry") from None
            if exc.status == 503:
                raise GatewayDown(f"{method} {path}: the IBKR gateway answers 503 Service Unavailable "
                                  f"({exc.tries} attempts); its backend is not ready") from None
            if not retry and exc.maybe_applied:
                raise OutcomeUnknown(f"{method} {path}: no usable answer from the gateway ({exc}); "
                                     "the request may have reached the broker") from None
            if exc.status is not None:
                raise BrokerError(f"{method} {path}: {exc} ({exc.tries} attempts)") from None
            raise GatewayDown(f"{method} {path}: the IBKR gateway at {self.settings.base_url} cannot be "
                              f"reached ({exc}, {exc.tries} attempts); is it running?") from None
        log.debug("%s %s -> %s", method, path, reply.status)
        if reply.status == 401:
            raise NotAuthenticated(f"{method} {path}: the gateway is not authenticated (401); log in at the "
                                   "gateway's page, then /iserver/auth/status must say authenticated")
        if reply.status == 429:
            raise RateLimited(f"{method} {path}: the gateway is rate limiting (429 Too many requests); "
                              "nothing was placed, slow down and retry")
        if reply.status == 503:
            raise GatewayDown(f"{method} {path}: the IBKR gateway answers 503 Service Unavailable; its backend "
                              "is not ready")
        if reply.status >= 500:
            problem = f"HTTP {reply.status}: {_detail(reply)}"
            if not retry:
                raise OutcomeUnknown(f"{method} {path}: {problem}; the request may have reached the broker")
            raise BrokerError(f"{method} {path}: {problem}")
        return _decode(reply, method, path)

    # -- session ----------------------------------------------------------------------------------

    def auth_status(self) -> dict[str, Any]:
        body = self._request("POST", "/iserver/auth/status")
        return body if isinstance(body, dict) else {}

    def tickle(self) -> dict[str, Any]:
        """Keep the session alive (IBKR drops it after ~5 idle minutes)."""
        body = self._request("POST", "/tickle")
        return body if isinstance(body, dict) else {}

    def ensure_authenticated(self, *, reauthenticate: bool = False) -> dict[str, Any]:
        """The session's status, or the classified error (``tradeflow.ibkr.errors``). With
        ``reauthenticate``, a logged-out brokerage session is asked back once
        (``/iserver/reauthenticate``) and checked again."""
        self.tickle()
        status = self.auth_status()
        if status.get("competing"):
            raise CompetingSession("another session (TWS or a second gateway) competes for this login: close it "
                                   "or log in again at the gateway")
        if not status.get("authenticated") and reauthenticate:
            log.warning("IBKR brokerage session not authenticated (%s): asking the gateway to reauthenticate",
                        status.get("fail") or status.get("message") or "no reason given")
            self.reauthenticate()
            status = self.auth_status()
        if not status.get("authenticated"):
            reason = status.get("fail") or status.get("message") or "no reason given"
            raise NotAuthenticated(f"the IBKR gateway's brokerage session is not authenticated ({reason}); "
                                   "log in at the gateway")
        return status

    def reauthenticate(self) -> dict[str, Any]:
        """Ask the gateway to restore the brokerage session (it answers at once; the session follows)."""
        body = self._request("POST", "/iserver/reauthenticate")
        return body if isinstance(body, dict) else {}

    # -- contracts and data -----------------------------------------------------------------------

    def search(self, symbol: str) -> int:
        """The stock's contract id (``conid``; the search answers it as a string)."""
        body = self._request("GET", "/iserver/secdef/search", params={"symbol": symbol})
        if isinstance(body, dict) and "error" in body:
            raise BrokerError(f"{symbol}: IBKR contract search: {body['error']}")
        rows = [r for r in body if isinstance(r, dict)] if isinstance(body, list) else []
        stocks = [r for r in rows if any(s.get("secType") == "STK" for s in r.get("sections") or [])] or rows
        if not stocks:
            raise BrokerError(f"{symbol}: IBKR has no contract for this symbol")
        try:
            return int(stocks[0]["conid"])
        except (KeyError, TypeError, ValueError):
            raise BrokerError(f"{symbol}: the contract search answered no usable conid") from None

    def history(self, conid: int, *, period: str, bar: str = "1d") -> list[dict[str, Any]]:
        body = self._request("GET", "/iserver/marketdata/history",
                             params={"conid": str(conid), "period": period, "bar": bar})
        if isinstance(body, dict) and "error" in body:
            raise BrokerError(f"conid {conid}: IBKR history: {body['error']}")
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise BrokerError(f"conid {conid}: IBKR history answered no data list")
        return body["data"]

    def schedule(self, symbol: str) -> list[dict[str, Any]]:
        body = self._request("GET", "/trsrv/secdef/schedule", params={"assetClass": "STK", "symbol": symbol})
        if isinstance(body, dict) and "error" in body:
            raise BrokerError(f"{symbol}: IBKR trading schedule: {body['error']}")
        return body if isinstance(body, list) else []

    # -- accounts and portfolio -------------------------------------------------------------------

    def trading_account(self) -> str:
        """The account orders go to, checked for paper. ``/iserver/accounts`` must precede orders."""
        if self._iserver_accounts is None:
            body = self._request("GET", "/iserver/accounts")
            self._iserver_accounts = list(body.get("accounts") or []) if isinstance(body, dict) else []
        accounts = self._iserver_accounts
        account = self.settings.account_id or (accounts[0] if accounts else None)
        if not account:
            raise BrokerError("the gateway lists no trading account")
        if account not in accounts:
            raise BrokerError(f"account {account} ({ENV_ACCOUNT}) is not one of the gateway's accounts")
        if not is_paper_account(account) and not self.settings.live_allowed:
            raise LiveTradingRefused(
                f"account {account} is a LIVE account; orders are paper-only unless the strategy sets "
                f"broker.allow_live: true AND the environment sets {ENV_ALLOW_LIVE}=true")
        if not is_paper_account(account) and not self._live_warned:
            self._live_warned = True
            log.warning("!!! LIVE ACCOUNT %s: orders placed by this session are REAL and use real money "
                        "(broker.allow_live and %s are both set) !!!", account, ENV_ALLOW_LIVE)
        return account

    def is_live(self) -> bool:
        return not is_paper_account(self.trading_account())

    def _portfolio_ready(self) -> None:
        if self._portfolio_accounts is None:  # /portfolio/accounts must precede other /portfolio calls
            body = self._request("GET", "/portfolio/accounts")
            self._portfolio_accounts = body if isinstance(body, list) else []

    def positions(self, account_id: str, *, fresh: bool = True) -> list[dict[str, Any]]:
        """Every page of the account's positions. ``fresh`` first invalidates the gateway's positions
        cache (``POST /portfolio/{acct}/positions/invalidate``): IBKR answers positions from a
        backend cache that a fill a moment ago may not have reached, and the caps must count it."""
        self._portfolio_ready()
        if fresh:
            body = self._request("POST", f"/portfolio/{account_id}/positions/invalidate")
            if isinstance(body, dict) and body.get("error"):
                raise BrokerError(f"positions of {account_id}: invalidating the cache: {body['error']}")
        rows: list[dict[str, Any]] = []
        for page in range(MAX_POSITION_PAGES):  # 30 per page (IBKR); a short or empty page is the last
            body = self._request("GET", f"/portfolio/{account_id}/positions/{page}")
            if isinstance(body, dict) and "error" in body:
                raise BrokerError(f"positions of {account_id}: {body['error']}")
            if not isinstance(body, list) or not body:
                break
            rows += body
            if len(body) < POSITIONS_PAGE_SIZE:
                break
        else:
            raise BrokerError(f"positions of {account_id}: more than {MAX_POSITION_PAGES} pages")
        return rows

    def summary(self, account_id: str) -> dict[str, float]:
        """Account values in the account currency: ``{"netliquidation": 1e6, ...}``."""
        self._portfolio_ready()
        body = self._request("GET", f"/portfolio/{account_id}/summary")
        if not isinstance(body, dict) or "error" in body:
            raise BrokerError(f"summary of {account_id}: {body.get('error') if isinstance(body, dict) else body!r}")
        out = {}
        for key, value in body.items():
            if isinstance(value, dict) and isinstance(value.get("amount"), (int, float)) and not value.get("isNull"):
                out[key] = float(value["amount"])
        if "netliquidation" not in out:
            raise BrokerError(f"summary of {account_id} has no netliquidation")
        return out

    # -- orders -----------------------------------------------------------------------------------

    def live_orders(self) -> list[dict[str, Any]]:
        """The session's orders. The first call after login only starts the subscription and
        answers ``snapshot: false`` with an empty list: ask again until the snapshot is real."""
        self.trading_account()
        for attempt in range(4):
            body = self._request("GET", "/iserver/account/orders")
            if isinstance(body, dict) and body.get("snapshot", True) is not False:
                return [o for o in body.get("orders") or [] if isinstance(o, dict)]
            time.sleep(0.2 * (attempt + 1))
        raise BrokerError("/iserver/account/orders never answered a snapshot (4 tries)")

    def find_order(self, coid: str) -> dict[str, Any] | None:
        return next((o for o in self.live_orders() if o.get("order_ref") == coid), None)

    def order_status(self, order_id: str | int) -> dict[str, Any]:
        body = self._request("GET", f"/iserver/account/order/status/{order_id}")
        if not isinstance(body, dict) or "error" in body:
            raise BrokerError(f"order {order_id}: status: {body.get('error') if isinstance(body, dict) else body!r}")
        return body

    def follow_order(self, order_id: str | int, *, timeout_s: float, poll_s: float) -> dict[str, Any]:
        """Poll the order's status until Filled/Cancelled/Rejected/Inactive or ``timeout_s`` (bounded,
        by ``tenacity``); returns the last status (``order_status`` may still be working)."""
        from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

        @retry(stop=stop_after_delay(timeout_s), wait=wait_fixed(poll_s),
               retry=retry_if_result(lambda body: str(body.get("order_status")) not in TERMINAL_STATUSES))
        def poll() -> dict[str, Any]:
            return self.order_status(order_id)

        try:
            return poll()
        except RetryError as exc:
            return exc.last_attempt.result()

    def cancel_order(self, order_id: str | int, *, timeout_s: float = 10.0, poll_s: float = 0.2) -> dict[str, Any]:
        """Cancel a working order and verify it (its status turns Cancelled); a fill that beat the
        cancel is reported as such. ``CancelNotConfirmed`` when neither is seen in ``timeout_s``."""
        account = self.trading_account()
        body = self._request("DELETE", f"/iserver/account/{account}/order/{order_id}", retry=False)
        status = self.follow_order(order_id, timeout_s=timeout_s, poll_s=poll_s)
        if status.get("order_status") not in ("Cancelled", "ApiCancelled", "Filled"):
            detail = body.get("error") if isinstance(body, dict) else body
            raise CancelNotConfirmed(f"order {order_id}: cancel sent ({detail or 'submitted'}) but its status is "
                                     f"{status.get('order_status')!r} after {timeout_s:g} s")
        return status

    def whatif(self, ticket: OrderTicket) -> dict[str, Any]:
        """IBKR's preview of the entry (``orders/whatif``): cost, commission, equity and margin after;
        nothing is placed. ``OrderRejected`` when the preview names an error."""
        account = self.trading_account()
        request = ticket.payload(account)
        body = self._request("POST", f"/iserver/account/{account}/orders/whatif",
                             body={"orders": request["orders"][:1]})
        error = _error(body) if not isinstance(body, dict) or "amount" not in body else body.get("error")
        if error:
            raise OrderRejected(f"{ticket.symbol} {ticket.side} {ticket.quantity}: the what-if preview refuses: {error}")
        return body if isinstance(body, dict) else {}

    def place_order(self, ticket: OrderTicket, *, dry_run: bool = False, reply_rounds: int = 5,
                    accept_questions: frozenset[str] | None = None) -> OrderResult:
        """Place ``ticket`` at most once: look its ``cOID`` up first; answer the confirmation
        questions (``/iserver/reply/{id}``) whose ids are in ``accept_questions`` (None: the
        default allow-list, ``DEFAULT_ACCEPTED_QUESTIONS``), decline any other and refuse the
        order; resolve an unknown outcome by looking it up again."""
        accepted = DEFAULT_ACCEPTED_QUESTIONS if accept_questions is None else accept_questions
        account = self.trading_account()
        request = ticket.payload(account)
        if dry_run:
            log.info("dry run: would place %s", request)
            return OrderResult(ticket.coid, "dry_run", None, account, dry_run=True, request=request)
        existing = self.find_order(ticket.coid)
        if existing is not None:
            log.info("order %s already placed (order id %s, %s): not placing it again", ticket.coid,
                     existing.get("orderId"), existing.get("status"))
            return _result(ticket, account, existing, request, already=True)
        replies: list[str] = []
        asked: list[dict[str, Any]] = []
        try:
            body = self._request("POST", f"/iserver/account/{account}/orders", body=request, retry=False)
            for _ in range(reply_rounds):
                question = _question(body)
                if question is None:
                    break
                ids = [str(i) for i in question.get("messageIds") or []]
                text = " ".join(str(m) for m in question.get("message") or [])
                refusal = self._refuse_question(ids, text, accepted)
                asked.append({"ids": ids, "text": text[:1000], "accepted": refusal is None})
                if refusal:
                    log.warning("declining %s: %s", ticket.coid, refusal)
                    try:
                        self._request("POST", f"/iserver/reply/{question['id']}", body={"confirmed": False}, retry=False)
                    except BrokerError as exc:  # declining is best effort: an unanswered question expires
                        log.warning("could not decline question %s: %s", question["id"], exc)
                    raise QuestionRefused(f"{ticket.symbol} {ticket.side} {ticket.quantity} ({ticket.coid}) refused: "
                                          f"{refusal}")
                replies += ids
                log.info("confirming %s (%s, allow-listed): %s", ticket.coid, ",".join(ids), text[:200])
                body = self._request("POST", f"/iserver/reply/{question['id']}", body={"confirmed": True}, retry=False)
            else:
                if _question(body) is not None:
                    raise OrderRejected(f"{ticket.coid}: still asked to confirm after {reply_rounds} replies; not placed")
        except OutcomeUnknown as exc:
            log.warning("%s; looking order %s up by its cOID", exc, ticket.coid)
            found = self._find_after_unknown(ticket.coid)
            if found is None:
                raise OutcomeUnknown(f"{ticket.coid}: {exc} and the order is not among the live orders; "
                                     "the task may be retried safely") from None
            return _result(ticket, account, found, request, already=False, replies=replies, questions=asked)
        error = _error(body)
        if error:
            duplicate = _DUPLICATE_RE.search(error)
            if duplicate:  # placed by a concurrent or earlier attempt
                found = self._find_after_unknown(ticket.coid)
                if found is not None:
                    return _result(ticket, account, found, request, already=True, replies=replies)
            raise OrderRejected(f"{ticket.symbol} {ticket.side} {ticket.quantity} ({ticket.coid}) rejected: {error}")
        found = self._find_after_unknown(ticket.coid)
        if found is None:
            placed = body[0] if isinstance(body, list) and body and isinstance(body[0], dict) else {}
            return OrderResult(ticket.coid, str(placed.get("order_status", "Submitted")), str(placed.get("order_id")),
                               account, replies=replies, questions=asked, request=request)
        return _result(ticket, account, found, request, already=False, replies=replies, questions=asked)

    def _refuse_question(self, ids: list[str], text: str, accepted: frozenset[str]) -> str | None:
        """Why this question is declined (None: it is answered yes)."""
        if _LIVE_QUESTION_RE.search(text) and not self.settings.live_allowed:
            return f"IBKR asks about a LIVE account ({', '.join(ids) or 'no id'}: {text[:300]}) and live trading is off"
        unknown = [i for i in ids if i not in accepted]
        if not ids or unknown:
            return (f"confirmation question {', '.join(unknown) or '(no id)'} is not in broker.accept_questions "
                    f"({', '.join(sorted(accepted)) or 'none'}): {text[:300]}")
        return None

    def _find_after_unknown(self, coid: str) -> dict[str, Any] | None:
        try:
            return self.find_order(coid)
        except (GatewayDown, BrokerError) as exc:
            log.warning("could not look order %s up: %s", coid, exc)
            return None


#: The questions answered yes unless the strategy lists its own (``broker.accept_questions``):
#: o354 "without market data" (paper accounts often have none) and o10331 "you are about to submit a
#: stop order" (the bracket's protective stop). Value/size warnings (o451, o383) are never accepted.
DEFAULT_ACCEPTED_QUESTIONS = frozenset({"o354", "o10331"})


def _result(ticket: OrderTicket, account: str, row: Mapping[str, Any], request: dict[str, Any], *,
            already: bool, replies: list[str] | None = None, questions: list[dict[str, Any]] | None = None) -> OrderResult:
    avg = row.get("avgPrice")
    return OrderResult(ticket.coid, str(row.get("status")), str(row.get("orderId")), account, already_placed=already,
                       replies=list(replies or []), questions=list(questions or []),
                       filled_quantity=float(row.get("filledQuantity") or 0.0),
                       avg_price=float(avg) if isinstance(avg, (int, float, str)) and str(avg) else None,
                       request=request)


def _question(body: Any) -> dict[str, Any] | None:
    if isinstance(body, list) and body and isinstance(body[0], dict) and "id" in body[0] and "message" in body[0]:
        return body[0]
    return None


def _error(body: Any) -> str | None:
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    if isinstance(body, list) and body and isinstance(body[0], dict) and body[0].get("error"):
        return str(body[0]["error"])
    return None


def _decode(response: Reply, method: str, path: str) -> Any:
    try:
        body = response.json()
    except ValueError:
        raise BrokerError(f"{method} {path}: HTTP {response.status}, not JSON") from None
    if response.status >= 400:
        detail = body.get("error") if isinstance(body, dict) else body
        if isinstance(body, dict) and "error" in body:
            return body  # the caller turns {"error": ...} into its own message
        raise BrokerError(f"{method} {path}: HTTP {response.status}: {detail}")
    return body


def _detail(response: Reply) -> str:
    try:
        body = response.json()
        text = body.get("error", body) if isinstance(body, dict) else body
    except ValueError:
        text = response.text
    return " ".join(str(text).split())[:200] or "(empty body)"
