"""``evaluate`` with neither symbols nor data_source runs the default set: DJ30 and BTC 2014-2021."""

from __future__ import annotations

import pytest

import entrypoints.evaluate as ep


def test_the_default_set_spans_regimes_each_universe_on_its_own(monkeypatch):
    if not ep.DJ30_DIR.is_dir() or not ep.BTC_SOURCE.removeprefix("csv:").endswith("BTC.csv"):
        pytest.skip("../shared data not present")
    monkeypatch.delenv("TRADEFLOW_DATA_SOURCE", raising=False)
    seen = []
    monkeypatch.setattr("tradeflow.evaluation.step.evaluate_sets", lambda sets: seen.extend(sets))
    ep.main(["--epochs", "1"])
    names = [name for name, *_ in seen]
    assert names == ["dj30", "btc_2014_2021"]
    (_, dj30, dj_symbols, dj_spec), (_, btc, btc_symbols, btc_spec) = seen
    assert len(dj_symbols) == 29 and dj_spec.start_date == "" and dj30.review.position_mode == "long_only"
    assert btc_symbols == ["BTC"] and btc_spec.start_date == "2014-01-01" and btc.data_source == ep.BTC_SOURCE


def test_a_bad_start_date_fails_before_any_work(capsys):
    with pytest.raises(SystemExit):
        ep.main(["--start_date", "2014-13-01"])
    assert "start_date" in capsys.readouterr().err
