"""The one config model: layering, WebUI link configs, caps, one-line errors."""

from __future__ import annotations

import json

import pytest

from tradeflow.config import MAX_EPOCHS, RunConfig, resolve_config
from tradeflow.errors import ConfigError
from tradeflow.settings import env_layer, resolve_with_env

WEBUI_LINK_CONFIG = {
    "mode": "both",
    "bar_size": "1 day",
    "backtest_lookback_days": 500,
    "trademaster": {
        "epochs": 4, "backward_num_day": 12, "forward_num_day": 3, "max_volume": 2,
        "initial_amount": 50000, "transaction_cost_pct": 0.002, "future_weights": 0.1,
        "explore_rate": 0.3, "learning_rate": 0.0005, "hidden_dims": [32, 16], "device": "cpu",
    },
}


def test_accepts_every_key_the_webui_stores_in_link_configs():
    cfg = resolve_config({"symbol": "NVDA"}, WEBUI_LINK_CONFIG)
    assert cfg.trademaster.model_dump() == {**WEBUI_LINK_CONFIG["trademaster"], "hidden_dims": (32, 16), "preset": "tradeflow"}
    assert cfg.backtest_lookback_days == 500
    assert cfg.bar_size == "1 day"


def test_layers_override_lowest_first_key_by_key():
    env = env_layer({"TRADEFLOW_EPOCHS": "7", "TRADEFLOW_SEED": "9", "TRADEFLOW_HOME": "/ignored"})
    link = {"trademaster": {"epochs": 5}, "bar_size": "1 day"}
    conf = {"config": json.dumps({"trademaster": {"learning_rate": 0.01}})}
    cfg = resolve_config(env, {"symbol": "aapl"}, link, conf)
    assert cfg.symbol == "AAPL"
    assert cfg.seed == 9  # from the environment, nobody overrode it
    assert cfg.trademaster.epochs == 5  # link config beats environment
    assert cfg.trademaster.learning_rate == 0.01  # dag_run.conf beats everything
    assert cfg.trademaster.backward_num_day == 10  # untouched default


def test_environment_layer_sits_right_above_defaults(monkeypatch):
    monkeypatch.setenv("TRADEFLOW_EPOCHS", "6")
    monkeypatch.setenv("TRADEFLOW_DATA_SOURCE", "synthetic")
    assert resolve_with_env({"symbol": "X"}).trademaster.epochs == 6
    assert resolve_with_env({"symbol": "X", "epochs": "2"}).trademaster.epochs == 2


def test_empty_mlproject_params_mean_unset():
    cfg = resolve_config({"symbol": "BTC", "epochs": "", "data_source": "", "config": ""})
    assert cfg.trademaster.epochs == RunConfig.model_fields["trademaster"].default.epochs
    assert cfg.data_source == "backend"


