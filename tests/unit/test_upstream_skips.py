"""Upstream tests never skip silently: the terminal summary says which were skipped and why, by kind."""

from __future__ import annotations

from tests.conftest import skip_kind
from tests.support.data import shared_data_missing


def test_skip_reasons_are_told_apart():
    assert skip_kind("shared data not found at /x/shared/data/trademaster (CI has ../shared beside the clone)") \
        == "missing ../shared data"
    assert skip_kind("upstream TradeMaster is not importable (python package 'trademaster' is not installed)") \
        == "missing upstream"
    assert skip_kind("engine 'finagent' is unavailable: upstream akshata29/finagent is not installed") == "missing upstream"
    assert skip_kind("upstream TradeMaster is installed here; this checks the message where it is not") \
        == "not applicable here"
    reason = shared_data_missing()
    assert reason is None or skip_kind(reason) == "missing ../shared data"
