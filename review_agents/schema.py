"""Typed shapes that cross the package boundary: the decision, its draft, and the outcome.

Two decision types on purpose: ``DecisionDraft`` is what a model is *asked* to fill (loose
numeric bounds, so a confidence of 1.2 or ``true`` reaches the guardrails, which refuse it as a
labelled HOLD at 0 rather than a parse failure), ``TradeDecision`` is what *leaves* the package (strict, always valid).
Both have the same field names, so any draft JSON that is in range parses into either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Action = Literal["BUY", "SELL", "HOLD"]
ACTIONS: tuple[Action, ...] = ("BUY", "SELL", "HOLD")


# The model-facing schema: its docstring and field descriptions are sent to the model.
# Every field is required in the JSON schema (OpenAI strict mode wants that), yet parsing fills
# the obviously-defaultable ones, so a JSON-mode model that omits them is not discarded.
class DecisionDraft(BaseModel):
    """A BUY/SELL/HOLD trade decision for the reviewed symbol, grounded in the evidence."""

    model_config = ConfigDict(extra="ignore")

    action: Action = Field(description="BUY, SELL or HOLD")
    confidence: float = Field(description="0 to 1")
    entry: float | None = Field(description="entry price; null means the last close")
    stop_loss: float | None = Field(description="BUY: below entry; SELL: above entry; HOLD: null")
    take_profit: float | None = Field(description="BUY: above entry; SELL: below entry; HOLD: null")
    horizon: str = Field(description="holding horizon, e.g. '5 bars'")
    key_factors: list[str] = Field(description="3 to 6 short evidence-based factors")
    rationale: str = Field(description="why, citing the evidence; at least 10 characters")
    contradicts_model: bool = Field(description="true when action differs from model.suggestion")
    contradiction_reason: str | None = Field(description="required when contradicts_model is true")

    @model_validator(mode="before")
    @classmethod
    def _fill_optional(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            confidence = data.get("confidence")
            if isinstance(confidence, bool) or (confidence is not None and not isinstance(confidence, (int, float))):
                data["confidence"] = float("nan")  # true / "high" is not a number: the guardrails refuse it
            if isinstance(data.get("action"), str):
                data["action"] = data["action"].strip().upper()
            for key, default in _DRAFT_DEFAULTS.items():
                data.setdefault(key, default() if callable(default) else default)
        return data


_DRAFT_DEFAULTS: dict[str, Any] = {
    "entry": None,
    "stop_loss": None,
    "take_profit": None,
    "horizon": "5 bars",
    "key_factors": list,
    "contradicts_model": False,
    "contradiction_reason": None,
}


class TradeDecision(BaseModel):
    """The reviewed decision: every field validated and consistent with the evidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    confidence: float = Field(ge=0.0, le=1.0)
    entry: float | None = Field(None, gt=0)
    stop_loss: float | None = Field(None, gt=0)
    take_profit: float | None = Field(None, gt=0)
    horizon: str = Field("5 bars", min_length=1, max_length=40)
    key_factors: list[str] = Field(default_factory=list, max_length=8)
    rationale: str = Field(min_length=10, max_length=2000)
    contradicts_model: bool = False
    contradiction_reason: str | None = Field(None, max_length=500)


@dataclass(frozen=True)
class Usage:
    """Token totals over every model call of one review."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class ReviewOutcome:
    """Everything one review produced; ``decision`` is always valid, even after a failure.

    ``fallback_reason`` is set (and the decision is HOLD at confidence 0) when the model failed;
    ``guardrail_notes`` are ``"<code>: <detail>"`` lines for every correction the guardrails made.
    """

    decision: TradeDecision
    transcript: list[dict[str, Any]]
    fallback_reason: str | None
    model_used: str
    usage: dict[str, int]
    latency_s: float
    messages: int
    guardrail_notes: list[str] = field(default_factory=list)
    #: how the decision is traded (``tradeflow.positions``); the payload and IBKR read it from here
    position_mode: str = "long_only"

    @property
    def guardrail_codes(self) -> list[str]:
        """The machine-readable code of each note (``confidence_refused``, ``unsupported_action`` ...)."""
        return [note.split(":", 1)[0] for note in self.guardrail_notes]

    @property
    def is_fallback(self) -> bool:
        return self.fallback_reason is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for ``review_outcome.json``); the transcript is logged separately."""
        return {
            "decision": self.decision.model_dump(mode="json"),
            "fallback_reason": self.fallback_reason,
            "model_used": self.model_used,
            "usage": dict(self.usage),
            "latency_s": self.latency_s,
            "messages": self.messages,
            "guardrail_notes": list(self.guardrail_notes),
        }
