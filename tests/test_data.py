"""Market data sources on the real shared TradeMaster data, and the HTTP sources against a real
local server speaking the WebUI backend / IBKR Client Portal shapes."""

from __future__ import annotations

import math
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.support.data import BTC_CSV, BTC_DIR, DJ30_TEST, DJ30_VALID, SHARED_DATA
from tests.support.httpserver import BackgroundHTTPServer, Reply, Request
from tradeflow.config import RunConfig, resolve_config
from tradeflow.data import BAR_COLUMNS, DataError, MarketData, load_market_data, validate_bars
from tradeflow.data import ibkr as data_ibkr
from tradeflow.data.ibkr import history_period
from tradeflow.data.synthetic import SYNTHETIC_END, SYNTHETIC_NOTE

DATA = SHARED_DATA
BTC = BTC_CSV
BTC_TEST = BTC_DIR / "test.csv"
DJ_VALID = DJ30_VALID
DJ_TEST = DJ30_TEST
DJ30_TICKERS = ("AAPL, AMGN, AXP, BA, CAT, CRM, CSCO, CVX, DIS, GS, HD, HON, IBM, INTC, JNJ, JPM, KO, MCD, "
                "MMM, MRK, MSFT, NKE, PG, TRV, UNH, V, VZ, WBA, WMT")
#: sha256 of BTC.csv's bars in tradeflow's canonical serialisation; must never drift
BTC_DIGEST = "6773575f791a329dc1dfb1c38f33b75262991dd870efa916a1dc8864b5f33816"


def cfg(symbol: str, source: str, **extra: Any) -> RunConfig:
    return resolve_config({"symbol": symbol, "data_source": source, **extra})


def expect_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(DataError) as caught:
        call()
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def upstream(path: Path, tic: str) -> pd.DataFrame:
    table = pd.read_csv(path, index_col=0)
    return table[table["tic"] == tic].reset_index(drop=True)


def write_btc_head(tmp_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame], rows: int = 60) -> Path:
    """The first ``rows`` rows of the real BTC.csv with one deliberate defect, as a new CSV."""
    table = pd.read_csv(BTC, index_col=0).head(rows)
    path = tmp_path / "BTC.csv"
    edit(table).to_csv(path)
    return path


# --- csv: real TradeMaster files ----------------------------------------------------------------


def test_btc_csv_loads_every_bar_as_published():
    md = load_market_data(cfg("BTC", f"csv:{BTC}", backtest_lookback_days=3660))
    assert isinstance(md, MarketData) and md.symbol == "BTC" and not md.synthetic
    assert md.source == f"csv:{BTC}"
    assert md.rows == 2991
    assert (md.start, md.end) == (pd.Timestamp("2013-04-29"), pd.Timestamp("2021-07-06"))
    bars = md.bars
    assert tuple(bars.columns) == BAR_COLUMNS
    assert str(bars["date"].dtype) == "datetime64[ns]"
    assert (bars["date"] == bars["date"].dt.normalize()).all()  # "23:59:59" stamps cut to the day
    assert all(bars[c].dtype == np.float64 for c in BAR_COLUMNS[1:])
    assert bars["volume"].isna().all()
    assert "source has no volume column; volume left empty" in md.notes
    published = upstream(BTC, "BTC")
    for column in ("open", "high", "low", "close", "adjcp"):
        np.testing.assert_array_equal(bars[column].to_numpy(), published[column].to_numpy())


def test_dj30_aapl_is_filtered_from_the_multi_ticker_file():
    md = load_market_data(cfg("AAPL", f"csv:{DJ_TEST}"))
    assert md.rows == 252 and md.source == f"csv:{DJ_TEST}"
    assert (md.start, md.end) == (pd.Timestamp("2021-01-04"), pd.Timestamp("2021-12-31"))
    published = upstream(DJ_TEST, "AAPL")
    np.testing.assert_array_equal(md.bars["adjcp"].to_numpy(), published["adjcp"].to_numpy())
    assert (md.bars["adjcp"] != md.bars["close"]).any()  # real dividend-adjusted closes kept
    assert f"{DJ_TEST}: kept the 252 rows of AAPL out of 29 tickers" in md.notes


