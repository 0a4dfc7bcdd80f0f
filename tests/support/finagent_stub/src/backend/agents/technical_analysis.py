"""tradeflow's own test double for upstream FinAgent's technical analysis (not upstream code).

Why at upstream's module path: the path is the interface. ``tradeflow.engines.finagent.compat``
puts ``FINAGENT_BACKEND`` (here ``tests/support/finagent_stub/src/backend``) on ``sys.path``, imports
``agents.technical_analysis`` and feeds our bars through its ``yfUtils.get_stock_data``; CI has no
upstream, so this file stands where upstream's would. It offers only what that adapter and the
tests use:

* ``yfUtils.get_stock_data``: raises until the adapter replaces it (bars come only from us);
* ``run_enhanced_technical_analysis(symbol)`` (async): the five votes at the keys the engine reads
  (``tradeflow/engines/finagent/rule.py``), the last close and a ``final_decision``. The votes are
  five plain rules of ours on the window (momentum, a faded 10-bar move, close vs its 20-bar mean,
  place in the 14-bar range, 30-bar trend), so the calibration has distinct signals to weigh;
* ``CALLS``: ``(symbol, bars seen, last bar's date)`` per call (the no-look-ahead test);
* ``FINAGENT_STUB_MODE`` = ok | raise | junk | network: the failures the engine must name.
"""

import os
import socket

CALLS = []

#: vote -> (section, key) in the analysis, and its labels for -1, 0, +1
VOTES = {
    "ema": ("ema", "signal", ("bearish", "neutral", "bullish")),
    "rsi": ("rsi", "signal", ("overbought", "neutral", "oversold")),
    "macd": ("macd", "trend", ("bearish", "neutral", "bullish")),
    "stochastics": ("stochastics", "signal", ("overbought", "neutral", "oversold")),
    "adx": ("adx", "trend_direction", ("bearish_trend", "neutral_trend", "bullish_trend")),
}


class yfUtils:  # noqa: N801 - the name the adapter looks up
    @staticmethod
    def get_stock_data(symbol, start_date, end_date, save_path=None):
        raise RuntimeError("stub yfUtils.get_stock_data was not replaced by the adapter")


def _sign(value, dead_band=0.0):
    return 1 if value > dead_band else -1 if value < -dead_band else 0


def _votes(close):
    last, n = close[-1], len(close)
    window = close[-14:]
    place = (last - window.min()) / max(window.max() - window.min(), 1e-9)
    return {
        "ema": _sign(last / close[max(-n, -6)] - 1, 0.005),
        "rsi": -_sign(last / close[max(-n, -11)] - 1, 0.05),
        "macd": _sign(last - close[-20:].mean()),
        "stochastics": 1 if place < 0.2 else -1 if place > 0.8 else 0,
        "adx": _sign(last / close[max(-n, -30)] - 1, 0.02),
    }


async def run_enhanced_technical_analysis(ticker_symbol):
    mode = os.environ.get("FINAGENT_STUB_MODE", "ok")
    if mode == "network":
        socket.create_connection(("finance.invalid", 443), timeout=1)  # the adapter must block this
    if mode == "raise":
        raise ValueError("stub upstream failure")
    bars = yfUtils.get_stock_data(ticker_symbol, None, None)
    CALLS.append((ticker_symbol, len(bars), bars.index[-1]))
    if mode == "junk":
        return {"ticker_symbol": ticker_symbol, "indicators": {"ema": {"signal": "sideways"}}}
    close = bars["Close"].to_numpy(float)
    votes = _votes(close)
    indicators = {"close_price": float(close[-1])}
    for name, (section, key, labels) in VOTES.items():
        indicators[section] = {key: labels[votes[name] + 1]}
    score = sum(votes.values())
    probability = round(0.5 + 0.5 * score / len(votes), 3)
    rating = "buy" if probability >= 0.66 else "sell" if probability <= 0.33 else "hold"
    return {"ticker_symbol": ticker_symbol, "indicators": indicators,
            "final_decision": {"score": score, "max_score_possible": len(votes), "probability": probability,
                               "rating": rating}}
