"""The evidence bundle as a typed view, so the reviewers and guardrails never guess at keys.

Parsing is lenient about extras (the bundle may grow) and strict about what the guardrails
need: a positive last close. A bundle that breaks that is an integration bug, so it raises
``EvidenceError`` instead of silently producing a HOLD.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tradeflow.errors import InputError

SCHEMA_VERSION = 1
#: Untrusted text limits: more than this is cut, so a flood of text cannot crowd the prompt.
MAX_UNTRUSTED_ITEMS = 20
MAX_UNTRUSTED_CHARS = 500


class EvidenceError(InputError):
    """The evidence bundle is unusable. ``str(err)`` is one line naming the field."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Indicators(_Open):
    close: float = Field(gt=0)
    sma_20: float | None = None
    sma_50: float | None = None
    rsi_14: float | None = None
    atr_14: float | None = None
    volatility_annualised: float | None = None
    support: float | None = None
    resistance: float | None = None
    return_20d: float | None = None


class Backtest(_Open):
    run_id: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)


class ModelView(_Open):
    uri: str | None = None
    version: str | None = None
    engine: str | None = None
    algorithm: str | None = None
    suggestion: Literal["BUY", "SELL", "HOLD"] | None = None
    target_position: float | None = None
    scores: dict[str, float | None] = Field(default_factory=dict)
    #: the do-no-harm gate block (``tradeflow.gate.GateResult.as_evidence``); None = not checked
    gate: dict[str, Any] | None = None

    @field_validator("suggestion", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class DataView(_Open):
    source: str | None = None
    digest: str | None = None
    rows: int | None = None
    synthetic: bool = False


class Untrusted(_Open):
    headlines: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Evidence(_Open):
    """Typed evidence; ``raw`` keeps the original dict for the prompt."""

    schema_version: int = SCHEMA_VERSION
    symbol: str = Field(min_length=1)
    as_of: str
    bar_size: str = "1 day"
    latest_bars: list[dict[str, Any]] = Field(default_factory=list)
    indicators: Indicators
    backtest: Backtest = Backtest()
    model: ModelView = ModelView()
    data: DataView = DataView()
    untrusted: Untrusted = Untrusted()

    @property
    def close(self) -> float:
        return self.indicators.close

    @property
    def atr(self) -> float:
        """ATR(14), or 2% of the close when the bundle has none (documented fallback)."""
        atr = self.indicators.atr_14
        return atr if atr is not None and atr > 0 else round(0.02 * self.close, 6)

    def metric(self, name: str) -> float | None:
        value = self.backtest.metrics.get(name)
        return float(value) if value is not None else None


def parse_evidence(evidence: dict[str, Any]) -> Evidence:
    """Validate the bundle; raises ``EvidenceError`` with a one-line message."""
    if not isinstance(evidence, dict):
        raise EvidenceError(f"evidence must be a dict, got {type(evidence).__name__}")
    version = evidence.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise EvidenceError(f"evidence schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        return Evidence.model_validate(evidence)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "evidence"
        raise EvidenceError(f"evidence field '{where}': {first['msg']}") from None


#: The top-level keys the inference step writes as facts. Anything else in a bundle (a hand-made
#: or tampered one) is not promoted into the trusted block.
TRUSTED_KEYS = ("schema_version", "symbol", "as_of", "bar_size", "latest_bars", "indicators", "backtest",
                "model", "data", "finagent", "reviewer")


def trusted_view(evidence: dict[str, Any]) -> dict[str, Any]:
    """The bundle's known fact sections only (never ``untrusted``, never ``prompts`` — they become
    system messages —, never unknown top-level keys)."""
    return {key: evidence[key] for key in TRUSTED_KEYS if key in evidence}


def untrusted_items(evidence: Evidence) -> dict[str, list[str]]:
    """Untrusted text, bounded in count and length; empty lists are dropped."""
    out: dict[str, list[str]] = {}
    for key in ("headlines", "notes"):
        items = [str(item)[:MAX_UNTRUSTED_CHARS] for item in getattr(evidence.untrusted, key)]
        if items:
            out[key] = items[:MAX_UNTRUSTED_ITEMS]
    return out
