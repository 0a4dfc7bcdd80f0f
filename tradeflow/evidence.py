"""Technical indicators and the evidence bundle the review team reads.

The bundle (``evidence.json``, schema_version 1) is the only thing the reviewers see: latest bars,
indicators, the training run's backtest metrics and the model's suggestion. Indicators use only
bars up to ``as_of`` (no look-ahead); Wilder smoothing for RSI and ATR, as charting tools do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
LATEST_BARS = 20

#: training-run metric -> evidence name (what the reviewers are told).
BACKTEST_METRICS = {
    "test_total_return": "test_total_return",
    "test_annualised_return": "test_annualised_return",
    "test_sharpe": "test_sharpe",
    "test_sortino": "test_sortino",
    "test_max_drawdown": "test_max_drawdown",
    "test_win_rate": "test_win_rate",
    "test_num_trades": "test_num_trades",
    "test_exposure": "test_exposure",
    "test_benchmark_total_return": "benchmark_total_return",
    "test_excess_total_return": "excess_total_return",
    "valid_total_return": "valid_total_return",
}


def rsi(close: pd.Series, period: int = 14) -> pd.Series:
    delta = close.diff()
    gain = delta.clip(lower=0).ewm(alpha=1 / period, adjust=False, min_periods=period).mean()
    loss = (-delta.clip(upper=0)).ewm(alpha=1 / period, adjust=False, min_periods=period).mean()
    rs = gain / loss
    out = 100 - 100 / (1 + rs)
    return out.where(loss != 0, 100.0).where(gain.notna())


def atr(bars: pd.DataFrame, period: int = 14) -> pd.Series:
    prev_close = bars["close"].shift(1)
    true_range = pd.concat(
        [bars["high"] - bars["low"], (bars["high"] - prev_close).abs(), (bars["low"] - prev_close).abs()], axis=1
    ).max(axis=1, skipna=False)
    return true_range.ewm(alpha=1 / period, adjust=False, min_periods=period).mean()


def indicators(bars: pd.DataFrame, periods_per_year: int) -> dict[str, float | None]:
    """Indicators at the last bar. A value needing more history than exists is ``None``."""
    close = bars["close"].astype(float)
    returns = close.pct_change()

    def last(series: pd.Series) -> float | None:
        value = series.iloc[-1] if len(series) else float("nan")
        return None if value is None or not math.isfinite(float(value)) else round(float(value), 6)

    recent = bars.tail(LATEST_BARS)
    return {
        "close": last(close),
        "sma_20": last(close.rolling(20).mean()),
        "sma_50": last(close.rolling(50).mean()),
        "rsi_14": last(rsi(close, 14)),
        "atr_14": last(atr(bars, 14)),
        "volatility_annualised": last(returns.rolling(20).std() * math.sqrt(periods_per_year)),
        "support": round(float(recent["low"].min()), 6),
        "resistance": round(float(recent["high"].max()), 6),
        "return_20d": last(close.pct_change(20)),
    }


def latest_bars(bars: pd.DataFrame, n: int = LATEST_BARS) -> list[dict[str, Any]]:
    rows = []
    for row in bars.tail(n).itertuples(index=False):
        volume = getattr(row, "volume", float("nan"))
        rows.append({
            "date": pd.Timestamp(row.date).date().isoformat(),
            "open": float(row.open), "high": float(row.high), "low": float(row.low), "close": float(row.close),
            "volume": None if volume is None or not np.isfinite(volume) else float(volume),
        })
    return rows


def build_evidence(
    *,
    symbol: str,
    bars: pd.DataFrame,
    bar_size: str,
    periods_per_year: int,
    model: dict[str, Any],
    training_run: dict[str, Any],
    data: dict[str, Any],
    untrusted: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Assemble evidence.json. ``untrusted`` holds outside text (headlines, notes) that the
    reviewers receive as marked data only."""
    metrics = training_run.get("metrics", {})
    evidence = {
        "schema_version": SCHEMA_VERSION,
        "symbol": symbol,
        "as_of": pd.Timestamp(bars["date"].iloc[-1]).date().isoformat(),
        "bar_size": bar_size,
        "latest_bars": latest_bars(bars),
        "indicators": indicators(bars, periods_per_year),
        "backtest": {
            "run_id": training_run.get("run_id"),
            "metrics": {name: _finite(metrics.get(key)) for key, name in BACKTEST_METRICS.items() if key in metrics},
        },
        "model": model,
        "data": data,
    }
    if untrusted:
        evidence["untrusted"] = {k: [str(t) for t in v] for k, v in untrusted.items() if v}
    return evidence


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 6) if math.isfinite(value) else None
