"""The IBKR trading workflow's settings: one YAML strategy file, validated by pydantic.

A strategy names the symbols, the exchange calendar, the review team, the risk limits, how orders
are sent and how the three DAGs are scheduled. Secrets and the gateway URL come from the
environment (``IBKR_API_URL``, ``IBKR_ACCOUNT_ID``), never from the YAML. Reference: docs/ibkr_workflow.md.

    strategy = load_strategy("dags/ibkr_strategy.yaml")    # StrategyError: one line naming the field
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tradeflow.config import ReviewConfig
from tradeflow.errors import InputError
from tradeflow.names import SYMBOL_RE

#: The YAML the shipped DAGs read unless ``IBKR_STRATEGY_FILE`` names another one.
DEFAULT_STRATEGY_FILE = Path(__file__).resolve().parents[2] / "dags" / "ibkr_strategy.yaml"
ENV_STRATEGY_FILE = "IBKR_STRATEGY_FILE"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,60}$")
_PERIOD_RE = re.compile(r"^\d+(d|w|m|y)$")
_QUESTION_RE = re.compile(r"o\d{1,6}")
#: IBKR's total-value-limit and size-limit warnings: the broker sees the order above a limit.
NEVER_ACCEPTED_QUESTIONS = frozenset({"o451", "o383"})


class StrategyError(InputError):
    """The strategy file is unreadable or invalid; ``str(err)`` is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class MarketDataSettings(_Strict):
    """What history to pull from the gateway (``/iserver/marketdata/history``)."""

    period: str = Field("1y", description="history window, IBKR syntax: 30d, 6m, 1y")
    bar: Literal["1d"] = Field("1d", description="bar size (daily; the indicators assume daily bars)")
    min_bars: int = Field(60, ge=20, le=1000, description="fewer bars than this: the data is not available")
    max_staleness_sessions: int = Field(1, ge=0, le=10,
                                        description="the last bar may be at most this many sessions old")

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if not _PERIOD_RE.match(value):
            raise ValueError("period must look like 30d, 6w, 6m or 1y")
        return value


class RiskSettings(_Strict):
    """Position sizing and the limits an order must pass (fractions of net liquidation value)."""

    max_risk_per_trade: float = Field(0.01, gt=0, le=0.05, description="equity lost if the stop is hit")
    atr_stop_multiple: float = Field(2.0, gt=0, le=10, description="stop distance in ATRs from the entry")
    max_position_pct: float = Field(0.10, gt=0, le=1, description="cap on one symbol's exposure")
    max_total_exposure_pct: float = Field(0.50, gt=0, le=2, description="cap on gross exposure, all symbols")
    min_confidence: float = Field(0.60, ge=0, le=1, description="signals below this confidence are not traded")
    allow_short: bool = Field(False, description="SELL without a long position opens a short")
    max_order_notional: float = Field(1_000_000.0, gt=0, le=1e9, description="cap on one order's notional "
                                      "(quantity x entry), whatever the equity says")


class OrderSettings(_Strict):
    order_type: Literal["MKT", "LMT"] = "MKT"
    tif: Literal["DAY", "GTC"] = "DAY"
    limit_offset_pct: float = Field(0.001, ge=0, le=0.05, description="LMT: price = entry +/- this fraction")
    attach_stop: bool = Field(True, description="send the ATR stop as a child STP order (a bracket)")
    take_profit: bool = Field(True, description="send the signal's take-profit as a child LMT order: with the stop "
                              "one OCA group (one fills, the other is cancelled)")
    outside_rth: bool = False


class BrokerSettings(_Strict):
    """Paper only unless BOTH ``allow_live: true`` here AND ``IBKR_ALLOW_LIVE=true`` in the environment."""

    allow_live: bool = Field(False, description="permit a non-paper (not DU...) account")
    dry_run: bool = Field(False, description="record the order that would be placed; send nothing")
    timeout_s: float = Field(15.0, gt=0, le=120, description="per HTTP request to the gateway")
    reply_rounds: int = Field(5, ge=1, le=10, description="confirmation questions answered before giving up")
    accept_questions: tuple[str, ...] = Field(("o354", "o10331"), max_length=50, description=(
        "IBKR confirmation message ids answered yes; any other question refuses the order (its text is "
        "recorded). Value/size warnings (o451, o383) cannot be listed"))
    fill_timeout_s: float = Field(30.0, ge=0, le=600, description="how long the order step follows a placed "
                                  "order's status (bounded polling) before recording it as working")
    poll_s: float = Field(1.0, gt=0, le=60, description="between two status polls")
    lock_timeout_s: float = Field(120.0, gt=0, le=3600, description="wait for the account's allocation lock "
                                  "(held by a concurrent run) at most this long")
    reauthenticate: bool = Field(True, description="the auth sensor asks the gateway to restore a logged-out "
                                 "brokerage session (/iserver/reauthenticate)")
    preview: Literal["live", "always"] = Field("live", description="what-if preview (orders/whatif) before a "
                                               "live-account order (live) or before every order (always)")

    @field_validator("accept_questions", mode="before")
    @classmethod
    def _questions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        if isinstance(value, (list, tuple)):
            value = [str(v).strip() for v in value]
            bad = [v for v in value if not _QUESTION_RE.fullmatch(v)]
            if bad:
                raise ValueError(f"not an IBKR message id (like o354): {', '.join(bad)}")
            never = sorted(set(value) & NEVER_ACCEPTED_QUESTIONS)
            if never:
                raise ValueError(f"{', '.join(never)} are value/size limit warnings: never accepted (lower the "
                                 "strategy's limits instead)")
        return value


