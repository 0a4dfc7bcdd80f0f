"""``data_source=csv:<path>[,<path>...]``: TradeMaster CSVs, plain OHLCV CSVs and Parquet files.

Several files are joined in chronological order of their first bar (so ``valid.csv,test.csv``
and ``test.csv,valid.csv`` give the same bars and the same canonical source); their date ranges
must not overlap, because choosing between two versions of a bar is a decision for a person.
Relative paths resolve against the current working directory; the canonical source string holds
absolute paths.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tradeflow.config import RunConfig
from tradeflow.data.base import DataError, MarketData, finalise
from tradeflow.data.tabular import bars_from_table

_CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")


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
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        if name.endswith(_CSV_SUFFIXES):
            return pd.read_csv(path)
    except (OSError, ValueError) as exc:
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
