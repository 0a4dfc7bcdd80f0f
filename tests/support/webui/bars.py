"""Seeding the fake WebUI's market-data cache: rows in, the service's stored IBKR history bars
``{t, o, h, l, c, v}`` out (a daily bar stamped at midnight UTC, as the service caches them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any


def _epoch_ms(value: Any) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError(f"bar date {value!r} is not a date")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def ibkr_bars(bars: Any, fill_volume: float | None) -> list[dict[str, Any]]:
    """Rows -> IBKR history bars ``{t, o, h, l, c, v}``, oldest first."""
    if hasattr(bars, "to_dict") and hasattr(bars, "columns"):  # a pandas DataFrame
        frame = bars if "date" in bars.columns or "t" in bars.columns else bars.rename_axis("date").reset_index()
        rows: Iterable[Mapping[str, Any]] = frame.to_dict("records")
    else:
        rows = bars
    out = []
    for row in rows:
        if {"t", "o", "h", "l", "c"} <= row.keys():
            out.append({k: row.get(k) for k in ("t", "o", "h", "l", "c", "v")})
            continue
        if missing := sorted({"date", "open", "high", "low", "close"} - row.keys()):
            raise ValueError(f"bar rows need date, open, high, low, close; missing {missing}")
        volume = row.get("volume", fill_volume)
        if volume is None:
            raise ValueError("bars have no 'volume'; pass fill_volume=0 to seed volume-less data (TradeMaster CSVs)")
        out.append({"t": _epoch_ms(row["date"]), "o": float(row["open"]), "h": float(row["high"]),
                    "l": float(row["low"]), "c": float(row["close"]), "v": float(volume)})
    if not out:
        raise ValueError("no bars to seed")
    return sorted(out, key=lambda bar: bar["t"])
