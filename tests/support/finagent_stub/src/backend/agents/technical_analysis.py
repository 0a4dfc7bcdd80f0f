"""Test double of upstream's agents/technical_analysis.py interface (see ../../../README.md)."""

import os
import socket

import pandas as pd

CALLS = []


class yfUtils:  # noqa: N801 - upstream's name
    def get_stock_data(symbol, start_date, end_date, save_path=None):
        raise RuntimeError("stub yfUtils.get_stock_data was not replaced by the adapter")


def _label(value, up, down, pos, neg):
    return pos if value > up else neg if value < down else "neutral"


async def run_enhanced_technical_analysis(ticker_symbol):
    mode = os.environ.get("FINAGENT_STUB_MODE", "ok")
    if mode == "network":
        socket.create_connection(("query1.finance.yahoo.com", 443), timeout=1)
    if mode == "raise":
        raise ValueError("stub upstream failure")
    df = yfUtils.get_stock_data(ticker_symbol, "2024-01-01", "2025-01-01")
    CALLS.append((ticker_symbol, len(df), df.index[-1]))
    if mode == "junk":
        return {"ticker_symbol": ticker_symbol, "indicators": {"ema": {"signal": "sideways"}}}
    close = df["Close"]
    fast, slow = close.ewm(span=12).mean(), close.ewm(span=26).mean()
    ret5 = close.iloc[-1] / close.iloc[-6] - 1
    spread = (fast.iloc[-1] - slow.iloc[-1]) / close.iloc[-1]
    prev_spread = (fast.iloc[-2] - slow.iloc[-2]) / close.iloc[-2]
    high, low = df["High"].rolling(14).max().iloc[-1], df["Low"].rolling(14).min().iloc[-1]
    k = 100 * (close.iloc[-1] - low) / max(high - low, 1e-9)
    votes = {
        "ema": "bullish" if prev_spread <= 0 < spread else "bearish" if prev_spread >= 0 > spread else "neutral",
        "rsi": _label(-ret5, 0.03, -0.03, "oversold", "overbought"),
        "macd": "bullish" if spread > 0 else "bearish",
        "stoch": "oversold" if k < 20 else "overbought" if k > 80 else "neutral",
        "adx": "bullish_trend" if close.iloc[-1] > close.iloc[-20:].mean() else "bearish_trend",
    }
    score = sum({"bullish": 1, "oversold": 1, "bullish_trend": 1, "bearish": -1, "overbought": -1,
                 "bearish_trend": -1}.get(v, 0) for v in votes.values())
    prob = 0.5 + 0.5 * score / 5
    return {
        "ticker_symbol": ticker_symbol,
        "indicators": {
            "close_price": float(close.iloc[-1]),
            "ema": {"short_ema": float(fast.iloc[-1]), "long_ema": float(slow.iloc[-1]), "signal": votes["ema"]},
            "rsi": {"value": 50.0, "signal": votes["rsi"]},
            "macd": {"value": float(spread), "signal_line": 0.0, "hist": float(spread), "trend": votes["macd"]},
            "stochastics": {"%K": float(k), "%D": float(k), "signal": votes["stoch"]},
            "adx": {"adx_value": 20.0, "+DI": 1.0, "-DI": 1.0, "trend_strength": "weak_or_sideways",
                    "trend_direction": votes["adx"]},
        },
        "final_decision": {"score": score, "max_score_possible": 5, "probability": round(prob, 3),
                           "rating": "buy" if prob >= 0.66 else "sell" if prob <= 0.33 else "hold"},
    }
