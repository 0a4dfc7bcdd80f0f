"""The one typed configuration model: every parameter of every step resolves through here.

Layers, lowest first (later layers override earlier ones, key by key):

    defaults (this file) < environment (TRADEFLOW_*, read by tradeflow.settings) < per-symbol WebUI link ``config``
    < Airflow ``dag_run.conf`` / MLproject ``-P`` params

MLproject params, CLI flags, DAG conf and WebUI link configs are all *layers*: plain mappings that
may be flat (``epochs=3``, ``reviewer=rules``) or nested (``{"trademaster": {"epochs": 3}}``).
``resolve_config`` normalises each layer, deep-merges them and validates once. Hard caps clamp
(with a reason recorded in ``RunConfig.adjustments``) rather than silently accept.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from tradeflow.names import Mode, check_data_source, check_name_text, check_symbol

from tradeflow.errors import ConfigError

log = logging.getLogger(__name__)

# Hard caps: a value above a cap is clamped to it and the reason is recorded.
MAX_EPOCHS = 50
MAX_WINDOW = 60
MAX_LOOKBACK_DAYS = 3660
MAX_SYMBOLS = 50
MAX_HIDDEN_LAYERS = 8
_EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9_./ @+-]{1,200}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class TradeMasterParams(_Strict):
    """Engine hyperparameters, named as TradeMaster and the WebUI link config name them."""

    epochs: int = Field(3, ge=1, description="passes over the training split")
    backward_num_day: int = Field(10, ge=2, description="observation window, in bars")
    forward_num_day: int = Field(5, ge=1, description="look-ahead horizon of the reward shaping")
    max_volume: int = Field(1, ge=1, le=10, description="actions are -max_volume..+max_volume units")
    initial_amount: float = Field(100_000.0, gt=0, description="starting cash")
    transaction_cost_pct: float = Field(0.001, ge=0, lt=0.1, description="cost per unit of notional traded")
    future_weights: float = Field(0.2, ge=0, le=1, description="weight of the forward-return reward shaping")
    explore_rate: float = Field(0.25, gt=0, le=1, description="fraction of training spent annealing epsilon (DQN)")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="optimizer (Adam) step size, (0, 1]")
    hidden_dims: tuple[int, ...] = Field((64, 64), description="MLP hidden layer sizes, e.g. 64,64 "
                                         f"(1..{MAX_HIDDEN_LAYERS} layers of 1..4096 units)")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="torch device the agent trains and acts on")
    preset: Literal["tradeflow", "upstream"] = Field(
        "tradeflow", description="upstream: train with upstream TradeMaster's shipped algorithmic-trading BTC "
        "config (UPSTREAM_SHIPPED_CONFIG: window 5, hidden 64,32, 20 epochs), overriding the values given")

    @field_validator("hidden_dims", mode="before")
    @classmethod
    def _parse_dims(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().strip("[]()")
            value = [int(part) for part in re.split(r"[,\s]+", text) if part]
        return value

    @field_validator("hidden_dims")
    @classmethod
    def _check_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or len(value) > MAX_HIDDEN_LAYERS or any(d < 1 or d > 4096 for d in value):
            raise ValueError(f"hidden_dims must be 1..{MAX_HIDDEN_LAYERS} layers of 1..4096 units, e.g. 64,64")
        return value


#: upstream TradeMaster @ c1c4838's shipped config for algorithmic trading with AlgorithmicTradingDQN
#: (configs/algorithmic_trading/algorithmic_trading_BTC_deepscalper_deepscalper_adam_mse.py, its
#: _base_ dataset BTC.py, nets and the env's defaults); ``trademaster.preset=upstream`` applies it
UPSTREAM_SHIPPED_CONFIG: dict[str, Any] = {
    "backward_num_day": 5, "forward_num_day": 5, "hidden_dims": (64, 32), "epochs": 20, "learning_rate": 1e-3,
    "explore_rate": 0.25, "max_volume": 1, "initial_amount": 100_000.0, "transaction_cost_pct": 0.001,
    "future_weights": 0.2,
}


class SB3Params(_Strict):
    """``engine=builtin``: the stable-baselines3 arguments the agent is built with, sized for a few
    hundred daily bars (SB3's Atari-scale defaults would barely start learning there). ``None``
    means "derived from the train split's length", as noted per field."""

    gamma: float = Field(0.9, ge=0, le=1, description="discount factor, 0..1 (TradeMaster's 0.9: the reward "
                         "already looks ahead through the forward-return shaping)")
    dqn_batch_size: int = Field(64, ge=1, le=4096, description="DQN: transitions per gradient step")
    dqn_train_freq: int = Field(4, ge=1, le=1000, description="DQN: env steps per training round "
                                "(1 = upstream TradeMaster's work per step)")
    dqn_gradient_steps: int = Field(1, ge=1, le=100, description="DQN: gradient steps per training round")
    dqn_buffer_size: int = Field(100_000, ge=1, le=10_000_000, description="DQN: replay buffer cap, in "
                                 "transitions; the buffer holds min(epochs * train rows, this), i.e. the whole run")
    dqn_learning_starts: int | None = Field(None, ge=0, description="DQN: env steps of random actions before "
                                            "the first update; unset = max(64, train rows // 10)")
    dqn_target_update_interval: int | None = Field(None, ge=1, description="DQN: env steps between hard "
                                                   "target-network updates; unset = max(1, train rows // 10)")
    ppo_n_steps: int = Field(128, ge=2, le=100_000, description="PPO: rollout length per update, in env steps; "
                             "at most the train rows")
    ppo_batch_size: int = Field(64, ge=2, le=100_000, description="PPO: minibatch size")
    ent_coef: float = Field(0.01, ge=0, le=1, description="PPO and A2C: entropy bonus weight of the loss")


class FinAgentParams(_Strict):
    """``engine=finagent``: how upstream FinAgent's technical analysis is fed and calibrated (docs/finagent.md)."""

    lookback_bars: int = Field(60, ge=35, le=260, description="bars upstream's indicators see at each decision")
    allow_short: bool = Field(False, description="a 'sell' rating goes short (else it closes the long)")
    top_k: int = Field(10, ge=1, le=100, description="best configs on train re-ranked on valid (walk-forward)")


class SplitConfig(_Strict):
    """Chronological train/valid/test split, by ratios or by start dates of valid and test."""

    train_ratio: float = Field(0.6, gt=0, lt=1, description="fraction of rows in the train split, (0, 1)")
    valid_ratio: float = Field(0.2, gt=0, lt=1, description="fraction of rows in the valid split; the rest is test")
    valid_start: date | None = Field(None, description="first day of valid (with test_start; overrides the ratios)")
    test_start: date | None = Field(None, description="first day of test (with valid_start)")

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.train_ratio + self.valid_ratio >= 1:
            raise ValueError("train_ratio + valid_ratio must leave room for a test split (< 1)")
        if (self.valid_start is None) != (self.test_start is None):
            raise ValueError("give both valid_start and test_start, or neither")
        if self.valid_start and self.test_start and self.valid_start >= self.test_start:
            raise ValueError("valid_start must be before test_start")
        return self


Engine = Literal["builtin", "trademaster", "finagent"]
ENGINES: tuple[str, ...] = get_args(Engine)
Provider = Literal["rules", "openai", "azure", "ollama", "openai_compatible"]


class ReviewConfig(_Strict):
    """The AutoGen review team. Keys and endpoints come from the environment, never from here."""

    provider: Provider = Field("rules", description="rules (offline, deterministic) or an LLM provider")
    model: str | None = Field(None, description="model / deployment name; provider default if unset")
    max_messages: int = Field(8, ge=3, le=40, description="team message cap, 3..40")
    max_total_tokens: int = Field(30_000, ge=500, le=500_000, description="team token cap, 500..500000")
    timeout_s: float = Field(120.0, gt=0, le=1800, description="hard deadline of the review, seconds (<= 1800)")
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature of LLM providers, 0..2")
    atr_multiple_cap: float = Field(4.0, gt=0, le=20, description="stop/take-profit at most this many ATRs from entry")
    position_mode: Literal["long_only", "long_short"] = Field(
        "long_only", description="long_only: SELL exits to flat, never short; long_short: SELL opens a short "
        "(tradeflow.positions, read by the signal, the description, IBKR and evaluate)")


class RunConfig(_Strict):
    """Everything one symbol's pipeline needs. Immutable; derive variants with ``override``."""

    symbol: str = Field(description="ticker, upper-cased; [A-Z0-9.^-]{1,20}")
    data_source: str = Field("backend", description="csv:<path>[,<path>] | backend | ibkr | yfinance | synthetic")
    bar_size: str = Field("1 day", description="bar length; only daily bars ('1 day') are supported")
    backtest_lookback_days: int = Field(1095, ge=30, description="calendar days of history to load")
    end_date: date | None = Field(None, description="last bar to use (default: newest available)")
    engine: Engine = Field(
        "builtin", description="builtin (gymnasium + stable-baselines3), trademaster or finagent (upstream)")
    algorithm: Literal["dqn", "ppo", "a2c"] = Field("dqn", description="RL algorithm of the builtin engine")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="seeds numpy, torch, the env and SB3, 0..2**31-1")
    split: SplitConfig = Field(SplitConfig(), description="chronological train/valid/test split")
    trademaster: TradeMasterParams = Field(TradeMasterParams(), description="env and network hyperparameters")
    sb3: SB3Params = Field(SB3Params(), description="stable-baselines3 arguments of the builtin engine")
    finagent: FinAgentParams = Field(FinAgentParams(), description="engine=finagent settings")
    review: ReviewConfig = Field(ReviewConfig(), description="the AutoGen review team")
    mode: Mode = Field("both", description="pipeline stages: both, train_backtest or inference")
    register_model: bool = Field(True, description="register the trained model and move the alias (gated)")
    do_no_harm_gate: bool = Field(True, description="champion only for a model that beats buy-and-hold and flat "
                                  "on validation; a failed model's decisions are labelled and capped (tradeflow.gate)")
    model_alias: str = Field("champion", pattern=r"^[a-z][a-z0-9_-]{0,63}$",
                             description="registry alias that inference resolves")
    experiment_name: str = Field("trademaster_autogen", description="MLflow experiment of the runs")

    _adjustments: list[str] = PrivateAttr(default_factory=list)

    @field_validator("symbol", mode="before")
    @classmethod
    def _normalise_symbol(cls, value: Any) -> Any:
        if isinstance(value, str):  # ASCII first: "ıbm".upper() would be IBM
            check_name_text(value.strip(" "), "symbol")
            return value.strip(" ").upper()
        return value

    @field_validator("symbol")
    @classmethod
    def _check_symbol(cls, value: str) -> str:
        return check_symbol(value)

    @field_validator("data_source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        return check_data_source(value)

    @field_validator("experiment_name")
    @classmethod
    def _check_experiment(cls, value: str) -> str:
        check_name_text(value, "experiment_name")
        if not _EXPERIMENT_RE.fullmatch(value) or any(part in {".", ".."} for part in value.split("/")):
            raise ValueError(f"{value[:60]!r} must be 1..200 letters, digits, spaces or _./@+- on one line, "
                             "without '.' or '..' path segments")
        return value

    @field_validator("bar_size")
    @classmethod
    def _check_bar_size(cls, value: str) -> str:
        if value.strip().lower() not in {"1 day", "1d", "daily", "1 d"}:
            raise ValueError(f"{value!r}: only daily bars ('1 day') are supported")
        return "1 day"

    @property
    def adjustments(self) -> list[str]:
        """Reasons for every value clamped to a hard cap (logged by every entry point)."""
        return list(self._adjustments)

    @property
    def registered_model_name(self) -> str:
        """Per-(engine, symbol) Model Registry name (``builtin_AAPL``, ``trademaster_AAPL``,
        ``finagent_AAPL``); ``inference`` resolves ``models:/<name>@<alias>``, so an alias, the gate's
        champion and the newest-version fallback never cross engines (docs/engine.md, migration)."""
        # Injective: symbols hold no '_' or lower case, so BRK.B and BRK-B (or ^GSPC, .GSPC, -GSPC)
        # get different names; plain tickers keep the readable builtin_AAPL.
        marks = {".": "_dot_", "-": "_dash_", "^": "_caret_"}
        return f"{self.engine}_" + "".join(marks.get(char, char) for char in self.symbol)

    @property
    def is_synthetic(self) -> bool:
        return self.data_source == "synthetic"

    def override(self, *layers: Mapping[str, Any] | None) -> RunConfig:
        """A new config with more layers on top of this one (earlier clamp reasons are kept)."""
        derived = resolve_config(self.to_layer(), *layers)
        derived._adjustments[:0] = self._adjustments
        return derived

    def to_layer(self) -> dict[str, Any]:
        """This config as a nested JSON-able layer (dates as ISO strings)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace. Stable input to cache keys and ``-P config=``."""
        return json.dumps(self.to_layer(), sort_keys=True, separators=(",", ":"))

    def flat_params(self, prefix: str = "cfg.") -> dict[str, str]:
        """Every resolved value as ``{prefix}section.key -> str`` for ``mlflow.log_params``."""
        out: dict[str, str] = {}

        def walk(node: Mapping[str, Any], path: str) -> None:
            for key, value in node.items():
                if isinstance(value, Mapping):
                    walk(value, f"{path}{key}.")
                elif isinstance(value, (list, tuple)):
                    out[f"{prefix}{path}{key}"] = ",".join(str(v) for v in value)
                else:
                    out[f"{prefix}{path}{key}"] = "" if value is None else str(value)

        walk(self.to_layer(), "")
        return out

    @model_validator(mode="after")
    def _apply_caps(self) -> RunConfig:
        notes: list[str] = []
        tm = self.trademaster
        updates: dict[str, Any] = {}
        for name, cap in (("epochs", MAX_EPOCHS), ("backward_num_day", MAX_WINDOW), ("forward_num_day", MAX_WINDOW)):
            if getattr(tm, name) > cap:
                notes.append(f"trademaster.{name} {getattr(tm, name)} clamped to cap {cap}")
                updates[name] = cap
        if tm.preset == "upstream":
            changed = {k: v for k, v in UPSTREAM_SHIPPED_CONFIG.items() if getattr(tm, k) != v}
            if changed:
                notes.append("trademaster.preset=upstream: " + ", ".join(
                    f"{k} {getattr(tm, k)} -> {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                    for k, v in changed.items()) + " (upstream's shipped config)")
            updates = {**updates, **changed}
        if updates:
            object.__setattr__(self, "trademaster", tm.model_copy(update=updates))
        if self.backtest_lookback_days > MAX_LOOKBACK_DAYS:
            notes.append(f"backtest_lookback_days {self.backtest_lookback_days} clamped to cap {MAX_LOOKBACK_DAYS}")
            object.__setattr__(self, "backtest_lookback_days", MAX_LOOKBACK_DAYS)
        self._adjustments.extend(notes)
        for note in notes:
            log.warning("config: %s", note)
        return self


# --- layers -------------------------------------------------------------------------------------

#: flat key -> nested path. Every TradeMaster and split field is also accepted flat by its own name;
#: finagent and sb3 fields by theirs with a ``finagent_`` / ``sb3_`` prefix.
FLAT_KEYS: dict[str, tuple[str, ...]] = {
    **{name: ("trademaster", name) for name in TradeMasterParams.model_fields},
    **{name: ("split", name) for name in SplitConfig.model_fields},
    **{f"finagent_{name}": ("finagent", name) for name in FinAgentParams.model_fields},
    **{f"sb3_{name}": ("sb3", name) for name in SB3Params.model_fields},
    "reviewer": ("review", "provider"),
    "review_provider": ("review", "provider"),
    "review_model": ("review", "model"),
    "review_max_messages": ("review", "max_messages"),
    "review_max_total_tokens": ("review", "max_total_tokens"),
    "review_timeout_s": ("review", "timeout_s"),
    "position_mode": ("review", "position_mode"),
}
TOP_LEVEL_KEYS = set(RunConfig.model_fields)
SECTIONS = {"trademaster", "sb3", "split", "review", "finagent"}


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def normalise_layer(layer: Mapping[str, Any] | None, *, origin: str = "config") -> dict[str, Any]:
    """Turn a flat or nested mapping into the nested shape of ``RunConfig``.

    Empty strings and ``None`` mean "not set here" (MLproject params default to ""), so lower
    layers show through. A ``config`` key holding JSON (or a mapping) is applied on top of the
    layer's other keys. Unknown keys raise ``ConfigError`` naming the key and its origin.
    """
    if not layer:
        return {}
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{origin} must be a JSON object, got {type(layer).__name__}")
    out: dict[str, Any] = {}
    nested_override: dict[str, Any] = {}
    for key, value in layer.items():
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        if key == "config":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{origin}: parameter 'config' is not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise ConfigError(f"{origin}: parameter 'config' is nested too deep") from None
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: parameter 'config' must be a JSON object")
            nested_override = normalise_layer(value, origin=f"{origin}.config")
        elif key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: '{key}' must be an object")
            for sub_key, sub_value in value.items():
                if sub_value is None or (isinstance(sub_value, str) and sub_value.strip() == ""):
                    continue
                _set_path(out, (key, sub_key), sub_value)
        elif key in TOP_LEVEL_KEYS:
            out[key] = value
        elif key in FLAT_KEYS:
            _set_path(out, FLAT_KEYS[key], value)
        else:
            raise ConfigError(f"{origin}: unknown parameter '{key}'")
    return deep_merge(out, nested_override)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config(*layers: Mapping[str, Any] | None) -> RunConfig:
    """Merge layers (lowest first) into a validated ``RunConfig``.

    The environment is a layer like any other: ``settings.resolve_with_env`` puts it right above
    the defaults. Raises ``ConfigError`` with a one-line message naming the offending parameter.
    """
    merged: dict[str, Any] = {}
    for index, layer in enumerate(layers):
        merged = deep_merge(merged, normalise_layer(layer, origin=f"layer {index}"))
    if "symbol" not in merged:
        raise ConfigError("parameter 'symbol' is required (e.g. -P symbol=AAPL)")
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid parameter '{where}': {message}{extra}"
