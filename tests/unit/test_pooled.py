"""The pooled agent's training data: every symbol's rows up to the refit date, split per symbol,
prices chained so the environment sees no jump between symbols."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tradeflow.config import resolve_config
from tradeflow.evaluation.pooled import latest_before, pooled_splits


def _frame(start: float, n: int = 200) -> pd.DataFrame:
    close = start * np.exp(np.cumsum(np.full(n, 0.001)))
    return pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=n), "open": close, "high": close * 1.01,
                         "low": close * 0.99, "close": close, "adjcp": close, "zclose": np.full(n, 0.01)})


def test_pooled_splits_chain_prices_and_keep_each_symbols_chronology():
    frames = {"A": _frame(10.0), "B": _frame(500.0)}
    cut = frames["A"]["date"].iloc[149]
    splits = pooled_splits(frames, cut, resolve_config({"symbol": "AAPL"}))
    assert len(splits.train) == 2 * 90 and len(splits.valid) == 2 * 30 and len(splits.test) == 2 * 30
    assert splits.test["date"].max() <= cut  # nothing after the refit date
    close = splits.train["close"].to_numpy()
    jumps = np.abs(np.diff(np.log(close)))
    assert jumps.max() == pytest.approx(0.001, abs=1e-9)  # B starts where A ended: no 50x jump
    assert (splits.train["zclose"] == 0.01).all()  # ratio features unchanged


def test_latest_before_serves_only_models_refitted_by_that_date():
    models = {pd.Timestamp("2021-01-04"): "q1", pd.Timestamp("2021-04-05"): "q2"}
    assert latest_before(models, pd.Timestamp("2020-12-31")) is None
    assert latest_before(models, pd.Timestamp("2021-04-05")) == "q2"
    assert latest_before(models, pd.Timestamp("2021-03-31")) == "q1"
