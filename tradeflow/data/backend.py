"""``data_source=backend``: daily bars the trading WebUI backend already caches.

``GET {BACKEND_API_URL}/api/market-data/cache/{symbol}?data_type=daily`` answers
``{"symbol", "count", "data": [entry, ...]}``, newest entry first, expired entries included. Every
entry holds IBKR bars in ``ohlcv_data.data``. Entries are merged bar date by bar date, the newest
entry winning (a later fetch may correct a bar); expired entries still count, since old daily
bars do not go stale, and the notes say how many were used.
"""

from __future__ import annotations

from urllib.parse import quote

import pandas as pd
import requests

from tradeflow.config import RunConfig
from tradeflow.data.base import DataError, MarketData, finalise
from tradeflow.data.ibkr_bars import ADJCP_NOTE, parse_ibkr_bars

ENV_URL = "BACKEND_API_URL"


def load_backend(cfg: RunConfig, *, session: requests.Session | None = None) -> MarketData:
    """Load ``cfg.symbol`` from the backend's market-data cache (case must match exactly).

    Goes through ``tradeflow.webui.WebUIClient``: one place for the backend's timeouts, retries
    and bearer token (``BACKEND_API_TOKEN``). ``session`` is unused (kept for the common signature).
    """
    from tradeflow.webui import WebUIClient, WebUIError, WebUINotFoundError

    symbol = cfg.symbol
    client = WebUIClient.from_env()
    if client is None:
        raise DataError(f"{symbol}: data_source=backend needs {ENV_URL} (the WebUI backend, e.g. "
                        "http://localhost:8000); set it, or use data_source=csv:<path> or synthetic")
    url = f"{client.base_url}/api/market-data/cache/{quote(symbol, safe='')}"
    source = f"backend:{url}"
    try:
        with client:
            body = client.get_market_data_cache(symbol)
    except WebUINotFoundError:
        raise DataError(f"no cached market data for symbol {symbol} at the backend ({url})") from None
    except WebUIError as exc:
        raise DataError(f"{symbol} from {source}: {exc}") from None
    if body.get("symbol") not in (None, symbol):
        raise DataError(f"{symbol} from {source}: the backend answered for symbol {body.get('symbol')!r}")
    entries = body["data"]
    if not entries:
        raise DataError(f"no cached market data for symbol {symbol} at the backend ({url}): no entries")
    bars, notes = merge_entries(entries, where=f"{symbol} from {source}")
    return finalise(bars, cfg, source=source, notes=notes)


def merge_entries(entries: list[object], *, where: str) -> tuple[pd.DataFrame, list[str]]:
    """Merge cache entries (newest first) into one bar series, newest entry winning per date."""
    frames: list[pd.DataFrame] = []
    expired = 0
    any_volume = False
    for rank, entry in enumerate(entries):
        ohlcv = entry.get("ohlcv_data") if isinstance(entry, dict) else None
        records = ohlcv.get("data") if isinstance(ohlcv, dict) else None
        if not isinstance(records, list):
            raise DataError(f"{where}: cache entry {rank} has no ohlcv_data.data list")
        bars, has_volume = parse_ibkr_bars(records, where=f"{where}, cache entry {rank}")
        if bars["date"].duplicated().any():
            day = bars["date"][bars["date"].duplicated()].iloc[0]
            raise DataError(f"{where}: cache entry {rank} repeats bar date {day:%Y-%m-%d}")
        if not bars["date"].is_monotonic_increasing:
            raise DataError(f"{where}: cache entry {rank} bars are not in ascending date order")
        any_volume |= has_volume
        expired += bool(entry.get("is_expired"))
        frames.append(bars.assign(_rank=rank))
    stacked = pd.concat(frames, ignore_index=True)
    # Ordering by date here merges the entries; within an entry the order was checked above.
    stacked = stacked.sort_values(["date", "_rank"], kind="stable")
    merged = stacked.drop_duplicates("date", keep="first").drop(columns="_rank").reset_index(drop=True)
    replaced = len(stacked) - len(merged)
    notes = [f"backend: merged {len(entries)} cache entries ({expired} expired); "
             f"{replaced} overlapping bars taken from the newer entry", ADJCP_NOTE]
    if not any_volume:
        notes.append("source has no volume; volume left empty")
    return merged, notes
