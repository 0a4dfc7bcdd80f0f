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
#: A trusted scalar string longer than this is cut (ids, URIs, dates are short).
MAX_TRUSTED_STRING = 300

_SCALAR, _NUMBERS, _OPEN = "scalar", "numbers", "open"
_GATE_KEYS = ("passed", "enforced", "reason", "source", "valid_total_return", "benchmark_total_return")
_BAR_KEYS = ("date", "open", "high", "low", "close", "volume")
#: The evidence schema as the trusted block sees it, at every depth: a dict names its known keys;
#: ``scalar`` is a str/number/bool/null leaf; ``numbers`` a {name: number|null} map; a one-item
#: list a list of that shape; ``open`` the engine's own section (FinAgent's analysis JSON),
#: kept whole under its known key.
TRUSTED_SCHEMA: dict[str, Any] = {
    "schema_version": _SCALAR, "symbol": _SCALAR, "as_of": _SCALAR, "bar_size": _SCALAR,
    "latest_bars": [dict.fromkeys(_BAR_KEYS, _SCALAR)],
    "indicators": dict.fromkeys(Indicators.model_fields, _SCALAR),
    "backtest": {"run_id": _SCALAR, "metrics": _NUMBERS},
    "model": {**dict.fromkeys(ModelView.model_fields, _SCALAR), "scores": _NUMBERS,
              "gate": dict.fromkeys(_GATE_KEYS, _SCALAR)},
    "data": dict.fromkeys(DataView.model_fields, _SCALAR),
    "finagent": dict.fromkeys(("upstream", "analysis", "upstream_rating", "upstream_probability", "calibrated",
                               "non_finite_as_null"), _OPEN),
    # the fitted reviewer and its inputs, computed by train_backtest/inference (issue 22), kept whole
    "reviewer": _OPEN,
}


def _by_schema(value: Any, shape: Any, path: str, dropped: list[str]) -> Any:
    """``value`` reduced to ``shape``; what does not fit is left out and its path noted."""
    if shape == _OPEN:
        return value
    if shape == _SCALAR:
        if isinstance(value, str):
            return value[:MAX_TRUSTED_STRING]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        dropped.append(path)
        return _DROP
    if shape == _NUMBERS:
        if not isinstance(value, dict):
            dropped.append(path)
            return _DROP
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and len(key) <= 80 and (item is None or (isinstance(item, (int, float))
                                                                           and not isinstance(item, bool))):
                out[key] = item
            else:
                dropped.append(f"{path}.?")
        return out
    if isinstance(shape, list):
        if not isinstance(value, list):
            dropped.append(path)
            return _DROP
        items = [_by_schema(item, shape[0], f"{path}[]", dropped) for item in value]
        return [item for item in items if item is not _DROP]
    if not isinstance(value, dict):
        dropped.append(path)
        return _DROP
    out = {}
    for key, item in value.items():
        if key in shape:
            kept = _by_schema(item, shape[key], f"{path}.{key}", dropped)
            if kept is not _DROP:
                out[key] = kept
        else:
            dropped.append(f"{path}.?")
    return out


_DROP = object()


def trusted_sections(evidence: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The trusted block built from the evidence schema's known fields at every depth, and how
    many fields of the bundle were left out (unknown keys, wrong shapes): never ``untrusted``,
    never ``prompts`` (they become system messages), never an unknown key at any depth
    (``indicators.analyst_note`` is dropped, not promoted to a fact)."""
    dropped: list[str] = [key for key in evidence if key not in TRUSTED_SCHEMA and key not in ("untrusted", "prompts")]
    out = {}
    for key, shape in TRUSTED_SCHEMA.items():
        if key in evidence:
            kept = _by_schema(evidence[key], shape, key, dropped)
            if kept is not _DROP:
                out[key] = kept
    return out, len(dropped)


def trusted_view(evidence: dict[str, Any]) -> dict[str, Any]:
    """The bundle's known fact fields only, at every depth (``trusted_sections``)."""
    return trusted_sections(evidence)[0]


def untrusted_items(evidence: Evidence) -> dict[str, list[str]]:
    """Untrusted text, bounded in count and length; empty lists are dropped."""
    out: dict[str, list[str]] = {}
    for key in ("headlines", "notes"):
        items = [str(item)[:MAX_UNTRUSTED_CHARS] for item in getattr(evidence.untrusted, key)]
        if items:
            out[key] = items[:MAX_UNTRUSTED_ITEMS]
    return out
