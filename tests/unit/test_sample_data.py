"""The real data shipped for the demo: small, licensed, sourced, identical to TradeMaster's, and the
default of the README's main command (synthetic prices only when asked for by name)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tests.conftest import BTC_CSV, DJ30_TEST, DJ30_VALID, REPO, require_shared_data
from tradeflow.config import resolve_config
from tradeflow.data import load_market_data

SAMPLE = REPO / "data" / "trademaster"
DJ30 = SAMPLE / "dj30_2020_2021.csv"
BTC = SAMPLE / "btc_2018_2021.csv"


def test_the_slice_is_small_licensed_and_says_where_it_comes_from():
    assert DJ30.is_file() and BTC.is_file()
    assert DJ30.stat().st_size + BTC.stat().st_size < 400_000  # kilobytes, not the 6 MB upstream set
    assert "Apache License" in (SAMPLE / "LICENSE").read_text()
    note = (SAMPLE / "README.md").read_text()
    assert "github.com/TradeMaster-NTU/TradeMaster" in note and "Apache License 2.0" in note
    assert "dj30_2020_2021.csv" in note and "btc_2018_2021.csv" in note


@pytest.mark.parametrize("symbol", ["AAPL", "MSFT", "JPM"])
def test_dj30_symbols_load_as_two_full_years_of_real_bars(symbol, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo's relative path, as `mlflow run .` sees it
    market = load_market_data(resolve_config({"symbol": symbol, "data_source": "csv:data/trademaster/dj30_2020_2021.csv"}))
    assert not market.synthetic and market.rows == 505
    assert (str(market.start.date()), str(market.end.date())) == ("2020-01-02", "2021-12-31")


def test_btc_loads(monkeypatch):
    monkeypatch.chdir(REPO)
    market = load_market_data(resolve_config({"symbol": "BTC", "data_source": "csv:data/trademaster/btc_2018_2021.csv",
                                              "backtest_lookback_days": 3000}))
    assert not market.synthetic and market.rows == 1283 and str(market.start.date()) == "2018-01-01"


def test_the_slice_is_exactly_the_upstream_data():
    require_shared_data()
    ours = pd.read_csv(DJ30)
    upstream = pd.concat([pd.read_csv(DJ30_VALID), pd.read_csv(DJ30_TEST)])
    upstream = upstream[upstream["tic"].isin(ours["tic"].unique())][list(ours.columns)]
    upstream = upstream.sort_values(["tic", "date"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours.sort_values(["tic", "date"]).reset_index(drop=True), upstream)
    btc = pd.read_csv(BTC)
    full = pd.read_csv(BTC_CSV)
    full = full[full["date"] >= "2018-01-01"][list(btc.columns)].reset_index(drop=True)
    pd.testing.assert_frame_equal(btc, full)


def test_the_main_command_runs_aapl_on_the_shipped_data_and_synthetic_only_by_name():
    demo = (REPO / "scripts" / "demo.sh").read_text()
    assert re.search(r"^SYMBOL=\$\{1:-AAPL\}$", demo, re.M)
    assert re.search(r"^DATA_SOURCE=\$\{2:-csv:data/trademaster/dj30_2020_2021\.csv\}$", demo, re.M)
    readme = (REPO / "README.md").read_text()
    main = readme[readme.index("## Two commands"):readme.index("## Using the entry points")]
    assert "bash scripts/demo.sh\n" in main and "AAPL on real" in main
    assert "bash scripts/demo.sh DEMO synthetic" in main  # synthetic: by name only
    assert resolve_config({"symbol": "AAPL"}).data_source != "synthetic"
