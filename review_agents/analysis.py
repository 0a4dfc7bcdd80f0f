"""Deterministic reading of the evidence, shared by the rule-based reviewer and the guardrails.

One scoring function, used twice: the ``rules`` client reasons with it, and the guardrails use
its technical stance to check that any directional LLM decision has evidence on its side.
Only trusted fields are read; ``untrusted`` text never reaches this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .evidence_view import Evidence
from .schema import Action

Trend = Literal["bullish", "bearish", "neutral"]
Quality = Literal["good", "mixed", "poor", "unknown"]
RiskLevel = Literal["normal", "elevated", "high"]

#: |score| at or above this makes a directional call (technical stance and combined action).
DIRECTIONAL_THRESHOLD = 1.5
#: How much a model suggestion weighs, by backtest quality.
MODEL_WEIGHT: dict[Quality, float] = {"good": 1.5, "mixed": 0.75, "poor": 0.25, "unknown": 0.5}
#: Annualised volatility bands.
ELEVATED_VOL = 0.45
HIGH_VOL = 0.80
#: Default level distances in ATRs (further limited by ``atr_multiple_cap``): a 1.5 R trade.
STOP_ATR = 2.0
TARGET_ATR = 3.0
MAX_RULES_CONFIDENCE = 0.9
SYNTHETIC_CONFIDENCE_CAP = 0.5


@dataclass(frozen=True)
class Assessment:
    """What the evidence says, with the reasons as short factor strings."""

    trend: Trend
    technical_score: float
    technical_stance: Action
    technical_factors: list[str]
    model_suggestion: Action | None
    model_quality: Quality
    model_factors: list[str]
    risk_level: RiskLevel
    risk_factors: list[str]
    combined_score: float
    action: Action
    confidence: float
    levels: dict[str, float | None] = field(default_factory=dict)


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _technical(ev: Evidence) -> tuple[Trend, float, list[str]]:
    ind = ev.indicators
    factors: list[str] = []
    trend_points = 0.0
    if ind.sma_20 is not None:
        above = ind.close > ind.sma_20
        trend_points += 1 if above else -1
        factors.append(f"close {ind.close:.2f} {'above' if above else 'below'} SMA20 {ind.sma_20:.2f}")
    if ind.sma_20 is not None and ind.sma_50 is not None:
        rising = ind.sma_20 > ind.sma_50
        trend_points += 1 if rising else -1
        factors.append(f"SMA20 {'above' if rising else 'below'} SMA50 {ind.sma_50:.2f}")
    if ind.return_20d is not None:
        trend_points += 0.5 * _sign(ind.return_20d)
        factors.append(f"20-bar return {ind.return_20d:+.1%}")
    trend: Trend = "neutral"
    if trend_points >= DIRECTIONAL_THRESHOLD:
        trend = "bullish"
    elif trend_points <= -DIRECTIONAL_THRESHOLD:
        trend = "bearish"

    rsi_points = 0.0
    if ind.rsi_14 is not None:
        rsi = ind.rsi_14
        if rsi >= 70:
            rsi_points, label = -1.0, "overbought"
        elif rsi <= 30:
            rsi_points, label = 1.0, "oversold"
        elif rsi >= 55:
            rsi_points, label = 0.5, "positive momentum"
        elif rsi <= 45:
            rsi_points, label = -0.5, "negative momentum"
        else:
            label = "neutral momentum"
        factors.append(f"RSI14 {rsi:.1f} ({label})")
    return trend, trend_points + rsi_points, factors


def _model_quality(ev: Evidence) -> tuple[Quality, list[str]]:
    sharpe = ev.metric("test_sharpe")
    excess = ev.metric("excess_total_return")
    drawdown = ev.metric("test_max_drawdown")
    trades = ev.metric("test_num_trades")
    if sharpe is None and excess is None:
        return "unknown", ["no backtest metrics"]
    factors = []
    if sharpe is not None:
        factors.append(f"backtest Sharpe {sharpe:.2f}")
    if excess is not None:
        factors.append(f"excess return vs buy-and-hold {excess:+.1%}")
    if drawdown is not None:
        factors.append(f"max drawdown {abs(drawdown):.1%}")
    dd = abs(drawdown) if drawdown is not None else 0.0
    if (sharpe is not None and sharpe < 0) or (excess is not None and excess < -0.05) or dd > 0.40 or trades == 0:
        return "poor", factors
    if (sharpe is None or sharpe >= 0.5) and (excess is None or excess >= 0) and dd <= 0.25:
        return "good", factors
    return "mixed", factors


def _risk(ev: Evidence) -> tuple[RiskLevel, list[str]]:
    vol = ev.indicators.volatility_annualised
    factors = [f"ATR14 {ev.atr:.2f} ({ev.atr / ev.close:.1%} of price)"]
    if vol is None:
        return "normal", factors
    factors.append(f"annualised volatility {vol:.0%}")
    if vol >= HIGH_VOL:
        return "high", factors
    if vol >= ELEVATED_VOL:
        return "elevated", factors
    return "normal", factors


def _levels(ev: Evidence, action: Action, atr_cap: float) -> dict[str, float | None]:
    if action == "HOLD":
        return {"entry": None, "stop_loss": None, "take_profit": None}
    close, atr = ev.close, ev.atr
    stop_d, target_d = min(STOP_ATR, atr_cap) * atr, min(TARGET_ATR, atr_cap) * atr
    side = 1 if action == "BUY" else -1
    target = close + side * target_d
    return {
        "entry": round(close, 4),
        "stop_loss": round(close - side * stop_d, 4),
        "take_profit": round(target, 4),
    }


def technical_stance(score: float) -> Action:
    if score >= DIRECTIONAL_THRESHOLD:
        return "BUY"
    if score <= -DIRECTIONAL_THRESHOLD:
        return "SELL"
    return "HOLD"


def assess(ev: Evidence, *, atr_cap: float = 4.0) -> Assessment:
    """Score trend, momentum, model suggestion, backtest quality and volatility into a call."""
    trend, tech_score, tech_factors = _technical(ev)
    quality, model_factors = _model_quality(ev)
    risk, risk_factors = _risk(ev)
    suggestion = ev.model.suggestion
    weight = MODEL_WEIGHT[quality] * (0.5 if ev.data.synthetic else 1.0)
    direction = {"BUY": 1, "SELL": -1}.get(suggestion or "HOLD", 0)
    combined = tech_score + direction * weight
    action = technical_stance(combined)

    if action == "HOLD":
        confidence = 0.5 + 0.1 * (DIRECTIONAL_THRESHOLD - abs(combined))
    else:
        confidence = min(MAX_RULES_CONFIDENCE, 0.45 + 0.1 * abs(combined))
        confidence -= {"normal": 0.0, "elevated": 0.1, "high": 0.2}[risk]
        if suggestion is not None and suggestion != action:
            confidence = min(confidence, 0.65)
    if ev.data.synthetic:
        confidence = min(confidence, SYNTHETIC_CONFIDENCE_CAP)
    return Assessment(
        trend=trend,
        technical_score=round(tech_score, 3),
        technical_stance=technical_stance(tech_score),
        technical_factors=tech_factors,
        model_suggestion=suggestion,
        model_quality=quality,
        model_factors=model_factors,
        risk_level=risk,
        risk_factors=risk_factors,
        combined_score=round(combined, 3),
        action=action,
        confidence=round(max(0.0, confidence), 2),
        levels=_levels(ev, action, atr_cap),
    )
