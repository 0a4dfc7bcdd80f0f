"""``data_source=csv:<path>[,<path>...]``: TradeMaster CSVs, plain OHLCV CSVs and Parquet files.

Several files are joined in chronological order of their first bar (so ``valid.csv,test.csv``
and ``test.csv,valid.csv`` give the same bars and the same canonical source); their date ranges
must not overlap, because choosing between two versions of a bar is a decision for a person.
Relative paths resolve against the current working directory; the canonical source string holds
absolute paths.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import pandas as pd

from tradeflow.config import RunConfig
from tradeflow.data.base import DataError, MarketData, finalise
from tradeflow.data.tabular import bars_from_table

_CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
#: A data file larger than this (on disk, or once decompressed) is refused: only daily bars are
#: supported, and a century of them is a few MB; a 1.4 MB ``.csv.gz`` bomb expanded to 3.9 GB
#: before this cap.
MAX_DATA_BYTES = 64 * 1024 * 1024


class _Bounded(io.RawIOBase):
    """A read-only stream that raises ``DataError`` once more than ``limit`` bytes came out of it
    (pandas reads a gzip file through this, so a bomb stops at the cap, not at the memory limit)."""

    def __init__(self, inner: Any, limit: int, what: str) -> None:
        self._inner, self._left, self._what = inner, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(min(len(buffer), self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise DataError(f"{self._what} decompresses to more than {MAX_DATA_BYTES:,} bytes (refused)")
        buffer[: len(data)] = data
        return len(data)


def parse_paths(spec: str, symbol: str) -> list[Path]:
    """``csv:a.csv,b.parquet`` -> absolute paths (relative ones against the working directory)."""
    body = spec.split(":", 1)[1] if spec.startswith("csv:") else spec
    parts = [part.strip() for part in body.split(",")]
    if not parts or any(not part for part in parts):
        raise DataError(f"{symbol}: data_source {spec!r} has an empty path; use csv:<path>[,<path>...]")
    return [Path(part).expanduser().absolute() for part in parts]


def read_table(path: Path, symbol: str) -> pd.DataFrame:
    """Read one CSV or Parquet file as it is (no index column, no parsing beyond the format)."""
    name = path.name.lower()
    if not path.is_file():
        raise DataError(f"{symbol}: data file not found: {path}")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise DataError(f"{symbol}: {path} is {path.stat().st_size:,} bytes, over the {MAX_DATA_BYTES:,}-byte cap")
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as raw:
                return pd.read_csv(io.BufferedReader(_Bounded(raw, MAX_DATA_BYTES, f"{symbol}: {path}")))
        if name.endswith(_CSV_SUFFIXES):
            return pd.read_csv(path)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{symbol}: cannot read {path}: {first}") from None
    raise DataError(f"{symbol}: {path} is neither CSV ({', '.join(_CSV_SUFFIXES)}) "
                    f"nor Parquet ({', '.join(_PARQUET_SUFFIXES)})")


def load_files(cfg: RunConfig) -> MarketData:
    """Load ``cfg.symbol`` from the files named by ``cfg.data_source``."""
    symbol = cfg.symbol
    parts: list[tuple[Path, pd.DataFrame]] = []
    notes: list[str] = []
    for path in parse_paths(cfg.data_source, symbol):
        bars, file_notes = bars_from_table(read_table(path, symbol), symbol=symbol, where=str(path))
        if bars.empty:
            raise DataError(f"{symbol}: {path} has no rows")
        parts.append((path, bars))
        notes.extend(note for note in file_notes if note not in notes)
    parts.sort(key=lambda part: part[1]["date"].min())
    for (path_a, a), (path_b, b) in zip(parts, parts[1:]):
        if a["date"].max() >= b["date"].min():
            raise DataError(
                f"{symbol}: csv files overlap: {path_a} covers {_range(a)} and {path_b} covers {_range(b)}; "
                "pass files with disjoint date ranges"
            )
    source = "csv:" + ",".join(str(path) for path, _ in parts)
    combined = pd.concat([bars for _, bars in parts], ignore_index=True)
    return finalise(combined, cfg, source=source, notes=notes)


def _range(bars: pd.DataFrame) -> str:
    return f"{bars['date'].min():%Y-%m-%d}..{bars['date'].max():%Y-%m-%d}"


def universe_closes(data_source: str, *, first: Any, last: Any) -> dict[str, tuple[Any, Any]]:
    """Every ticker a ``csv:`` source holds: ``{ticker: (dates, closes)}`` from ``first`` to ``last``
    (inclusive), each file read once. The train step's reviewer reads it for its universe prior
    (``tradeflow.metalabel.UniverseLabels``), as ``evaluate`` has it on the same universe; another
    source, a table without a ticker column, or a ticker whose rows cannot be read gives nothing for
    it (the reviewer's ``universe`` block says how many symbols it had)."""
    if not data_source.startswith("csv:"):
        return {}
    parts: dict[str, list[pd.DataFrame]] = {}
    for path in parse_paths(data_source, "universe"):
        table = read_table(path, "universe")
        column = next((c for c in table.columns if str(c).strip().lower() in ("tic", "ticker", "symbol")), None)
        if column is None:
            return {}
        for ticker in sorted(set(table[column].dropna().astype(str).str.strip().str.upper())):
            try:
                bars, _ = bars_from_table(table, symbol=ticker, where=str(path))
            except DataError:
                continue
            parts.setdefault(ticker, []).append(bars[["date", "close"]])
    out = {}
    for ticker, frames in parts.items():
        bars = pd.concat(frames, ignore_index=True)
        bars["date"] = pd.to_datetime(bars["date"])
        bars = bars.sort_values("date").drop_duplicates("date")
        bars = bars[(bars["date"] >= pd.Timestamp(first)) & (bars["date"] <= pd.Timestamp(last))]
        if len(bars):
            out[ticker] = (bars["date"].to_numpy(), bars["close"].to_numpy("float64"))
    return out
