"""The environment (tradeflow/settings.py): one typed model for the operational ``TRADEFLOW_*``
variables, validated once; unknown names refused; one bool parser. And the vocabulary
(tradeflow/names.py) that the DAGs, the pipeline and the config share."""

from __future__ import annotations

from typing import get_args

import pytest

from tradeflow import settings
from tradeflow.config import RunConfig
from tradeflow.errors import ConfigError
from tradeflow.settings import OPERATIONAL_ENV, Settings, current, env_name, parse_bool


def test_defaults_and_values_come_from_the_variables_named_after_the_fields():
    assert current({}) == Settings()
    s = current({"TRADEFLOW_EXECUTOR": " Databricks ", "TRADEFLOW_DATABRICKS_POLL_S": "0.5", "TRADEFLOW_POOL": "",
                 "TRADEFLOW_LOG_LEVEL": "debug", "TRADEFLOW_DAG_SCHEDULE": "None", "TRADEFLOW_ENV_MANAGER": "uv"})
    assert (s.executor, s.databricks_poll_s, s.pool, s.log_level, s.dag_schedule, s.env_manager) == (
        "databricks", 0.5, None, "DEBUG", None, "uv")
    assert {env_name(field) for field in Settings.model_fields} <= OPERATIONAL_ENV


@pytest.mark.parametrize("name, value, says", [
    ("TRADEFLOW_PARALLEL_SYMBOLS", "0", "greater than or equal to 1"),
    ("TRADEFLOW_TASK_RETRIES", "two", "valid integer"),
    ("TRADEFLOW_EXECUTOR", "kubernetes", "'local' or 'databricks'"),
    ("TRADEFLOW_LEASE_TIMEOUT_S", "-5", "greater than 0"),
    ("TRADEFLOW_HTTP_DEADLINE_S", "nan", "finite number"),
    ("TRADEFLOW_LOG_LEVEL", "LOUD", "'INFO'"),
])
def test_a_bad_value_is_one_line_naming_the_variable_and_the_value(name, value, says):
    with pytest.raises(ConfigError) as caught:
        current({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r}: ") and says in message and "\n" not in message


def test_the_environment_is_validated_once_per_distinct_set_of_values():
    settings._parse.cache_clear()
    env = {"TRADEFLOW_TASK_RETRIES": "3", "PATH": "/bin"}
    assert current(env) is current(dict(env, PATH="/usr/bin"))  # other variables do not count
    assert current(env) is not current({"TRADEFLOW_TASK_RETRIES": "4"})
    assert settings._parse.cache_info().misses == 2


def test_an_unknown_name_fails_the_settings_and_the_run_config_alike():
    for read in (current, settings.env_layer):
        with pytest.raises(ConfigError, match=r"^unknown environment variable TRADEFLOW_PARALEL_SYMBOLS "
                                              r"\(did you mean TRADEFLOW_PARALLEL_SYMBOLS\?\); known"):
            read({"TRADEFLOW_PARALEL_SYMBOLS": "2"})


def test_the_env_layer_takes_run_parameters_and_leaves_settings_out():
    layer = settings.env_layer({"TRADEFLOW_EPOCHS": "4", "TRADEFLOW_EXECUTOR": "local", "TRADEFLOW_REVIEWER": "rules"})
    assert layer == {"trademaster": {"epochs": "4"}, "review": {"provider": "rules"}}


def test_the_log_level_falls_back_to_info_when_the_environment_is_bad():
    assert settings.log_level({"TRADEFLOW_LOG_LEVEL": "warning"}) == "WARNING"
    assert settings.log_level({"TRADEFLOW_LOG_LEVEL": "warning", "TRADEFLOW_NOPE": "1"}) == "INFO"


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("true", True), (" YES ", True), ("1", True), ("on", True),
    ("false", False), ("No", False), ("0", False), ("off", False),
])
def test_parse_bool_reads_the_usual_words(value, expected):
    assert parse_bool(value, "force") is expected


def test_parse_bool_blank_means_unset_and_anything_else_is_refused():
    assert parse_bool("", "force") is False and parse_bool(None, "force") is False
    assert parse_bool(" ", "IBKR_VERIFY_TLS", blank=True) is True
    with pytest.raises(ConfigError, match=r"^invalid parameter 'IBKR_VERIFY_TLS': '' is not true/false$"):
        parse_bool("", "IBKR_VERIFY_TLS", blank=None)
    with pytest.raises(ConfigError, match=r"^invalid parameter 'force': 'maybe' is not true/false$"):
        parse_bool("maybe", "force")


def test_each_name_is_declared_once_and_the_users_agree():
    from tradeflow.names import DAG_ID, MODES, SYMBOL_RE, check_symbol
    from tradeflow.orchestration import EXECUTORS
    from tradeflow.orchestration.dag_builder import GROUPS_BY_MODE
    from tradeflow.pipeline.stages import STAGES_BY_MODE
    from tradeflow.webui import DAG_ID as WEBUI_DAG_ID

    assert tuple(STAGES_BY_MODE) == tuple(GROUPS_BY_MODE) == MODES == get_args(RunConfig.model_fields["mode"].annotation)
    assert tuple(EXECUTORS) == get_args(Settings.model_fields["executor"].annotation)
    assert WEBUI_DAG_ID == DAG_ID
    assert SYMBOL_RE.match("brk.b") and check_symbol("BRK.B") == "BRK.B"
    with pytest.raises(ValueError, match="outside"):
        check_symbol("brk.b")  # the config upper-cases first; the check itself does not