def test_dj30_valid_and_test_concatenate_in_date_order_whatever_the_path_order():
    forward = load_market_data(cfg("AAPL", f"csv:{DJ_VALID},{DJ_TEST}"))
    backward = load_market_data(cfg("AAPL", f"csv:{DJ_TEST},{DJ_VALID}"))
    assert forward.rows == 253 + 252
    assert (forward.start, forward.end) == (pd.Timestamp("2020-01-02"), pd.Timestamp("2021-12-31"))
    assert forward.source == backward.source == f"csv:{DJ_VALID},{DJ_TEST}"
    assert forward.digest == backward.digest


def test_relative_paths_resolve_against_the_working_directory(monkeypatch):
    monkeypatch.chdir(DATA / "algorithmic_trading")
    md = load_market_data(cfg("BTC", "csv:BTC/BTC.csv", backtest_lookback_days=3660))
    assert md.source == f"csv:{BTC}" and md.rows == 2991


def test_end_date_and_lookback_window_the_bars():
    md = load_market_data(cfg("BTC", f"csv:{BTC}", end_date="2020-12-31", backtest_lookback_days=365))
    assert md.end == pd.Timestamp("2020-12-31")
    assert md.start == pd.Timestamp("2020-01-01")  # last bar - 365 calendar days (2020 is a leap year)
    assert md.rows == 366  # BTC trades every day


def test_plain_ohlcv_csv_and_parquet_give_the_same_bars_and_digest(tmp_path):
    source = load_market_data(cfg("AAPL", "synthetic", backtest_lookback_days=120))
    plain = source.bars.rename(columns={"date": "Date", "open": "Open", "high": "HIGH", "low": "low",
                                        "close": "Close", "adjcp": "Adj Close", "volume": "Volume"})
    plain.assign(Date=plain["Date"].dt.strftime("%Y-%m-%d")).to_csv(tmp_path / "aapl.csv", index=False)
    plain.set_index("Date").to_parquet(tmp_path / "aapl.parquet")  # date as a DatetimeIndex
    from_csv = load_market_data(cfg("AAPL", f"csv:{tmp_path / 'aapl.csv'}", backtest_lookback_days=120))
    from_parquet = load_market_data(cfg("AAPL", f"csv:{tmp_path / 'aapl.parquet'}", backtest_lookback_days=120))
    for md in (from_csv, from_parquet):
        pd.testing.assert_frame_equal(md.bars, source.bars)
        assert md.digest == source.digest
        assert not md.synthetic  # a file is a file: the label travels with the source, not the bytes
    assert from_parquet.source == f"csv:{tmp_path / 'aapl.parquet'}"


def test_plain_csv_without_adjcp_or_volume_fills_adjcp_from_close_and_says_so(tmp_path):
    real = upstream(DJ_TEST, "AAPL")[["date", "open", "high", "low", "close"]]
    real.rename(columns={"date": "timestamp"}).to_csv(tmp_path / "aapl.csv", index=False)
    md = load_market_data(cfg("AAPL", f"csv:{tmp_path / 'aapl.csv'}"))
    assert md.rows == 252
    assert (md.bars["adjcp"] == md.bars["close"]).all() and md.bars["volume"].isna().all()
    assert "adjcp absent; adjcp = close" in md.notes
    assert f"{tmp_path / 'aapl.csv'} has no ticker column; all rows taken as AAPL" in md.notes


# --- errors: one line, naming symbol, source and problem -----------------------------------------


def test_unknown_symbol_in_a_multi_ticker_file_lists_the_tickers():
    expect_error(lambda: load_market_data(cfg("XYZ", f"csv:{DJ_TEST}")),
                 f"unknown symbol 'XYZ' in {DJ_TEST} (tickers: {DJ30_TICKERS})")


def test_no_bars_on_or_before_end_date():
    expect_error(lambda: load_market_data(cfg("BTC", f"csv:{BTC}", end_date="2012-01-01")),
                 f"BTC from csv:{BTC}: no bars on or before end_date 2012-01-01 (first bar 2013-04-29)")


