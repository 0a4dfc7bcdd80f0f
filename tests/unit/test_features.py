"""TradeMaster features on the real shared data: equal to upstream's published values wherever
upstream did not back-fill, free of look-ahead, and split chronologically with a clear minimum."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from tests.support.data import BTC_CSV, DJ30_TEST, DJ30_VALID, SHARED_DATA
from tradeflow.config import SplitConfig, resolve_config
from tradeflow.data import BAR_COLUMNS, DataError, MarketData, load_market_data
from tradeflow.features import (
    FEATURE_COLUMNS,
    WARMUP_BARS,
    compute_features,
    latest_window,
    split_chronological,
    split_for_run,
)

DATA = SHARED_DATA
BTC = BTC_CSV
DJ_VALID = DJ30_VALID
DJ_TEST = DJ30_TEST


@pytest.fixture(scope="module")
def btc() -> MarketData:
    return load_market_data(resolve_config({"symbol": "BTC", "data_source": f"csv:{BTC}",
                                            "backtest_lookback_days": 3660}))


@pytest.fixture(scope="module")
def aapl() -> MarketData:
    return load_market_data(resolve_config({"symbol": "AAPL", "data_source": f"csv:{DJ_VALID},{DJ_TEST}"}))


def test_feature_columns_are_trademasters():
    assert FEATURE_COLUMNS == ("zopen", "zhigh", "zlow", "zadjcp", "zclose",
                               "zd_5", "zd_10", "zd_15", "zd_20", "zd_25", "zd_30")
    assert WARMUP_BARS == 29


def test_btc_features_equal_upstream_where_upstream_is_not_back_filled(btc):
    published = pd.read_csv(BTC, index_col=0)
    # Upstream back-fills: its first 29 zd_30 values all repeat row 29's, i.e. the future.
    assert (published["zd_30"].iloc[:WARMUP_BARS] == published["zd_30"].iloc[WARMUP_BARS]).all()
    features = compute_features(btc.bars)
    assert len(features) == 2991 - WARMUP_BARS
    assert tuple(features.columns) == BAR_COLUMNS + FEATURE_COLUMNS
    assert features["date"].iloc[0] == pd.Timestamp("2013-05-28")  # bar 29, the first with 30 bars behind it
    theirs = published.iloc[WARMUP_BARS:].reset_index(drop=True)
    for column in FEATURE_COLUMNS:
        np.testing.assert_allclose(features[column], theirs[column], rtol=0, atol=1e-12, err_msg=column)
    assert not features[list(FEATURE_COLUMNS)].isna().any().any()


def test_dj30_aapl_features_equal_upstream_with_zd_on_adjcp(aapl):
    published = pd.concat([pd.read_csv(p, index_col=0) for p in (DJ_VALID, DJ_TEST)])
    theirs = published[published["tic"] == "AAPL"].iloc[WARMUP_BARS:].reset_index(drop=True)
    features = compute_features(aapl.bars)
    assert len(features) == len(theirs) == 505 - WARMUP_BARS
    for column in FEATURE_COLUMNS:
        np.testing.assert_allclose(features[column], theirs[column], rtol=0, atol=1e-12, err_msg=column)


@pytest.mark.parametrize("k", [WARMUP_BARS, 700, 2990])
def test_no_look_ahead_changing_bar_k_changes_nothing_before_k(btc, k):
    before = compute_features(btc.bars)
    shocked = btc.bars.copy()
    for column in ("open", "high", "low", "close", "adjcp"):
        shocked.loc[k, column] *= 1.5
    after = compute_features(shocked)
    row = k - WARMUP_BARS  # feature row of bar k
    pd.testing.assert_frame_equal(after.iloc[:row], before.iloc[:row])
    assert (after.loc[row, ["zclose", "zd_5"]] != before.loc[row, ["zclose", "zd_5"]]).all()


def test_too_short_history_gives_no_feature_rows(btc):
    assert len(compute_features(btc.bars.iloc[:WARMUP_BARS])) == 0
    assert len(compute_features(btc.bars.iloc[:WARMUP_BARS + 1])) == 1


def test_ratio_split_is_contiguous_and_chronological(btc):
    features = compute_features(btc.bars)
    splits = split_chronological(features, SplitConfig(), min_rows=16)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (1777, 592, 593)  # 60/20/20 of 2962
    pd.testing.assert_frame_equal(pd.concat([splits.train, splits.valid, splits.test], ignore_index=True), features)
    for part in (splits.train, splits.valid, splits.test):
        assert part.index.equals(pd.RangeIndex(len(part)))
    assert splits.describe() == {
        "train": {"start": "2013-05-28", "end": "2018-04-08", "rows": 1777},
        "valid": {"start": "2018-04-09", "end": "2019-11-21", "rows": 592},
        "test": {"start": "2019-11-22", "end": "2021-07-06", "rows": 593},
    }


def test_date_split_and_run_minimum(aapl):
    cfg = resolve_config({"symbol": "AAPL", "valid_start": "2021-01-04", "test_start": "2021-07-01"})
    splits = split_for_run(compute_features(aapl.bars), cfg)
    assert splits.describe() == {
        "train": {"start": "2020-02-13", "end": "2020-12-31", "rows": 224},
        "valid": {"start": "2021-01-04", "end": "2021-06-30", "rows": 124},
        "test": {"start": "2021-07-01", "end": "2021-12-31", "rows": 128},
    }


def test_too_few_rows_says_how_many_are_needed(aapl):
    features = compute_features(aapl.bars)
    cfg = resolve_config({"symbol": "AAPL"})
    with pytest.raises(DataError) as caught:
        split_for_run(features.iloc[:40], cfg)
    assert str(caught.value) == ("AAPL: 40 rows after features; need at least 3 x 16 "
                                 "(window 10 + horizon 5 + 1) for train/valid/test splits")
    late = resolve_config({"symbol": "AAPL", "valid_start": "2021-11-01", "test_start": "2021-12-20"})
    with pytest.raises(DataError) as caught:
        split_for_run(features, late)
    assert str(caught.value) == ("AAPL: test split has 9 rows (2021-12-20..2021-12-31); need at least 16 "
                                 "(window 10 + horizon 5 + 1); adjust split.valid_start 2021-11-01 / "
                                 "split.test_start 2021-12-20")


def test_latest_window_is_the_last_rows(aapl):
    features = compute_features(aapl.bars)
    window = latest_window(features, 10, symbol="AAPL")
    pd.testing.assert_frame_equal(window, features.iloc[-10:].reset_index(drop=True))
    assert window["date"].iloc[-1] == pd.Timestamp("2021-12-31")
    with pytest.raises(DataError, match=r"^AAPL: 5 rows after features; inference needs the last 10$"):
        latest_window(features.iloc[:5], 10, symbol="AAPL")
