"""Turn a table of daily prices (TradeMaster CSV, plain OHLCV CSV/Parquet, a yfinance frame)
into tradeflow bars.

Column names are matched case-insensitively with ``_``/spaces treated alike, so ``Adj Close``,
``adj_close`` and ``adjcp`` are the same column. TradeMaster's precomputed ``z*`` features are
ignored on purpose: ``tradeflow.features`` recomputes them without upstream's back-filled
(look-ahead) first rows.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from tradeflow.data.base import BAR_COLUMNS, DataError

_ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("date", "timestamp", "time", "datetime"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "adjcp": ("adjcp", "adj close", "adjclose", "adjusted close"),
    "volume": ("volume",),
    "tic": ("tic", "ticker", "symbol"),
}
_UPSTREAM_FEATURES = re.compile(r"^z(open|high|low|adjcp|close|d \d+)$")
_INDEX_LIKE = re.compile(r"^(|unnamed: \d+|index)$")
_MAX_LISTED_TICKERS = 40


def _key(name: object) -> str:
    return re.sub(r"[\s_]+", " ", str(name).strip().lower())


def _resolve_columns(table: pd.DataFrame, where: str) -> tuple[dict[str, str], list[str], list[str]]:
    """Map our names to the table's columns; return (mapping, ignored features, ignored others)."""
    found: dict[str, str] = {}
    features: list[str] = []
    others: list[str] = []
    for column in table.columns:
        key = _key(column)
        ours = next((name for name, aliases in _ALIASES.items() if key in aliases), None)
        if ours is not None:
            if ours in found:
                raise DataError(f"{where}: columns {found[ours]!r} and {column!r} both mean {ours}")
            found[ours] = str(column)
        elif _UPSTREAM_FEATURES.match(key):
            features.append(str(column))
        elif not _INDEX_LIKE.match(key):
            others.append(str(column))
    return found, features, others


_PLAIN = re.compile(r"^[A-Za-z0-9_^][A-Za-z0-9_ .^+-]{0,31}$")


def _safe_list(values: Any) -> str:
    """Names or values from a file, for an error message: only short, plain ones are shown, so a
    file that is not market data (``csv:/etc/passwd``) never has its content echoed into errors,
    logs and run tags."""
    shown, hidden = [], 0
    for value in values:
        text = str(value)
        if _PLAIN.match(text):
            shown.append(text)
        else:
            hidden += 1
    return ", ".join(shown + ([f"{hidden} not shown"] if hidden else [])) or "none"


def parse_dates(values: pd.Series, where: str) -> pd.Series:
    """Parse a date column to tz-naive midnight ``datetime64[ns]``. A tz-aware value keeps its
    local calendar date; intraday times are cut to the day (a second bar on the same day then
    fails validation as a duplicate, which is right for a daily loader)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        raise DataError(f"{where}: numeric timestamps are ambiguous (seconds or milliseconds?); write ISO dates")
    try:
        parsed = pd.to_datetime(values)
    except (TypeError, ValueError) as exc:
        coerced = pd.to_datetime(values, errors="coerce", format="mixed")
        bad = values[coerced.isna() & values.notna()]
        sample = repr(_safe_list([bad.iloc[0]])) if len(bad) else "(pandas could not parse the column)"
        raise DataError(f"{where}: unparseable date {sample}") from None
    if not pd.api.types.is_datetime64_any_dtype(parsed):
        raise DataError(f"{where}: dates mix time zones; give one zone or plain dates")
    if parsed.isna().any():
        raise DataError(f"{where}: {int(parsed.isna().sum())} rows have no date")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_localize(None)
    return parsed.dt.normalize().astype("datetime64[ns]")


def bars_from_table(
    table: pd.DataFrame, *, symbol: str, where: str, single_symbol: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """Select ``symbol``'s rows (when the table has a ticker column) and map columns to
    ``BAR_COLUMNS``. Returns (bars, notes); does not validate (``validate_bars`` does).

    ``where`` names the file or service in error messages; ``single_symbol`` says the table is
    known to hold only ``symbol`` (a per-symbol API answer), which silences the no-ticker note. Raises ``DataError`` for a missing
    required column or a ticker column without ``symbol``.
    """
    if "date" not in {_key(c) for c in table.columns} and isinstance(table.index, pd.DatetimeIndex):
        table = table.rename_axis("date").reset_index()
    columns, features, others = _resolve_columns(table, where)
    notes: list[str] = []
    if "tic" in columns:
        tickers = table[columns["tic"]].astype("string").str.strip().str.upper()
        mask = (tickers == symbol).fillna(False).to_numpy(dtype=bool)
        known = sorted(tickers.dropna().unique().tolist())
        if not mask.any():
            listed = _safe_list(known[:_MAX_LISTED_TICKERS])
            if len(known) > _MAX_LISTED_TICKERS:
                listed += f", ... ({len(known)} in all)"
            raise DataError(f"unknown symbol {symbol!r} in {where} (tickers: {listed or 'none'})")
        table = table.loc[mask]
        if len(known) > 1:
            notes.append(f"{where}: kept the {int(mask.sum())} rows of {symbol} out of {len(known)} tickers")
    elif not single_symbol:
        notes.append(f"{where} has no ticker column; all rows taken as {symbol}")
    required = [name for name in ("date", "open", "high", "low", "close") if name not in columns]
    if required:
        raise DataError(f"{symbol}: {where} lacks column(s) {', '.join(required)} "
                        f"(have: {_safe_list(table.columns)})")
    bars = pd.DataFrame({"date": parse_dates(table[columns["date"]], where).to_numpy()})
    for name in ("open", "high", "low", "close"):
        bars[name] = _numeric(table[columns[name]], name, symbol, where)
    if "adjcp" in columns:
        bars["adjcp"] = _numeric(table[columns["adjcp"]], "adjcp", symbol, where)
    else:
        bars["adjcp"] = bars["close"]
        notes.append("adjcp absent; adjcp = close")
    if "volume" in columns:
        bars["volume"] = _numeric(table[columns["volume"]], "volume", symbol, where)
    else:
        bars["volume"] = float("nan")
        notes.append("source has no volume column; volume left empty")
    if features:
        notes.append(f"ignored {len(features)} precomputed feature columns (tradeflow.features recomputes them)")
    if others:
        notes.append(f"ignored columns: {', '.join(others)}")
    return bars[list(BAR_COLUMNS)], notes


def _numeric(values: pd.Series, name: str, symbol: str, where: str) -> np.ndarray:
    try:
        return pd.to_numeric(values, errors="raise").astype("float64").to_numpy()
    except (TypeError, ValueError):
        raise DataError(f"{symbol}: {where} column {name} is not numeric") from None