def test_overlapping_files_are_an_error_not_deduplicated():
    expect_error(lambda: load_market_data(cfg("BTC", f"csv:{BTC},{BTC_TEST}")),
                 f"BTC: csv files overlap: {BTC} covers 2013-04-29..2021-07-06 and {BTC_TEST} covers "
                 "2018-04-03..2019-06-01; pass files with disjoint date ranges")


def test_missing_file_and_missing_column(tmp_path):
    expect_error(lambda: load_market_data(cfg("BTC", f"csv:{tmp_path / 'nope.csv'}")),
                 f"BTC: data file not found: {tmp_path / 'nope.csv'}")
    path = write_btc_head(tmp_path, lambda t: t.drop(columns=["low"]))
    with pytest.raises(DataError, match=rf"^BTC: {path} lacks column\(s\) low \(have: "):
        load_market_data(cfg("BTC", f"csv:{path}"))


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: t.assign(close=t["close"].where(t.index != 3)),
         "1 missing values in close (first on 2013-05-02)"),
        (lambda t: pd.concat([t.iloc[:5], t.iloc[4:]]),
         "duplicate bar date 2013-05-03 (1 duplicates)"),
        (lambda t: t.iloc[[0, 1, 3, 2, *range(4, len(t))]],
         "bar dates not ascending at row 3 (2013-05-01 after 2013-05-02); "
         "fix the source order (tradeflow does not re-sort)"),
        (lambda t: t.assign(low=t["low"].where(t.index != 7, 0.0)),
         "non-positive low 0 on 2013-05-06 (1 bars)"),
        (lambda t: t.assign(high=t["high"].where(t.index != 9, 1.0)),
         "high below low on 2013-05-08 (high 1, low 109.6; 1 bars)"),
    ],
    ids=["nan", "duplicate", "unsorted", "non-positive", "high-below-low"],
)
def test_defective_bars_are_refused(tmp_path, edit, problem):
    path = write_btc_head(tmp_path, edit)
    expect_error(lambda: load_market_data(cfg("BTC", f"csv:{path}")), f"BTC from csv:{path}: {problem}")


def test_open_outside_high_low_is_kept_with_a_note(tmp_path):
    path = write_btc_head(tmp_path, lambda t: t.assign(open=t["open"].where(t.index != 5, t["high"] * 1.01)))
    md = load_market_data(cfg("BTC", f"csv:{path}"))
    assert md.rows == 60
    assert "1 bars have open/close outside [low, high] (first on 2013-05-04); kept as published" in md.notes


def test_validate_bars_checks_the_contract_directly():
    bars = load_market_data(cfg("BTC", f"csv:{BTC}", end_date="2013-06-30")).bars
    expect_error(lambda: validate_bars(bars.iloc[0:0], "BTC", "test"), "BTC from test: no bars")
    expect_error(lambda: validate_bars(bars.drop(columns="volume"), "BTC", "test"),
                 "BTC from test: bars need exactly columns date, open, high, low, close, adjcp, volume "
                 "(missing: volume; unexpected: -)")
    shifted = bars.assign(date=bars["date"] + pd.Timedelta(hours=12))
    expect_error(lambda: validate_bars(shifted, "BTC", "test"),
                 "BTC from test: bar dates must be midnight (daily bars), got 2013-04-29 12:00:00")


# --- digest and MLflow ---------------------------------------------------------------------------


def test_digest_is_stable_and_follows_every_price(tmp_path):
    first = load_market_data(cfg("BTC", f"csv:{BTC}", backtest_lookback_days=3660))
    again = load_market_data(cfg("BTC", f"csv:{BTC}", backtest_lookback_days=3660))
    assert first.digest == again.digest and len(first.digest) == 64
    assert first.digest == BTC_DIGEST  # same on every machine and every run
    nudged = first.bars.copy()
    nudged.loc[1500, "close"] = np.nextafter(nudged.loc[1500, "close"], np.inf)
    assert MarketData("BTC", first.source, nudged).digest != first.digest
    assert MarketData("BTC", "elsewhere", first.bars).digest == first.digest  # bars only


