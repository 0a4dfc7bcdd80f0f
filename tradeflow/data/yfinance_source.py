"""``data_source=yfinance``: Yahoo Finance daily bars through the optional ``yfinance`` package.

Optional on purpose (unofficial API, heavy dependencies): without the extra the run stops with
the install command instead of quietly switching to another source.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from tradeflow.config import RunConfig
from tradeflow.data.base import DataError, MarketData, finalise
from tradeflow.data.tabular import bars_from_table

MISSING_EXTRA = "data_source=yfinance needs the optional extra: pip install 'tradeflow[yfinance]'"


def _import_yfinance() -> Any:
    try:
        import yfinance
    except ImportError:
        raise DataError(MISSING_EXTRA) from None
    return yfinance


def load_yfinance(cfg: RunConfig, *, session: Any = None, today: date | None = None) -> MarketData:
    """Load unadjusted OHLC, ``Adj Close`` (as adjcp) and volume for the lookback window.

    ``session`` is ignored: yfinance manages its own HTTP session.
    """
    yf = _import_yfinance()
    symbol = cfg.symbol
    end = cfg.end_date or (today or date.today())
    start = end - timedelta(days=cfg.backtest_lookback_days)
    source = f"yfinance:{symbol}"
    try:
        table = yf.Ticker(symbol).history(
            start=start.isoformat(), end=(end + timedelta(days=1)).isoformat(),
            interval="1d", auto_adjust=False, actions=False, raise_errors=True,
        )
    except Exception as exc:  # yfinance raises its own, undocumented exception types
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{symbol} from {source}: yfinance failed: {first}") from None
    if table is None or table.empty:
        raise DataError(f"{symbol} from {source}: yfinance returned no bars for {start}..{end}")
    bars, notes = bars_from_table(table, symbol=symbol, where=source, single_symbol=True)
    return finalise(bars, cfg, source=source, notes=["yfinance: Yahoo Finance prices (unofficial API)", *notes])
