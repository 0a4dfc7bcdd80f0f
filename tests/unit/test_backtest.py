"""Accounting and metrics, checked against hand-computed ledgers."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from tradeflow.backtest import BacktestResult, bar_returns, performance_metrics, periods_per_year_for, simulate
from tradeflow.plots import drawdown_plot, equity_plot, trades_plot

E0 = 1000.0


def run(prices, targets, *, cost=0.01, max_volume=1, sizing="equity_fraction", dates=None) -> pd.DataFrame:
    return simulate(
        np.asarray(prices, dtype=float),
        np.asarray(targets),
        initial_amount=E0,
        transaction_cost_pct=cost,
        max_volume=max_volume,
        position_sizing=sizing,
        dates=dates,
    )


def test_always_long_is_buy_and_hold_less_the_entry_fee():
    prices = [100.0, 110.0, 99.0, 121.0]
    table = run(prices, [1, 1, 1, 1])
    # 10 units bought at 100 for 1000 plus a 10 fee; equity from then on = 10 * p - 10.
    assert table["units"].tolist() == [10.0] * 4
    assert table["cash"].tolist() == pytest.approx([-10.0] * 4)
    assert table["equity"].tolist() == pytest.approx([1000.0, 1090.0, 980.0, 1200.0])
    np.testing.assert_allclose(table["equity"][1:], table["benchmark"][1:] - E0 * 0.01)
    assert table["trade"].tolist() == [True, False, False, False]
    assert table["cost"].sum() == pytest.approx(10.0)


def test_always_short_on_a_rising_series_loses_the_rise_plus_the_fee():
    table = run([100.0, 110.0, 120.0], [-1, -1, -1])
    # short 10 units: cash = 1000 + 1000 - 10 = 1990; equity = 1990 - 10 * p
    assert table["units"].tolist() == [-10.0] * 3
    assert table["cash"].tolist() == pytest.approx([1990.0] * 3)
    assert table["equity"].tolist() == pytest.approx([1000.0, 890.0, 790.0])
    assert table["equity"].iloc[-1] == pytest.approx(E0 - (120.0 - 100.0) * 10 - 10.0)


def test_flat_earns_exactly_zero_and_metrics_stay_finite():
    table = run([100.0, 130.0, 70.0, 100.0], [0, 0, 0, 0])
    assert (table["equity"] == E0).all()
    assert not table["trade"].any() and (table["cost"] == 0).all()
    metrics = BacktestResult.from_table(table.assign(date=pd.date_range("2024-01-01", periods=4))).metrics
    for key in ("total_return", "annualised_return", "sharpe", "sortino", "calmar", "max_drawdown",
                "win_rate", "exposure", "turnover", "num_trades"):
        assert metrics[key] == 0.0, key
    assert all(math.isfinite(value) for value in metrics.values())


def test_a_round_trip_pays_the_fee_twice():
    table = run([100.0, 100.0, 100.0], [1, 0, 0])
    assert table["cost"].tolist() == pytest.approx([10.0, 10.0, 0.0])
    assert table["equity"].tolist() == pytest.approx([1000.0, 990.0, 980.0])
    assert table["trade"].tolist() == [True, True, False]


def test_short_then_cover_on_a_falling_series_profits():
    table = run([100.0, 80.0, 50.0], [-1, 0, 0])
    # short 10 at 100 (fee 10): cash 1990; at 80 equity 1990 - 800 = 1190; cover 10 at 80 (fee 8)
    assert table["equity"].tolist() == pytest.approx([1000.0, 1190.0, 1182.0])
    assert table["units"].tolist() == [-10.0, 0.0, 0.0]
    assert table["cash"].iloc[-1] == pytest.approx(1182.0)


def test_flipping_long_to_short_resizes_to_current_equity():
    table = run([100.0, 200.0, 200.0], [1, -1, -1])
    # at 200 the long is worth 2000 - 10 = 1990; short 1990/200 = 9.95 units: 19.95 units traded
    assert table["units"].tolist() == pytest.approx([10.0, -9.95, -9.95])
    assert table["cost"].tolist() == pytest.approx([10.0, 19.95 * 200 * 0.01, 0.0])
    assert table["equity"].iloc[-1] == pytest.approx(1990.0 - 39.9)


def test_partial_target_holds_that_fraction_of_equity():
    table = run([100.0, 120.0], [1, 1], cost=0.0, max_volume=2)
    assert table["units"].iloc[0] == pytest.approx(5.0)
    assert table["position"].iloc[0] == 0.5
    assert table["equity"].iloc[-1] == pytest.approx(1100.0)


def test_units_sizing_trades_whole_units_as_trademaster():
    table = run([100.0, 110.0], [2, 2], max_volume=3, sizing="units")
    assert table["units"].iloc[0] == 2.0
    assert table["cash"].iloc[0] == pytest.approx(1000.0 - 200.0 - 2.0)
    assert table["equity"].iloc[-1] == pytest.approx(798.0 + 220.0)


def test_last_decision_is_recorded_but_not_traded():
    table = run([100.0, 101.0], [0, 1])
    assert table["action"].tolist() == [0, 1]
    assert table["position"].tolist() == [0.0, 0.0]
    assert not table["trade"].iloc[-1] and table["cost"].iloc[-1] == 0.0


def test_a_ruined_account_is_closed_out_and_stops_trading():
    table = run([100.0, 250.0, 300.0, 200.0], [-1, -1, -1, -1], cost=0.0)
    # short 10 at 100, cash 2000; at 250 equity is -500: forced to buy back, flat from then on
    assert table["equity"].tolist() == pytest.approx([1000.0, -500.0, -500.0, -500.0])
    assert table["units"].tolist() == [-10.0, 0.0, 0.0, 0.0]
    metrics = BacktestResult.from_table(table.assign(date=pd.date_range("2024-01-01", periods=4))).metrics
    assert metrics["total_return"] == pytest.approx(-1.5)
    assert metrics["annualised_return"] == -1.0
    assert all(math.isfinite(value) for value in metrics.values())


def test_simulate_rejects_bad_inputs():
    with pytest.raises(ValueError, match="one target per price"):
        run([100.0, 101.0], [1])
    with pytest.raises(ValueError, match="-1..1"):
        run([100.0, 101.0], [2, 2])
    with pytest.raises(ValueError, match="positive"):
        run([100.0, 0.0], [1, 1])


def test_metrics_match_hand_computation():
    equity = np.array([100.0, 110.0, 99.0, 108.9])  # returns +10%, -10%, +10%
    metrics = performance_metrics(equity, [1, 1, 0, 0], [True, False, True, False], 252)
    assert metrics["total_return"] == pytest.approx(0.089)
    assert metrics["annualised_return"] == pytest.approx(1.089 ** (252 / 3) - 1)
    # mean 1/30, sample std sqrt(12)/30: per-bar ratio 1/sqrt(12), annualised by sqrt(252)
    assert metrics["sharpe"] == pytest.approx(math.sqrt(21))
    assert metrics["annualised_volatility"] == pytest.approx(math.sqrt(12) / 30 * math.sqrt(252))
    # downside deviation sqrt(0.01 / 3)
    assert metrics["sortino"] == pytest.approx(math.sqrt(84))
    assert metrics["max_drawdown"] == pytest.approx(-0.1)
    assert metrics["calmar"] == pytest.approx(metrics["annualised_return"] / 0.1)
    # held long over bars 1 and 2 (+10%, -10%), flat over bar 3
    assert metrics["win_rate"] == 0.5
    assert metrics["exposure"] == pytest.approx(2 / 3)
    assert metrics["turnover"] == pytest.approx(2 * 252 / 3)
    assert metrics["num_trades"] == 2


def test_benchmark_and_excess_metrics():
    metrics = performance_metrics([100.0, 110.0], [1, 1], [True, False], 252, benchmark=[100.0, 120.0])
    assert metrics["benchmark_total_return"] == pytest.approx(0.2)
    assert metrics["excess_total_return"] == pytest.approx(-0.1)
    assert metrics["excess_annualised_return"] == pytest.approx(1.1**252 - 1.2**252)


def test_bar_returns_are_zero_once_nothing_is_at_stake():
    np.testing.assert_allclose(bar_returns(np.array([100.0, -50.0, -20.0, 10.0])), [-1.5, 0.0, 0.0])


def test_periods_per_year_from_calendar():
    assert periods_per_year_for(pd.bdate_range("2024-01-01", periods=30)) == 252
    assert periods_per_year_for(pd.date_range("2024-01-01", periods=30)) == 365


def test_result_table_and_plots():
    dates = pd.date_range("2024-01-01", periods=6)
    table = run([100.0, 102.0, 101.0, 99.0, 103.0, 104.0], [1, 1, -1, 0, 1, 1], dates=dates)
    assert list(table.columns) == [
        "date", "price", "action", "position", "units", "cash", "equity", "benchmark", "drawdown", "trade", "cost",
    ]
    assert (table["drawdown"] <= 0).all()
    result = BacktestResult.from_table(table)
    assert result.metrics["num_trades"] == 4
    for make, kind in ((equity_plot, "equity"), (drawdown_plot, "drawdown"), (trades_plot, "trades")):
        figure = make(table, title="BTC test split")
        ax = figure.axes[0]
        assert ax.get_title().startswith(f"{kind}") and ax.get_title().endswith("BTC test split")
        assert ax.get_xlabel() == "date" and "(" in ax.get_ylabel()  # the axis names its unit
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue()[:4] == b"\x89PNG"
    markers = trades_plot(table).axes[0].collections
    assert sum(len(collection.get_offsets()) for collection in markers) == 4
