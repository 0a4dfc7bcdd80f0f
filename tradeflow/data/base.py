"""The one shape market data takes inside tradeflow, and the checks every source must pass.

Every source (CSV/Parquet files, the WebUI cache, IBKR, yfinance, synthetic) hands back a
``MarketData``: daily bars in ``BAR_COLUMNS`` with a canonical ``source`` string and a content
``digest``, so a training run can record exactly which bars it saw (``mlflow.log_input``).
Bad data raises ``DataError`` rather than being repaired: bars are never re-sorted, de-duplicated
or filled here, because a silent repair hides a broken feed from the people who must fix it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradeflow.errors import InputError
from tradeflow.runs.records import Tag

if TYPE_CHECKING:
    from mlflow.data.pandas_dataset import PandasDataset

    from tradeflow.config import RunConfig

log = logging.getLogger(__name__)

BAR_COLUMNS: tuple[str, ...] = ("date", "open", "high", "low", "close", "adjcp", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "adjcp")

#: MLflow stores at most 36 characters of a dataset digest; we record the first 32 hex digits
#: (128 bits) there and the full sha256 as the ``tradeflow.digest`` input tag.
MLFLOW_DIGEST_CHARS = 32
_DIGEST_VERSION = b"tradeflow-bars-v1"


class DataError(InputError):
    """Market data is missing or unusable. ``str(err)`` is one line naming symbol, source and problem."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _day(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


@dataclass(frozen=True, eq=False)
class MarketData:
    """Validated daily bars of one symbol plus where they came from.

    ``bars`` is re-validated on construction (see ``validate_bars``), so every instance holds
    exactly ``BAR_COLUMNS`` with ascending, unique, midnight ``date`` values and float64 prices.
    """

    symbol: str
    source: str
    bars: pd.DataFrame = field(repr=False)
    synthetic: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bars", validate_bars(self.bars, self.symbol, self.source))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def digest(self) -> str:
        """sha256 hex of the bars' canonical bytes: identical bars give the identical digest on any
        machine (explicit little-endian values, one NaN pattern, -0.0 folded into 0.0)."""
        return bars_digest(self.bars)

    @property
    def mlflow_digest(self) -> str:
        """The digest prefix that fits MLflow's 36-character dataset digest column."""
        return self.digest[:MLFLOW_DIGEST_CHARS]

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.bars["date"].iloc[0])

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self.bars["date"].iloc[-1])

    @property
    def rows(self) -> int:
        return len(self.bars)

    def to_mlflow_dataset(self) -> PandasDataset:
        """An MLflow dataset of these bars named ``<symbol>-bars``, carrying our source string and
        digest, for ``mlflow.log_input(ds, context="training", tags=md.mlflow_input_tags())``."""
        import mlflow.data

        from tradeflow.data.mlflow_source import MarketDataSource

        return mlflow.data.from_pandas(
            self.bars,
            source=MarketDataSource(self.source),
            name=f"{self.symbol}-bars",
            digest=self.mlflow_digest,
        )

    def mlflow_input_tags(self) -> dict[str, str]:
        """Input tags holding what the 36-character digest column cannot: the full sha256 and the
        synthetic flag (so a run trained on generated prices can never pass for a real one)."""
        return {
            Tag.MARKET_DIGEST: self.digest,
            Tag.MARKET_SYNTHETIC: str(self.synthetic).lower(),
            Tag.MARKET_ROWS: str(self.rows),
        }

    def log_mlflow_input(self, context: str = "training") -> None:
        """Record these bars as an input of the active MLflow run (dataset + tags)."""
        import mlflow

        mlflow.log_input(self.to_mlflow_dataset(), context=context, tags=self.mlflow_input_tags())

    def describe(self) -> dict[str, str]:
        """Flat ``data.*`` values for ``mlflow.log_params``."""
        return {
            "data.symbol": self.symbol,
            "data.source": self.source,
            "data.digest": self.digest,
            "data.start": _day(self.start),
            "data.end": _day(self.end),
            "data.rows": str(self.rows),
            "data.synthetic": str(self.synthetic).lower(),
        }


