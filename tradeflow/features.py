"""TradeMaster's price features, chronological splits and the inference window.

The features are TradeMaster's (algorithmic trading / portfolio management datasets):

    zopen  = open / close - 1         zhigh = high / close - 1       zlow = low / close - 1
    zadjcp = adjcp / close - 1        zclose = close / previous close - 1
    zd_N   = SMA_N(adjcp) / adjcp - 1, N in 5, 10, ..., 30

``zd_N`` is computed on ``adjcp``: that is what upstream's published files hold (exactly, for
dj30 where adjcp differs from close; BTC has adjcp == close so both readings agree there).
Upstream back-fills the first rows of each series with later values, which leaks the future into
the past; here a row whose features need history that does not exist is dropped instead, so the
first ``WARMUP_BARS`` bars only serve as history. Every feature of row k uses bars <= k only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tradeflow.config import RunConfig, SplitConfig
from tradeflow.data.base import BAR_COLUMNS, DataError

SMA_WINDOWS: tuple[int, ...] = (5, 10, 15, 20, 25, 30)
FEATURE_COLUMNS: tuple[str, ...] = (
    "zopen", "zhigh", "zlow", "zadjcp", "zclose", *(f"zd_{n}" for n in SMA_WINDOWS),
)
#: bars consumed as history before the first complete feature row (the 30-bar SMA needs 29 more)
WARMUP_BARS = max(SMA_WINDOWS) - 1


def compute_features(bars: pd.DataFrame) -> pd.DataFrame:
    """``BAR_COLUMNS + FEATURE_COLUMNS`` for every bar after the warm-up, index reset.

    ``bars`` must be validated bars (``MarketData.bars``). Fewer than ``WARMUP_BARS + 1`` bars
    give an empty frame; ``split_chronological`` / ``latest_window`` then say how many are needed.
    """
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise DataError(f"compute_features: bars lack column(s) {', '.join(missing)}")
    out = bars.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)
    close = out["close"]
    adjcp = out["adjcp"]
    out["zopen"] = out["open"] / close - 1
    out["zhigh"] = out["high"] / close - 1
    out["zlow"] = out["low"] / close - 1
    out["zadjcp"] = adjcp / close - 1
    out["zclose"] = close / close.shift(1) - 1
    for n in SMA_WINDOWS:
        out[f"zd_{n}"] = adjcp.rolling(n, min_periods=n).mean() / adjcp - 1
    out = out.iloc[WARMUP_BARS:].reset_index(drop=True)
    values = out[list(FEATURE_COLUMNS)].to_numpy()
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise DataError(f"compute_features: non-finite feature on {out['date'][row]:%Y-%m-%d}; "
                        "validate the bars first (tradeflow.data.validate_bars)")
    return out


@dataclass(frozen=True, eq=False)
class Splits:
    """Contiguous, chronological train/valid/test feature frames (each index reset)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def describe(self) -> dict[str, dict[str, str | int]]:
        """``{"train": {"start", "end", "rows"}, "valid": ..., "test": ...}`` (dates YYYY-MM-DD):
        flattened, these are the MLflow params ``data.train.start`` etc.; as is, ``splits.json``."""
        return {
            name: {
                "start": f"{frame['date'].iloc[0]:%Y-%m-%d}",
                "end": f"{frame['date'].iloc[-1]:%Y-%m-%d}",
                "rows": len(frame),
            }
            for name, frame in (("train", self.train), ("valid", self.valid), ("test", self.test))
        }


def split_chronological(
    frame: pd.DataFrame,
    split: SplitConfig,
    min_rows: int,
    *,
    symbol: str = "data",
    requirement: str = "",
) -> Splits:
    """Cut ``frame`` into train/valid/test in time order, by ratios (train_ratio, valid_ratio,
    the rest is test; sizes rounded down) or, when set, by ``valid_start``/``test_start``
    (train < valid_start <= valid < test_start <= test).

    Every split must hold ``min_rows`` rows (the caller passes window + horizon + 1, so one env
    episode fits in each); ``requirement`` explains that number in the error, e.g.
    ``"window 10 + horizon 5 + 1"``. Raises ``DataError``.
    """
    n = len(frame)
    why = f" ({requirement})" if requirement else ""
    if n < 3 * min_rows:
        raise DataError(f"{symbol}: {n} rows after features; need at least 3 x {min_rows}{why} "
                        "for train/valid/test splits")
    dates = frame["date"]
    if split.valid_start is not None and split.test_start is not None:
        valid_at = int(np.searchsorted(dates.to_numpy(), np.datetime64(split.valid_start, "ns"), side="left"))
        test_at = int(np.searchsorted(dates.to_numpy(), np.datetime64(split.test_start, "ns"), side="left"))
        how = f"split.valid_start {split.valid_start} / split.test_start {split.test_start}"
    else:
        valid_at = int(n * split.train_ratio)
        test_at = valid_at + int(n * split.valid_ratio)
        how = f"split.train_ratio {split.train_ratio:g} / split.valid_ratio {split.valid_ratio:g}"
    bounds = {"train": (0, valid_at), "valid": (valid_at, test_at), "test": (test_at, n)}
    parts: dict[str, pd.DataFrame] = {}
    for name, (lo, hi) in bounds.items():
        rows = hi - lo
        if rows < min_rows:
            span = (f"{dates.iloc[lo]:%Y-%m-%d}..{dates.iloc[hi - 1]:%Y-%m-%d}" if rows > 0
                    else f"data {dates.iloc[0]:%Y-%m-%d}..{dates.iloc[-1]:%Y-%m-%d}")
            raise DataError(f"{symbol}: {name} split has {rows} rows ({span}); need at least {min_rows}{why}; "
                            f"adjust {how}")
        parts[name] = frame.iloc[lo:hi].reset_index(drop=True)
    return Splits(**parts)


def split_for_run(frame: pd.DataFrame, cfg: RunConfig) -> Splits:
    """``split_chronological`` with the run's split config and its minimum rows:
    ``backward_num_day + forward_num_day + 1``."""
    tm = cfg.trademaster
    return split_chronological(
        frame,
        cfg.split,
        tm.backward_num_day + tm.forward_num_day + 1,
        symbol=cfg.symbol,
        requirement=f"window {tm.backward_num_day} + horizon {tm.forward_num_day} + 1",
    )


def with_history(previous: pd.DataFrame, frame: pd.DataFrame, window: int) -> pd.DataFrame:
    """``frame`` after the last ``window - 1`` rows of ``previous``: the first observation needs a
    full window, so with this history a backtest trades from ``frame``'s first bar."""
    return pd.concat([previous.tail(window - 1), frame], ignore_index=True)


def latest_window(frame: pd.DataFrame, window: int, *, symbol: str = "data") -> pd.DataFrame:
    """The last ``window`` feature rows (the observation an agent acts on now), index reset."""
    if window < 1:
        raise DataError(f"{symbol}: latest_window needs window >= 1, got {window}")
    if len(frame) < window:
        raise DataError(f"{symbol}: {len(frame)} rows after features; inference needs the last {window}")
    return frame.iloc[-window:].reset_index(drop=True)