def test_caps_clamp_with_a_recorded_reason():
    cfg = resolve_config({"symbol": "BTC", "epochs": 500, "backward_num_day": 400, "backtest_lookback_days": 99999})
    assert cfg.trademaster.epochs == MAX_EPOCHS
    assert cfg.trademaster.backward_num_day == 60
    assert cfg.backtest_lookback_days == 3660
    assert any("epochs 500 clamped" in note for note in cfg.adjustments)
    assert len(cfg.adjustments) == 3
    # a derived config keeps the reasons
    assert cfg.override({"seed": 1}).adjustments == cfg.adjustments


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ({"symbol": "AA$"}, "invalid parameter 'symbol'"),
        ({"symbol": "aapl; rm"}, "characters outside [A-Z0-9.^-]"),
        ({"symbol": "A", "epochs": -1}, "invalid parameter 'trademaster.epochs'"),
        ({"symbol": "A", "engine": "tf"}, "invalid parameter 'engine'"),
        ({"symbol": "A", "data_source": "ftp://x"}, "is not a data source"),
        ({"symbol": "A", "data_source": "csv:"}, "csv data source needs a path"),
        ({"symbol": "A", "bar_size": "5 mins"}, "only daily bars"),
        ({"symbol": "A", "hidden_dims": "0,5"}, "hidden_dims"),
        ({"symbol": "A", "train_ratio": 0.9, "valid_ratio": 0.2}, "must leave room for a test split"),
        ({"symbol": "A", "nonsense": 1}, "unknown parameter 'nonsense'"),
        ({"symbol": "A", "config": "{not json"}, "parameter 'config' is not valid JSON"),
        ({}, "parameter 'symbol' is required"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_parameter(layer, expected):
    with pytest.raises(ConfigError) as info:
        resolve_config(layer)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_canonical_json_round_trips_and_is_stable():
    cfg = resolve_config({"symbol": "BTC", "hidden_dims": "128, 64", "valid_start": "2020-01-01", "test_start": "2020-07-01"})
    again = resolve_config(json.loads(cfg.to_json()))
    assert again == cfg
    assert again.to_json() == cfg.to_json()
    flat = cfg.flat_params()
    assert flat["cfg.trademaster.hidden_dims"] == "128,64"
    assert flat["cfg.split.valid_start"] == "2020-01-01"
    assert cfg.registered_model_name == "builtin_BTC"
    assert resolve_config({"symbol": "BRK.B"}).registered_model_name == "builtin_BRK_dot_B"
    assert resolve_config({"symbol": "BRK-B"}).registered_model_name == "builtin_BRK_dash_B"


def test_a_mistyped_tradeflow_variable_fails_with_the_known_names(monkeypatch):
    from tradeflow.settings import OPERATIONAL_ENV, check_env_names, known_env_names

    monkeypatch.setenv("TRADEFLOW_EPOCH", "5")
    with pytest.raises(ConfigError) as caught:
        resolve_with_env({"symbol": "AAPL"})
    message = str(caught.value)
    assert message.startswith("unknown environment variable TRADEFLOW_EPOCH (did you mean TRADEFLOW_EPOCHS?);")
    assert "known TRADEFLOW_* names: " in message and "TRADEFLOW_TASK_RETRIES" in message and "\n" not in message
    monkeypatch.delenv("TRADEFLOW_EPOCH")
    # operational names share the prefix and are known; run parameters still apply
    check_env_names({name: "1" for name in OPERATIONAL_ENV})
    monkeypatch.setenv("TRADEFLOW_EPOCHS", "5")
    monkeypatch.setenv("TRADEFLOW_PARALLEL_SYMBOLS", "2")
    assert resolve_with_env({"symbol": "AAPL"}).trademaster.epochs == 5
    assert "TRADEFLOW_EPOCHS" in known_env_names() and "TRADEFLOW_CONFIG" in known_env_names()
    with pytest.raises(ConfigError, match=r"variables TRADEFLOW_A, TRADEFLOW_ZZZ_UNRELATED; known"):
        check_env_names({"TRADEFLOW_ZZZ_UNRELATED": "", "TRADEFLOW_A": "", "OTHER": ""})


def test_sb3_section_is_flat_nested_and_environment_settable_and_logged():
    env = env_layer({"TRADEFLOW_SB3_GAMMA": "0.95"})
    cfg = resolve_config(env, {"symbol": "BTC", "sb3_dqn_batch_size": "32"},
                         {"config": json.dumps({"sb3": {"dqn_target_update_interval": 50}})})
    assert (cfg.sb3.gamma, cfg.sb3.dqn_batch_size, cfg.sb3.dqn_target_update_interval) == (0.95, 32, 50)
    flat = cfg.flat_params()
    assert flat["cfg.sb3.gamma"] == "0.95" and flat["cfg.sb3.dqn_learning_starts"] == ""  # unset = derived
    with pytest.raises(ConfigError, match="invalid parameter 'sb3.gamma'"):
        resolve_config({"symbol": "BTC", "sb3_gamma": 1.5})
    with pytest.raises(ConfigError, match="invalid parameter 'sb3.ppo_batch_size'"):
        resolve_config({"symbol": "BTC", "sb3": {"ppo_batch_size": 1}})  # SB3's PPO needs > 1
