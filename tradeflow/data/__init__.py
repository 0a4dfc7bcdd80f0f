"""Market data for one symbol, from the source ``cfg.data_source`` names.

    md = load_market_data(cfg)               # -> MarketData (validated bars + source + digest)
    mlflow.log_input(md.to_mlflow_dataset(), context="training", tags=md.mlflow_input_tags())

Sources: ``csv:<path>[,<path>...]`` (CSV/Parquet, TradeMaster or plain OHLCV), ``backend`` (the
WebUI cache, ``BACKEND_API_URL``), ``ibkr`` (Client Portal, ``IBKR_API_URL``), ``yfinance``
(optional extra) and ``synthetic`` (generated, labelled). Every source ends the same way: bars
after ``end_date`` dropped, ``backtest_lookback_days`` applied, ``validate_bars``. The minimum
row count is not checked here; ``tradeflow.features.split_chronological`` knows what it needs.
"""

from __future__ import annotations

import requests

from tradeflow.config import RunConfig
from tradeflow.data.backend import load_backend
from tradeflow.data.base import BAR_COLUMNS, DataError, MarketData, bars_digest, validate_bars
from tradeflow.data.files import load_files
from tradeflow.data.ibkr import load_ibkr
from tradeflow.data.synthetic import SYNTHETIC_NOTE, load_synthetic
from tradeflow.data.yfinance_source import load_yfinance

__all__ = [
    "BAR_COLUMNS",
    "DataError",
    "MarketData",
    "SYNTHETIC_NOTE",
    "bars_digest",
    "load_market_data",
    "validate_bars",
]


def load_market_data(cfg: RunConfig, *, session: requests.Session | None = None) -> MarketData:
    """Load, window and validate ``cfg.symbol``'s daily bars from ``cfg.data_source``.

    ``session`` is used for the HTTP sources (backend, ibkr); a private one is made otherwise.
    Raises ``DataError`` (one line naming symbol, source and problem).
    """
    kind = cfg.data_source.split(":", 1)[0]
    if kind == "csv":
        return load_files(cfg)
    if kind == "backend":
        return load_backend(cfg, session=session)
    if kind == "ibkr":
        return load_ibkr(cfg, session=session)
    if kind == "yfinance":
        return load_yfinance(cfg)
    if kind == "synthetic":
        return load_synthetic(cfg)
    raise DataError(f"{cfg.symbol}: unknown data_source {cfg.data_source!r}; "
                    "use csv:<path>, backend, ibkr, yfinance or synthetic")
