"""``data_source=ibkr``: daily bars straight from the IBKR Client Portal REST gateway.

``IBKR_API_URL`` (e.g. ``https://localhost:5000/v1/api``) points at a logged-in gateway;
``IBKR_VERIFY_TLS=false`` accepts its self-signed certificate (default: verify). The contract
id is the first result of ``/iserver/secdef/search``; history comes from
``/iserver/marketdata/history`` with a period in whole years covering the lookback.
"""

from __future__ import annotations

import dataclasses
import math
import os
from datetime import date

import requests

from tradeflow.config import RunConfig
from tradeflow.errors import ConfigError
from tradeflow.data.base import DataError, MarketData, finalise
from tradeflow.http.client import HttpClient, HttpError, Limits, RetryPolicy, deadline_from_env
from tradeflow.data.ibkr_bars import ADJCP_NOTE, parse_ibkr_bars
from tradeflow.settings import parse_bool

ENV_URL = "IBKR_API_URL"
ENV_VERIFY = "IBKR_VERIFY_TLS"


def ibkr_settings(symbol: str) -> tuple[str, bool]:
    """(base URL, verify TLS) from the environment; DataError when unset or unreadable."""
    base = os.environ.get(ENV_URL, "").strip().rstrip("/")
    if not base:
        raise DataError(f"{symbol}: data_source=ibkr needs {ENV_URL} (e.g. https://localhost:5000/v1/api); "
                        "set it, or use data_source=backend, csv:<path> or synthetic")
    raw = os.environ.get(ENV_VERIFY, "true").strip().lower()
    try:
        return base, parse_bool(raw, ENV_VERIFY, blank=None)
    except ConfigError:
        raise DataError(f"{symbol}: {ENV_VERIFY}={raw!r} is not a boolean (use true or false)") from None


#: IBKR's gateway: 3 tries, short backoff; answers are small, so the cap is tight.
POLICY = RetryPolicy(attempts=3, backoff_s=0.5)
LIMITS = Limits(connect_s=3.05, read_s=10.0, deadline_s=30.0, max_bytes=16 * 1024 * 1024)


class NotFound(DataError):
    """The gateway answered 404; the caller turns it into its own message."""


def get_json(url: str, *, params: dict[str, str] | None = None, session: requests.Session | None = None,
             verify: bool = True, what: str) -> object:
    """GET ``url`` through the project's HTTP layer and decode JSON. ``what`` names the request in
    errors ("AAPL IBKR history"). Raises ``NotFound`` on 404 and ``DataError`` on any other failure;
    only method, URL and status are logged (session cookies never)."""
    limits = dataclasses.replace(LIMITS, deadline_s=deadline_from_env(LIMITS.deadline_s))
    http = HttpClient(policy=POLICY, limits=limits, session=session, verify=verify)
    try:
        reply = http.send("GET", url, params=params, label=f"GET {url}")
    except HttpError as exc:
        if exc.kind == "TLS check failed":
            raise DataError(f"{what}: TLS certificate check failed for {url} (for the IBKR gateway's "
                            "self-signed certificate set IBKR_VERIFY_TLS=false)") from None
        raise DataError(f"{what}: {url} {exc.kind} after {exc.tries} tries: {exc.reason}") from None
    finally:
        if session is None:
            http.close()
    if reply.status == 404:
        raise NotFound(f"{what}: 404 from {url}")
    if reply.status >= 300:
        raise DataError(f"{what}: HTTP {reply.status} from {url}: {reply.detail()}")
    try:
        return reply.json()
    except RecursionError:
        raise DataError(f"{what}: {url} answered JSON nested too deep to decode") from None
    except ValueError:
        raise DataError(f"{what}: {url} did not answer JSON (content-type "
                        f"{reply.headers.get('content-type', 'unknown')})") from None


def history_period(cfg: RunConfig, today: date) -> str:
    """Whole years from the start of the lookback window (before ``end_date``) up to ``today``."""
    end = cfg.end_date or today
    span = cfg.backtest_lookback_days + max((today - end).days, 0)
    return f"{max(1, math.ceil(span / 365))}y"


def load_ibkr(
    cfg: RunConfig, *, session: requests.Session | None = None, today: date | None = None
) -> MarketData:
    """Look up ``cfg.symbol``'s contract id, then load its daily history."""
    symbol = cfg.symbol
    base, verify = ibkr_settings(symbol)
    search_url = f"{base}/iserver/secdef/search"
    try:
        found = get_json(search_url, params={"symbol": symbol}, session=session, verify=verify,
                         what=f"{symbol} IBKR contract search")
    except NotFound:
        found = []
    if isinstance(found, dict) and "error" in found:
        raise DataError(f"{symbol}: IBKR contract search failed at {search_url}: {found['error']}")
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        raise DataError(f"{symbol}: IBKR has no contract for symbol {symbol} ({search_url})")
    try:
        conid = int(found[0]["conid"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{symbol}: IBKR search result has no usable conid ({search_url})") from None
    period = history_period(cfg, today or date.today())
    history_url = f"{base}/iserver/marketdata/history"
    params = {"conid": str(conid), "period": period, "bar": "1d"}
    source = f"ibkr:{history_url}?conid={conid}&period={period}&bar=1d"
    try:
        body = get_json(history_url, params=params, session=session, verify=verify,
                        what=f"{symbol} IBKR history")
    except NotFound:
        raise DataError(f"{symbol}: IBKR has no daily history for conid {conid} ({history_url})") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise DataError(f"{symbol} from {source}: expected {{\"data\": [bars]}}, got {type(body).__name__}")
    bars, has_volume = parse_ibkr_bars(body["data"], where=f"{symbol} from {source}")
    if bars.empty:
        raise DataError(f"{symbol} from {source}: IBKR returned no bars")
    notes = [f"ibkr: conid {conid}", ADJCP_NOTE]
    if not has_volume:
        notes.append("source has no volume; volume left empty")
    return finalise(bars, cfg, source=source, notes=notes)