class SignalSettings(_Strict):
    """The existing AutoGen review team (``review_agents``) decides; the RL model is evidence only."""

    review: ReviewConfig = ReviewConfig()
    model_uri: str | None = Field(None, description="MLflow model whose suggestion is added as evidence")


class TrackingSettings(_Strict):
    experiment: str = Field("ibkr_trading_workflows", min_length=1, max_length=200)


class WebUISettings(_Strict):
    publish: bool = Field(True, description="post the signal (with the risk verdict) when BACKEND_API_URL is set")


class ScheduleSettings(_Strict):
    """Cron strings (UTC) of the three DAGs; null: triggered by hand / by the WebUI only."""

    trading: str | None = "45 14 * * 1-5"
    market_data: str | None = "30 21 * * 1-5"
    monitoring: str | None = "*/30 13-21 * * 1-5"


class AirflowSettings(_Strict):
    retries: int = Field(2, ge=0, le=10)
    retry_delay_s: float = Field(30.0, ge=0, le=3600)
    execution_timeout_s: float = Field(600.0, gt=0, le=6 * 3600)
    order_timeout_s: float = Field(120.0, gt=0, le=3600, description="the order task's execution timeout: a hung "
                                   "broker call is cut, and the retry finds the order by its cOID")
    sensor_poke_s: float = Field(60.0, gt=0, le=3600)
    sensor_timeout_s: float = Field(3600.0, gt=0, le=24 * 3600)
    require_market_open: bool = Field(True, description="trading waits for the exchange to be open")


class MonitoringSettings(_Strict):
    max_gross_exposure_pct: float = Field(0.6, gt=0, le=3, description="alert above this gross exposure")
    max_position_loss_pct: float = Field(0.08, gt=0, le=1, description="alert when a position is down more")


class StrategyConfig(_Strict):
    name: str = Field(..., description="lower_snake_case; names the MLflow runs and generated DAGs")
    description: str = ""
    symbols: tuple[str, ...] = Field(..., min_length=1, max_length=50)
    exchange: str = Field("XNYS", description="exchange_calendars code, e.g. XNYS, XNAS, XLON")
    market_data: MarketDataSettings = MarketDataSettings()
    signal: SignalSettings = SignalSettings()
    risk: RiskSettings = RiskSettings()
    orders: OrderSettings = OrderSettings()
    broker: BrokerSettings = BrokerSettings()
    tracking: TrackingSettings = TrackingSettings()
    webui: WebUISettings = WebUISettings()
    schedule: ScheduleSettings = ScheduleSettings()
    airflow: AirflowSettings = AirflowSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError("name must be lower_snake_case (a-z, 0-9, _), starting with a letter")
        return value

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        if isinstance(value, (list, tuple)):
            value = [str(v).strip(" ") for v in value]
            bad = [v for v in value if not v.isascii() or not SYMBOL_RE.fullmatch(v)]  # no look-alike upper-cases
            value = [v.upper() for v in value]
            if bad:
                raise ValueError(f"not a ticker symbol: {', '.join(bad)}")
            if len(set(value)) != len(value):
                raise ValueError("symbols are listed twice")
        return value

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, value: str) -> str:
        import exchange_calendars

        value = value.strip().upper()
        if value not in exchange_calendars.get_calendar_names(include_aliases=True):
            raise ValueError(f"{value!r} is not an exchange_calendars calendar (e.g. XNYS, XNAS, XLON)")
        return value

    @model_validator(mode="after")
    def _risk_consistent(self) -> StrategyConfig:
        if self.risk.max_position_pct > self.risk.max_total_exposure_pct:
            raise ValueError("risk.max_position_pct exceeds risk.max_total_exposure_pct")
        return self


def strategy_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(ENV_STRATEGY_FILE) or DEFAULT_STRATEGY_FILE)


#: A strategy file is a few dozen lines; anything bigger is refused before YAML parses it.
MAX_STRATEGY_BYTES = 256 * 1024
#: Aliases (``*name``) a strategy may use: enough for shared blocks, far below an alias bomb.
MAX_YAML_ALIASES = 16


def _bounded_loader(where: str) -> type:
    """``yaml.SafeLoader`` (no Python objects) that refuses more than ``MAX_YAML_ALIASES`` aliases
    while composing, before any expansion (an alias bomb of 12 lines took 3.3 GB at DAG parse)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise StrategyError(f"strategy file {where}: more than {MAX_YAML_ALIASES} YAML aliases "
                                        "(refused: an alias bomb expands without bound)")
            return super().compose_node(parent, index)

    return BoundedLoader


def load_strategy(path: str | Path | None = None) -> StrategyConfig:
    """Read and validate a strategy YAML (default: ``IBKR_STRATEGY_FILE`` or dags/ibkr_strategy.yaml):
    size-capped, safe loader, bounded aliases, before any other work."""
    import yaml

    path = Path(path) if path else strategy_path()
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STRATEGY_BYTES + 1)
    except OSError as exc:
        raise StrategyError(f"strategy file {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_STRATEGY_BYTES:
        raise StrategyError(f"strategy file {path}: over {MAX_STRATEGY_BYTES:,} bytes (refused before parsing)")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=_bounded_loader(str(path)))  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise StrategyError(f"strategy file {path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise StrategyError(f"strategy file {path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    return parse_strategy(raw, where=str(path))


def parse_strategy(raw: Any, *, where: str = "strategy") -> StrategyConfig:
    if not isinstance(raw, Mapping):
        raise StrategyError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return StrategyConfig.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise StrategyError(f"{where}: {field}: {message}{more}") from None


def json_schema() -> dict[str, Any]:
    """The strategy file's JSON schema (docs, editor completion)."""
    return StrategyConfig.model_json_schema()
