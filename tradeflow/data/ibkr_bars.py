"""IBKR Client Portal history bars ``{"t": epoch ms, "o", "h", "l", "c", "v"}`` -> tradeflow bars.

Shared by the ``ibkr`` source and the ``backend`` source (the WebUI caches exactly this format).
A bar's date is the UTC calendar date of ``t``: IBKR stamps US daily bars during or before the
session, which is the same calendar day in UTC. IBKR bars are not dividend-adjusted, so
``adjcp`` is set to ``close`` and a note says so.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tradeflow.data.base import BAR_COLUMNS, DataError

ADJCP_NOTE = "adjcp absent; adjcp = close (IBKR bars are not dividend-adjusted)"
_FIELDS = {"o": "open", "h": "high", "l": "low", "c": "close"}


def parse_ibkr_bars(records: Any, *, where: str) -> tuple[pd.DataFrame, bool]:
    """Parse a list of IBKR bars. Returns (bars in ``BAR_COLUMNS``, whether any bar had ``v``).

    Bars are kept in the order given; ``where`` names the payload in errors. A bar without a
    timestamp or without one of o/h/l/c raises ``DataError``; a missing ``v`` leaves volume NaN.
    """
    if not isinstance(records, list):
        raise DataError(f"{where}: expected a list of bars, got {type(records).__name__}")
    rows: dict[str, list[float]] = {name: [] for name in ("t", *_FIELDS, "v")}
    for index, bar in enumerate(records):
        if not isinstance(bar, dict):
            raise DataError(f"{where}: bar {index} is {type(bar).__name__}, not an object")
        for key in ("t", *_FIELDS):
            value = bar.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise DataError(f"{where}: bar {index} has no numeric {key!r} (got {value!r})")
            rows[key].append(float(value))
        volume = bar.get("v")
        rows["v"].append(float(volume) if isinstance(volume, (int, float)) and not isinstance(volume, bool)
                         else float("nan"))
    stamps = pd.to_datetime(pd.Series(rows["t"], dtype="int64"), unit="ms", utc=True)
    bars = pd.DataFrame({"date": stamps.dt.tz_localize(None).dt.normalize().astype("datetime64[ns]")})
    for key, name in _FIELDS.items():
        bars[name] = pd.Series(rows[key], dtype="float64")
    bars["adjcp"] = bars["close"]
    bars["volume"] = pd.Series(rows["v"], dtype="float64")
    has_volume = bool(bars["volume"].notna().any())
    return bars[list(BAR_COLUMNS)], has_volume