def test_mlflow_input_carries_source_and_digest(tmp_path, monkeypatch):
    import mlflow
    from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE

    from tradeflow.data.mlflow_source import MarketDataSource

    md = load_market_data(cfg("AAPL", f"csv:{DJ_VALID},{DJ_TEST}"))
    dataset = md.to_mlflow_dataset()
    assert dataset.name == "AAPL-bars" and dataset.digest == md.digest[:32]
    assert len(dataset.digest) <= MAX_DATASET_DIGEST_SIZE  # what the SQL stores refuse beyond
    assert dataset.source.to_dict() == {"uri": md.source}
    # The file store round-trips inputs in milliseconds; a SQLite store takes ~10 s to create
    # (the slow train_backtest tests log through one).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as run:
            md.log_mlflow_input(context="training")
        logged = mlflow.get_run(run.info.run_id).inputs.dataset_inputs[0]
    finally:
        mlflow.set_tracking_uri(None)
    assert logged.dataset.digest == md.digest[:32] and logged.dataset.name == "AAPL-bars"
    tags = {t.key: t.value for t in logged.tags}
    assert tags.items() >= {"mlflow.data.context": "training", "tradeflow.digest": md.digest,
                            "tradeflow.synthetic": "false", "tradeflow.rows": "505"}.items()
    source = mlflow.data.get_source(logged)
    assert isinstance(source, MarketDataSource) and source.uri == md.source


# --- synthetic -----------------------------------------------------------------------------------


def test_synthetic_is_deterministic_labelled_and_never_dated_today():
    a = load_market_data(cfg("AAPL", "synthetic"))
    b = load_market_data(cfg("AAPL", "synthetic"))
    pd.testing.assert_frame_equal(a.bars, b.bars)
    assert a.digest == b.digest
    assert a.synthetic and a.notes[0] == SYNTHETIC_NOTE == "SYNTHETIC data: generated, not market prices"
    assert a.source == "synthetic:AAPL?seed=42&generator=gbm-regime-v1&end=2024-12-31"
    assert a.end == pd.Timestamp(SYNTHETIC_END)
    assert a.start >= a.end - pd.Timedelta(days=1095)
    assert (a.bars["date"].dt.dayofweek < 5).all() and a.rows == 782
    assert a.bars["volume"].notna().all()
    assert load_market_data(cfg("AAPL", "synthetic", seed=7)).digest != a.digest
    assert load_market_data(cfg("MSFT", "synthetic")).digest != a.digest
    ended = load_market_data(cfg("AAPL", "synthetic", end_date="2023-06-30", backtest_lookback_days=90))
    assert ended.end == pd.Timestamp("2023-06-30") and ended.start >= pd.Timestamp("2023-04-01")


# --- HTTP sources against a real local server -----------------------------------------------------


class Services:
    """What the fake WebUI backend and IBKR gateway answer, and what they were asked."""

    def __init__(self) -> None:
        self.cache: dict[str, dict[str, Any]] = {}
        self.contracts: dict[str, list[dict[str, Any]]] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.failures_left = 0
        self.requests: list[tuple[str, dict[str, list[str]]]] = []

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        self.requests.append((path, query))
        if path.startswith("/down/"):
            return 503, {"detail": "database unavailable"}
        if path.startswith("/flaky/"):
            path = path.removeprefix("/flaky")
            if self.failures_left > 0:
                self.failures_left -= 1
                return 502, {"detail": "bad gateway"}
        if path.startswith("/api/market-data/cache/"):
            symbol = path.rsplit("/", 1)[1]
            if symbol not in self.cache:
                return 404, {"detail": f"No cached data for symbol: {symbol}"}
            return 200, self.cache[symbol]
        if path == "/v1/api/iserver/secdef/search":
            return 200, self.contracts.get(query["symbol"][0], [])
        if path == "/v1/api/iserver/marketdata/history":
            return 200, self.history[query["conid"][0]]
        return 404, {"detail": "Not Found"}


class _ServicesServer(BackgroundHTTPServer):
    name = "data-services"

    def __init__(self, state: Services) -> None:
        super().__init__()
        self.state = state

    def handle(self, request: Request) -> Reply:
        status, body = self.state.answer(request.path, {k: [v] for k, v in request.query.items()})
        return Reply(status, body)


@pytest.fixture
def services() -> Iterator[tuple[Services, str]]:
    state = Services()
    with _ServicesServer(state) as server:
        yield state, server.url


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(data_ibkr, "POLICY", data_ibkr.RetryPolicy(attempts=3, backoff_s=0.01))