def bars_digest(bars: pd.DataFrame) -> str:
    """sha256 over a versioned header, the column names and each column's values as
    little-endian int64 (dates, ns since epoch) or float64 (prices, volume)."""
    h = hashlib.sha256(_DIGEST_VERSION)
    h.update(("|" + ",".join(BAR_COLUMNS) + "|").encode())
    h.update(np.ascontiguousarray(bars["date"].to_numpy(dtype="datetime64[ns]").view("<i8")).tobytes())
    for column in BAR_COLUMNS[1:]:
        values = bars[column].to_numpy(dtype="<f8", na_value=np.nan) + 0.0  # -0.0 -> 0.0
        values[np.isnan(values)] = np.nan  # one NaN bit pattern
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def validate_bars(df: pd.DataFrame, symbol: str, source: str) -> pd.DataFrame:
    """Check bars against the ``MarketData`` contract and return a clean copy (BAR_COLUMNS order,
    float64 values, fresh RangeIndex). Raises ``DataError`` for: missing/extra columns, no rows,
    non-midnight or tz-aware dates, missing prices, duplicate or unsorted dates, non-positive
    prices, negative volume, and ``high < low``. Open/close outside [low, high] is tolerated
    (vendors publish such bars) and reported by ``range_notes``."""
    where = f"{symbol} from {source}"
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in BAR_COLUMNS]
    if missing or extra:
        raise DataError(f"{where}: bars need exactly columns {', '.join(BAR_COLUMNS)} "
                        f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(map(str, extra)) or '-'})")
    if df.empty:
        raise DataError(f"{where}: no bars")
    dates = df["date"]
    if not pd.api.types.is_datetime64_dtype(dates) or isinstance(dates.dtype, pd.DatetimeTZDtype):
        raise DataError(f"{where}: column date must be tz-naive datetime64, got {dates.dtype}")
    if dates.isna().any():
        raise DataError(f"{where}: {int(dates.isna().sum())} bars have no date")
    dates = dates.astype("datetime64[ns]")
    if (dates != dates.dt.normalize()).any():
        bad = dates[dates != dates.dt.normalize()].iloc[0]
        raise DataError(f"{where}: bar dates must be midnight (daily bars), got {bad}")
    out = pd.DataFrame({"date": dates.to_numpy()})
    for column in BAR_COLUMNS[1:]:
        try:
            out[column] = pd.to_numeric(df[column], errors="raise").astype("float64").to_numpy()
        except (TypeError, ValueError):
            raise DataError(f"{where}: column {column} is not numeric") from None
    for column in PRICE_COLUMNS:
        nan = out[column].isna()
        if nan.any():
            raise DataError(f"{where}: {int(nan.sum())} missing values in {column} "
                            f"(first on {_day(out['date'][nan].iloc[0])})")
    for column in BAR_COLUMNS[1:]:
        infinite = np.isinf(out[column].to_numpy())  # 1e400 in a CSV parses as inf
        if infinite.any():
            raise DataError(f"{where}: {int(infinite.sum())} non-finite values in {column} "
                            f"(first on {_day(out['date'][infinite].iloc[0])})")
    dup = out["date"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{where}: duplicate bar date {_day(out['date'][dup].iloc[0])} "
                        f"({int(out['date'].duplicated().sum())} duplicates)")
    step = out["date"].diff().iloc[1:]
    if (step < pd.Timedelta(0)).any():
        pos = int(step.index[step < pd.Timedelta(0)][0])
        raise DataError(f"{where}: bar dates not ascending at row {pos} "
                        f"({_day(out['date'][pos])} after {_day(out['date'][pos - 1])}); "
                        "fix the source order (tradeflow does not re-sort)")
    for column in PRICE_COLUMNS:
        bad = out[column] <= 0
        if bad.any():
            first = out[bad].iloc[0]
            raise DataError(f"{where}: non-positive {column} {first[column]:g} on {_day(first['date'])} "
                            f"({int(bad.sum())} bars)")
    negative = out["volume"] < 0
    if negative.any():
        raise DataError(f"{where}: negative volume on {_day(out['date'][negative].iloc[0])} "
                        f"({int(negative.sum())} bars)")
    inverted = out["high"] < out["low"]
    if inverted.any():
        first = out[inverted].iloc[0]
        raise DataError(f"{where}: high below low on {_day(first['date'])} (high {first['high']:g}, "
                        f"low {first['low']:g}; {int(inverted.sum())} bars)")
    return out


def range_notes(bars: pd.DataFrame) -> tuple[str, ...]:
    """Notes for bars whose open or close lies outside [low, high]: suspicious, but seen in real
    vendor data and harmless to the features, so reported rather than refused."""
    outside = (bars[["open", "close"]].max(axis=1) > bars["high"]) | (bars[["open", "close"]].min(axis=1) < bars["low"])
    if not outside.any():
        return ()
    first = _day(bars["date"][outside].iloc[0])
    return (f"{int(outside.sum())} bars have open/close outside [low, high] (first on {first}); kept as published",)


def apply_window(bars: pd.DataFrame, cfg: RunConfig, *, source: str) -> pd.DataFrame:
    """Drop bars after ``cfg.end_date``, then keep bars at most ``cfg.backtest_lookback_days``
    calendar days before the last remaining bar (``date >= last - lookback``)."""
    out = bars
    if cfg.end_date is not None:
        out = out[out["date"] <= pd.Timestamp(cfg.end_date)]
        if out.empty:
            first = _day(bars["date"].min()) if len(bars) else "none"
            raise DataError(f"{cfg.symbol} from {source}: no bars on or before end_date "
                            f"{cfg.end_date.isoformat()} (first bar {first})")
    if not out.empty:
        cutoff = out["date"].max() - pd.Timedelta(days=cfg.backtest_lookback_days)
        out = out[out["date"] >= cutoff]
    return out.reset_index(drop=True)


def finalise(
    bars: pd.DataFrame,
    cfg: RunConfig,
    *,
    source: str,
    notes: tuple[str, ...] | list[str] = (),
    synthetic: bool = False,
) -> MarketData:
    """The step every source ends with: window by end_date/lookback, validate, collect notes."""
    windowed = apply_window(bars, cfg, source=source)
    checked = validate_bars(windowed, cfg.symbol, source)
    all_notes = (*notes, *range_notes(checked))
    for note in all_notes:
        log.info("data %s: %s", cfg.symbol, note)
    return MarketData(symbol=cfg.symbol, source=source, bars=checked, synthetic=synthetic, notes=all_notes)
