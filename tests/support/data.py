"""Where the test and benchmark data lives, defined once.

The real TradeMaster data is in ``../shared/data/trademaster/`` beside the checkout (CI has it
there); the project ships a small slice in ``data/trademaster/`` for the demo. Stdlib only, and no
import of the rest of ``tests``: the standalone servers load it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED_DIR = REPO.parent / "shared"
#: TradeMaster's data under ../shared.
SHARED_DATA = SHARED_DIR / "data" / "trademaster"
BTC_DIR = SHARED_DATA / "algorithmic_trading" / "BTC"
BTC_CSV = BTC_DIR / "BTC.csv"
DJ30_DIR = SHARED_DATA / "portfolio_management" / "dj30"
DJ30_VALID = DJ30_DIR / "valid.csv"
DJ30_TEST = DJ30_DIR / "test.csv"
#: The CSV data source of tests and benchmarks: TradeMaster's dj30 2020 + 2021 files, all tickers.
DJ30_SOURCE = f"csv:{DJ30_VALID},{DJ30_TEST}"
BTC_SOURCE = f"csv:{BTC_CSV}"
#: The 29 tickers of TradeMaster's dj30 files, in the order the load tests take them.
DJ30_TICKERS = ("AAPL", "MSFT", "JPM", "KO", "IBM", "WMT", "DIS", "INTC", "CSCO", "HD", "V", "PG", "NKE",
                "MRK", "CVX", "AMGN", "AXP", "BA", "CAT", "CRM", "GS", "HON", "JNJ", "MCD", "MMM", "TRV",
                "UNH", "VZ", "WBA")
#: The slice the project ships (relative to the repository root, as the demo passes it).
PROJECT_DATA = REPO / "data" / "trademaster"
PROJECT_DJ30_CSV = PROJECT_DATA / "dj30_2020_2021.csv"
PROJECT_BTC_CSV = PROJECT_DATA / "btc_2018_2021.csv"


def shared_data_missing() -> str | None:
    """Why the shared data cannot be used here, or None."""
    if not SHARED_DATA.is_dir():
        return f"shared data not found at {SHARED_DATA} (CI has ../shared beside the clone)"
    return None


def trademaster_bars(csv_path: str | Path, tic: str | None = None) -> Any:
    """Bars (``date, open, high, low, close[, volume]``) from a TradeMaster CSV, one ``tic``."""
    import pandas as pd  # only seeding needs pandas; the servers themselves are stdlib

    frame = pd.read_csv(csv_path)
    if tic is not None:
        frame = frame[frame["tic"] == tic]
        if frame.empty:
            raise ValueError(f"{csv_path}: no rows for tic {tic!r}")
    columns = [c for c in ("date", "open", "high", "low", "close", "volume") if c in frame.columns]
    return frame[columns].reset_index(drop=True)