def ibkr_bars(frame: pd.DataFrame, *, with_volume: bool) -> list[dict[str, Any]]:
    """Rows as IBKR history bars, stamped at the 09:30 New York open (14:30 UTC)."""
    opens = pd.to_datetime(frame["date"]) + pd.Timedelta(hours=14, minutes=30)
    stamps = opens.astype("datetime64[ms]").astype("int64")
    bars = []
    for stamp, row in zip(stamps, frame.itertuples()):
        bar = {"t": int(stamp), "o": row.open, "h": row.high, "l": row.low, "c": row.close}
        if with_volume:
            bar["v"] = row.volume
        bars.append(bar)
    return bars


def cache_entry(bars: list[dict[str, Any]], *, expired: bool, cached_at: str) -> dict[str, Any]:
    return {"symbol": "AAPL", "conid": 265598, "source": "ibkr", "cached_at": cached_at,
            "expires_at": cached_at, "is_expired": expired, "data_type": "daily",
            "ohlcv_data": {"symbol": "AAPL", "data": bars}}


def test_backend_merges_cache_entries_newest_first(services, monkeypatch):
    state, url = services
    real = pd.concat([upstream(DJ_VALID, "AAPL"), upstream(DJ_TEST, "AAPL")], ignore_index=True)
    old, new = real[real["date"] <= "2021-01-29"], real[real["date"] >= "2021-01-04"]
    stale = old.assign(close=np.where(old["date"] >= "2021-01-04", old["close"] * 1.01, old["close"]))
    state.cache["AAPL"] = {"symbol": "AAPL", "count": 2, "data": [
        cache_entry(ibkr_bars(new, with_volume=False), expired=False, cached_at="2022-01-03T08:00:00Z"),
        cache_entry(ibkr_bars(stale, with_volume=False), expired=True, cached_at="2021-02-01T08:00:00Z"),
    ]}
    monkeypatch.setenv("BACKEND_API_URL", url + "/")
    md = load_market_data(cfg("AAPL", "backend"))
    assert md.source == f"backend:{url}/api/market-data/cache/AAPL"
    assert md.rows == 505 and md.start == pd.Timestamp("2020-01-02") and md.end == pd.Timestamp("2021-12-31")
    np.testing.assert_array_equal(md.bars["close"].to_numpy(), real["close"].to_numpy())  # newer entry won
    assert (md.bars["adjcp"] == md.bars["close"]).all() and md.bars["volume"].isna().all()
    assert md.notes[:2] == ("backend: merged 2 cache entries (1 expired); 19 overlapping bars taken from the newer entry",
                            "adjcp absent; adjcp = close (IBKR bars are not dividend-adjusted)")
    assert state.requests == [("/api/market-data/cache/AAPL", {"data_type": ["daily"]})]


def test_backend_unknown_symbol_and_missing_url(services, monkeypatch):
    state, url = services
    expect_error(lambda: load_market_data(cfg("AAPL", "backend")),
                 "AAPL: data_source=backend needs BACKEND_API_URL (the WebUI backend, e.g. http://localhost:8000); "
                 "set it, or use data_source=csv:<path> or synthetic")
    monkeypatch.setenv("BACKEND_API_URL", url)
    expect_error(lambda: load_market_data(cfg("ZZZZ", "backend")),
                 f"no cached market data for symbol ZZZZ at the backend ({url}/api/market-data/cache/ZZZZ)")


