"""``data_source=synthetic``: a deterministic, clearly labelled price series for demos and tests.

A geometric random walk whose drift and volatility switch between regimes, seeded from
``(symbol, cfg.seed)`` through sha256 (Python's ``hash()`` is salted per process), on business
days ending at ``cfg.end_date`` or the fixed ``SYNTHETIC_END`` (never "today": the same config
must give the same bars tomorrow). Prices are rounded to 4 decimals so that last-bit differences
between CPUs' ``exp`` implementations cannot change the digest. ``MarketData.synthetic`` is True
and the notes say so: generated prices must never pass for market prices.
"""

from __future__ import annotations

import hashlib
from datetime import date

import numpy as np
import pandas as pd

from tradeflow.config import RunConfig
from tradeflow.data.base import BAR_COLUMNS, MarketData, finalise

SYNTHETIC_END = date(2024, 12, 31)
SYNTHETIC_NOTE = "SYNTHETIC data: generated, not market prices"
GENERATOR = "gbm-regime-v1"

_DRIFTS = np.array([-0.0008, 0.0, 0.0006, 0.0012])  # daily log drift per regime
_MEAN_REGIME_BARS = 60


def synthetic_seed(symbol: str, seed: int) -> int:
    """A 64-bit seed that is the same for (symbol, seed) in every process and on every machine."""
    digest = hashlib.sha256(f"tradeflow-synthetic|{GENERATOR}|{symbol}|{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def synthetic_bars(symbol: str, seed: int, end: date, lookback_days: int) -> pd.DataFrame:
    """Business-day bars from ``end - lookback_days`` to ``end`` (both inclusive when business days)."""
    dates = pd.bdate_range(start=pd.Timestamp(end) - pd.Timedelta(days=lookback_days), end=pd.Timestamp(end))
    n = len(dates)
    rng = np.random.default_rng(synthetic_seed(symbol, seed))
    start_price = rng.uniform(20.0, 500.0)
    drift = np.empty(n)
    vol = np.empty(n)
    i = 0
    while i < n:
        length = int(rng.geometric(1.0 / _MEAN_REGIME_BARS))
        drift[i:i + length] = rng.choice(_DRIFTS)
        vol[i:i + length] = rng.uniform(0.008, 0.025)
        i += length
    log_ret = drift + vol * rng.standard_normal(n)
    close = start_price * np.exp(np.cumsum(log_ret))
    prev_close = np.concatenate(([start_price], close[:-1]))
    open_ = prev_close * np.exp(0.3 * vol * rng.standard_normal(n))
    high = np.maximum(open_, close) * np.exp(np.abs(0.5 * vol * rng.standard_normal(n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(0.5 * vol * rng.standard_normal(n)))
    volume = np.round(rng.lognormal(mean=13.0, sigma=0.4, size=n) * (1.0 + 20.0 * np.abs(log_ret)))
    bars = pd.DataFrame({
        "date": dates.astype("datetime64[ns]"),
        "open": np.round(open_, 4),
        "high": np.round(high, 4),
        "low": np.round(low, 4),
        "close": np.round(close, 4),
        "volume": volume,
    })
    bars["adjcp"] = bars["close"]
    return bars[list(BAR_COLUMNS)]


def load_synthetic(cfg: RunConfig) -> MarketData:
    """Generated bars for ``cfg.symbol``, labelled synthetic."""
    end = cfg.end_date or SYNTHETIC_END
    bars = synthetic_bars(cfg.symbol, cfg.seed, end, cfg.backtest_lookback_days)
    source = f"synthetic:{cfg.symbol}?seed={cfg.seed}&generator={GENERATOR}&end={end.isoformat()}"
    notes = (SYNTHETIC_NOTE, f"generator {GENERATOR}, seed {cfg.seed}, {len(bars)} business days to {end}")
    return finalise(bars, cfg, source=source, notes=notes, synthetic=True)
