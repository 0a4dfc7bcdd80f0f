"""The WebUI's TradingSignal rules (``signal_data`` of a ``signal`` artifact), declared once.

The review (``review_agents.signal_payload``) builds ``signal_data`` and checks it before logging it; the
WebUI client (``tradeflow.webui``) checks it again before posting. Both call ``check_trading_signal``
here, so the two can never disagree about what the WebUI renders. A payload that breaks a rule is
rendered wrong or rejected by the WebUI, so it is refused before it is sent. No dependencies: the
review process and the Airflow side import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from tradeflow.errors import InputError

ACTIONS: Final = ("BUY", "SELL", "HOLD")
#: Price levels: a positive number, or null when the signal has none (HOLD).
PRICE_FIELDS: Final = ("support_level", "resistance_level", "suggested_entry_price", "suggested_stop_loss",
                       "suggested_take_profit")
#: Ratios and sizes: a non-negative number, or null.
RATIO_FIELDS: Final = ("r_multiple", "risk_reward_ratio", "position_size_percent")
REQUIRED_FIELDS: Final = ("action", "confidence", "confidence_score", "reasoning", "timeframe_analyzed", "model_used")
TEXT_FIELDS: Final = ("timeframe_analyzed", "model_used", "symbol")


class SignalError(InputError):
    """``signal_data`` breaks a TradingSignal rule; the message lists every broken rule on one line."""


def confidence_band(score: float) -> str:
    """HIGH (>= 80), MEDIUM (50-79), LOW (< 50), on the 0-100 score."""
    if score >= 80:
        return "HIGH"
    if score >= 50:
        return "MEDIUM"
    return "LOW"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def signal_problems(data: Mapping[str, Any]) -> list[str]:
    """Every TradingSignal rule ``data`` breaks (empty: it passes)."""
    problems = [f"'{name}' is required" for name in REQUIRED_FIELDS if data.get(name) in (None, "")]
    if data.get("action") not in ACTIONS:
        problems.append(f"action {data.get('action')!r} is not BUY, SELL or HOLD")
    score = data.get("confidence_score")
    if not _is_number(score) or not 0 <= score <= 100:
        problems.append(f"confidence_score {score!r} is not a number in 0..100")
    elif data.get("confidence") != confidence_band(score):
        problems.append(f"confidence {data.get('confidence')!r} does not match confidence_score {score:g} "
                        f"(expected {confidence_band(score)})")
    reasoning = data.get("reasoning")
    if not isinstance(reasoning, str) or len(reasoning.strip()) < 10:
        problems.append("reasoning must be at least 10 characters")
    for name in TEXT_FIELDS:
        if data.get(name) is not None and not isinstance(data[name], str):
            problems.append(f"{name} must be a string")
    for name in PRICE_FIELDS:
        value = data.get(name)
        if value is not None and (not _is_number(value) or value <= 0):
            problems.append(f"{name} {value!r} must be a positive number or null")
    for name in RATIO_FIELDS:
        value = data.get(name)
        if value is not None and (not _is_number(value) or value < 0):
            problems.append(f"{name} {value!r} must be a non-negative number or null")
    factors = data.get("key_factors", [])
    if not isinstance(factors, list) or not all(isinstance(f, str) for f in factors):
        problems.append("key_factors must be a list of strings")
    return problems


def check_trading_signal(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return ``data`` if it passes every rule, else raise ``SignalError`` naming each broken one."""
    if problems := signal_problems(data):
        raise SignalError("signal_data breaks the WebUI TradingSignal rules: " + "; ".join(problems))
    return data


__all__ = ["ACTIONS", "PRICE_FIELDS", "RATIO_FIELDS", "REQUIRED_FIELDS", "SignalError", "check_trading_signal",
           "confidence_band", "signal_problems"]
