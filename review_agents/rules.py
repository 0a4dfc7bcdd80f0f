"""The offline reviewer: a deterministic ``ChatCompletionClient`` that reasons from the evidence.

It lets the whole AutoGen team run with no network and no key (CI, air-gapped runs, the
default provider), and it is a real reviewer rather than a canned reply: each role answers in
character from ``analysis.assess``. It reads only the trusted ``<evidence>`` block, so
untrusted text cannot influence it. Token counts are approximate (4 characters a token) but
deterministic, so token caps behave the same on every run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelInfo,
    RequestUsage,
    SystemMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ValidationError

from .analysis import STOP_ATR, Assessment, assess
from .evidence_view import EvidenceError, parse_evidence
from .prompts import DECISION_MAKER, FORECASTER, RISK_REVIEWER, extract_evidence
from .schema import DecisionDraft

RULES_MODEL_NAME = "rule-based (tradeflow-rules-v1)"
_ROLE_RE = re.compile(r"^ROLE: (\w+)", re.MULTILINE)
_CONTEXT_TOKENS = 128_000


def approx_tokens(text: str) -> int:
    """About 4 characters per token, plus a small per-message overhead; deterministic."""
    return math.ceil(len(text) / 4) + 4


def _text(message: LLMMessage) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    return " ".join(str(part) for part in content if isinstance(part, str))


class RuleBasedChatCompletionClient(ChatCompletionClient):
    """Answers as ``technical_analyst``, ``risk_reviewer`` or ``decision_maker`` from the evidence."""

    model_name = RULES_MODEL_NAME

    def __init__(self, *, atr_multiple_cap: float = 4.0) -> None:
        self._atr_cap = atr_multiple_cap
        self._last = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)

    # --- the reasoning ----------------------------------------------------------------------

    def _answer(self, messages: Sequence[LLMMessage], json_output: bool | type[BaseModel] | None) -> str:
        system = "\n".join(_text(m) for m in messages if isinstance(m, SystemMessage))
        role_match = _ROLE_RE.search(system)
        role = role_match.group(1) if role_match else ""
        evidence = next((e for m in messages if (e := extract_evidence(_text(m))) is not None), None)
        wants_json = role == DECISION_MAKER or bool(json_output)
        if evidence is None:
            return self._no_evidence(wants_json)
        try:
            ev = parse_evidence(evidence)
        except EvidenceError as exc:
            return self._no_evidence(wants_json, str(exc))
        verdict = assess(ev, atr_cap=self._atr_cap)
        if wants_json:
            return self._decision_json(verdict, json_output)
        if role == RISK_REVIEWER:
            return self._risk_text(ev, verdict)
        if role == FORECASTER:
            return self._forecaster_text(evidence)
        return self._technical_text(ev, verdict)

    @staticmethod
    def _technical_text(ev: Any, v: Assessment) -> str:
        ind = ev.indicators
        levels = []
        if ind.support is not None:
            levels.append(f"support {ind.support:.2f}")
        if ind.resistance is not None:
            levels.append(f"resistance {ind.resistance:.2f}")
        return (
            f"Trend is {v.trend} (technical score {v.technical_score:+.1f}): "
            f"{'; '.join(v.technical_factors) or 'no trend indicators'}. "
            f"{', '.join(levels).capitalize() or 'No support/resistance'}; ATR14 {ev.atr:.2f}.\n"
            f"Technical stance: {v.technical_stance}"
        )

    @staticmethod
    def _forecaster_text(evidence: dict[str, Any]) -> str:
        """Upstream FinAgent's analysis read as its forecaster's sections ask (technical overview,
        probability and confidence, recommendation), from the evidence's ``finagent`` section."""
        section = evidence.get("finagent") if isinstance(evidence.get("finagent"), dict) else {}
        analysis = section.get("analysis") if isinstance(section.get("analysis"), dict) else {}
        indicators = analysis.get("indicators") if isinstance(analysis.get("indicators"), dict) else {}
        calibrated = section.get("calibrated") if isinstance(section.get("calibrated"), dict) else {}
        if not indicators or not calibrated:
            return "No upstream FinAgent analysis in the evidence.\nForecast: HOLD"

        def label(key: str, field: str) -> str:
            node = indicators.get(key)
            return str(node.get(field)) if isinstance(node, dict) else "n/a"

        prob = calibrated.get("probability")
        confidence = "high" if isinstance(prob, (int, float)) and (prob >= 0.66 or prob <= 0.33) else "moderate"
        rating = str(calibrated.get("rating", "hold")).upper()
        return (
            f"Technical overview: EMA crossover {label('ema', 'signal')}, RSI {label('rsi', 'signal')}, "
            f"MACD {label('macd', 'trend')}, stochastics {label('stochastics', 'signal')}, "
            f"ADX {label('adx', 'trend_direction')} ({label('adx', 'trend_strength')}). "
            f"Upstream's own rule rates it {str(section.get('upstream_rating', 'n/a')).upper()} at probability "
            f"{section.get('upstream_probability')}; the calibrated rule gives {prob} ({confidence} confidence) "
            f"and {rating}. No fundamentals or news in the data. Past performance is not indicative of future "
            f"results.\nForecast: {rating if rating in ('BUY', 'SELL') else 'HOLD'}"
        )

    @staticmethod
    def _risk_text(ev: Any, v: Assessment) -> str:
        model = ev.model
        scores = ", ".join(f"{k}: {s:.2f}" for k, s in sorted(model.scores.items()) if s is not None)
        who = " ".join(part for part in (model.algorithm, f"v{model.version}" if model.version else None) if part)
        data = f"{ev.data.rows} rows" if ev.data.rows is not None else "row count unknown"
        if ev.data.synthetic:
            data += ", SYNTHETIC data (backtest says nothing about real markets)"
        return (
            f"Model {who or '(unnamed)'} suggests {v.model_suggestion or 'nothing'}"
            f"{f' (scores {scores})' if scores else ''}. "
            f"Backtest: {'; '.join(v.model_factors)}; quality {v.model_quality}. Data: {data}. "
            f"Risk: {'; '.join(v.risk_factors)}; level {v.risk_level}. "
            f"Stop distance: {STOP_ATR:g} ATR.\n"
            f"Risk view: {v.model_quality} model evidence with {v.risk_level} volatility risk."
        )

    @staticmethod
    def _decision_payload(v: Assessment) -> dict[str, Any]:
        contradicts = v.model_suggestion is not None and v.action != v.model_suggestion
        reason = None
        if contradicts:
            reason = (
                f"model suggests {v.model_suggestion} but the technical score {v.technical_score:+.1f} "
                f"({v.trend}) and {v.model_quality} backtest quality give {v.action}"
            )
        factors = [v.technical_factors[0] if v.technical_factors else f"trend {v.trend}"]
        factors += [f"model suggests {v.model_suggestion or 'nothing'} ({v.model_quality} backtest)"]
        factors += v.technical_factors[1:3] + v.risk_factors[-1:]
        return {
            "action": v.action,
            "confidence": v.confidence,
            "entry": v.levels.get("entry"),
            "stop_loss": v.levels.get("stop_loss"),
            "take_profit": v.levels.get("take_profit"),
            "horizon": "5 bars",
            "key_factors": factors[:6],
            "rationale": (
                f"{v.action}: {v.trend} trend (technical score {v.technical_score:+.1f}), model suggests "
                f"{v.model_suggestion or 'nothing'} with {v.model_quality} backtest quality, "
                f"{v.risk_level} volatility; combined score {v.combined_score:+.2f}."
            ),
            "contradicts_model": contradicts,
            "contradiction_reason": reason,
        }

    def _decision_json(self, v: Assessment, json_output: bool | type[BaseModel] | None) -> str:
        payload = self._decision_payload(v)
        schema = json_output if isinstance(json_output, type) and issubclass(json_output, BaseModel) else DecisionDraft
        try:  # honour the requested structured type, not just our own
            return schema.model_validate(payload).model_dump_json()
        except ValidationError as exc:
            raise ValueError(f"rule-based client cannot fill {schema.__name__}: {exc.errors()[0]['msg']}") from None

    @staticmethod
    def _no_evidence(wants_json: bool, why: str = "no <evidence> block in the conversation") -> str:
        if not wants_json:
            return f"I cannot review without evidence: {why}."
        return json.dumps(
            {
                "action": "HOLD", "confidence": 0.0, "entry": None, "stop_loss": None, "take_profit": None,
                "horizon": "5 bars", "key_factors": ["no usable evidence"],
                "rationale": f"HOLD because the evidence is unusable: {why}.",
                "contradicts_model": False, "contradiction_reason": None,
            }
        )

    # --- ChatCompletionClient ---------------------------------------------------------------

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        content = self._answer(messages, json_output)
        usage = RequestUsage(prompt_tokens=self.count_tokens(messages), completion_tokens=approx_tokens(content))
        self._last = usage
        self._total = RequestUsage(
            prompt_tokens=self._total.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._total.completion_tokens + usage.completion_tokens,
        )
        return CreateResult(finish_reason="stop", content=content, usage=usage, cached=False)

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(messages, json_output=json_output, cancellation_token=cancellation_token)

    async def close(self) -> None:
        return None

    def actual_usage(self) -> RequestUsage:
        return self._last

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return sum(approx_tokens(_text(m)) for m in messages)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return max(0, _CONTEXT_TOKENS - self.count_tokens(messages))

    @property
    def capabilities(self) -> Any:  # deprecated in autogen-core; kept for the ABC
        return self.model_info

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=True,
            structured_output=True,
            family=RULES_MODEL_NAME,
            multiple_system_messages=True,
        )