def test_backend_retries_server_errors_then_gives_up(services, monkeypatch):
    state, url = services
    synthetic = load_market_data(cfg("AAPL", "synthetic", backtest_lookback_days=60)).bars
    state.cache["AAPL"] = {"symbol": "AAPL", "count": 1, "data": [
        cache_entry(ibkr_bars(synthetic, with_volume=True), expired=False, cached_at="2025-01-02T08:00:00Z")]}
    state.failures_left = 2
    monkeypatch.setenv("BACKEND_API_URL", f"{url}/flaky")
    md = load_market_data(cfg("AAPL", "backend", backtest_lookback_days=60))
    assert len(state.requests) == 3 and md.rows == len(synthetic)
    np.testing.assert_array_equal(md.bars["volume"].to_numpy(), synthetic["volume"].to_numpy())

    monkeypatch.setenv("BACKEND_API_URL", f"{url}/down")
    source = f"backend:{url}/down/api/market-data/cache/AAPL"
    expect_error(lambda: load_market_data(cfg("AAPL", "backend")),
                 f"AAPL from {source}: WebUI backend at {url}/down answered 503 after 4 tries: "
                 'GET /api/market-data/cache/AAPL: "database unavailable"')

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("BACKEND_API_URL", f"http://127.0.0.1:{closed}")
    with pytest.raises(DataError) as caught:
        load_market_data(cfg("AAPL", "backend"))
    assert str(caught.value).startswith(
        f"AAPL from backend:http://127.0.0.1:{closed}/api/market-data/cache/AAPL: "
        f"WebUI backend at http://127.0.0.1:{closed} unreachable after 4 tries")


def test_ibkr_resolves_conid_then_loads_history(services, monkeypatch):
    state, url = services
    synthetic = load_market_data(cfg("AAPL", "synthetic", end_date="2021-12-31", backtest_lookback_days=200)).bars
    state.contracts["AAPL"] = [{"conid": "265598", "companyName": "APPLE INC", "symbol": "AAPL"},
                               {"conid": "38708077", "companyName": "APPLE INC", "symbol": "AAPL"}]
    state.history["265598"] = {"symbol": "AAPL", "data": ibkr_bars(synthetic, with_volume=True)}
    monkeypatch.setenv("IBKR_API_URL", f"{url}/v1/api")
    monkeypatch.setenv("IBKR_VERIFY_TLS", "false")
    md = load_market_data(cfg("AAPL", "ibkr", end_date="2021-12-31", backtest_lookback_days=200))
    pd.testing.assert_frame_equal(md.bars, synthetic)
    period = history_period(cfg("AAPL", "ibkr", end_date="2021-12-31", backtest_lookback_days=200), date.today())
    assert md.source == f"ibkr:{url}/v1/api/iserver/marketdata/history?conid=265598&period={period}&bar=1d"
    assert state.requests[1] == ("/v1/api/iserver/marketdata/history",
                                 {"conid": ["265598"], "period": [period], "bar": ["1d"]})
    expect_error(lambda: load_market_data(cfg("ZZZZ", "ibkr")),
                 f"ZZZZ: IBKR has no contract for symbol ZZZZ ({url}/v1/api/iserver/secdef/search)")
    monkeypatch.setenv("IBKR_VERIFY_TLS", "maybe")
    expect_error(lambda: load_market_data(cfg("AAPL", "ibkr")),
                 "AAPL: IBKR_VERIFY_TLS='maybe' is not a boolean (use true or false)")


def test_ibkr_history_period_covers_lookback_and_end_date_gap():
    today = date(2025, 6, 30)
    assert history_period(cfg("AAPL", "ibkr", backtest_lookback_days=365), today) == "1y"
    assert history_period(cfg("AAPL", "ibkr", backtest_lookback_days=1095), today) == "3y"
    assert history_period(cfg("AAPL", "ibkr", backtest_lookback_days=365, end_date="2024-06-30"), today) == "2y"
    assert math.ceil((365 + 365) / 365) == 2


def test_ibkr_bar_without_close_is_refused(services, monkeypatch):
    state, url = services
    state.contracts["AAPL"] = [{"conid": 265598}]
    state.history["265598"] = {"data": [{"t": 1609770600000, "o": 133.5, "h": 133.6, "l": 126.8, "v": 1.0}]}
    monkeypatch.setenv("IBKR_API_URL", f"{url}/v1/api")
    with pytest.raises(DataError, match=r"^AAPL from ibkr:.*conid=265598.*: bar 0 has no numeric 'c' \(got None\)$"):
        load_market_data(cfg("AAPL", "ibkr"))


# --- yfinance (optional extra) -------------------------------------------------------------------


def test_yfinance_without_the_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "yfinance", None)  # import yfinance -> ImportError, installed or not
    expect_error(lambda: load_market_data(cfg("AAPL", "yfinance")),
                 "data_source=yfinance needs the optional extra: pip install 'tradeflow[yfinance]'")
