"""``engine`` is a ``pipeline`` parameter (MLproject ``-P engine=``), resolved and validated like the others."""

from __future__ import annotations

import pytest

from tradeflow.cli import config_from_flags, parser
from tradeflow.errors import ConfigError


def _pipeline_args(*argv: str):
    from entrypoints.pipeline import FLAGS

    return parser("pipeline", FLAGS, required=("symbol",)).parse_args(["--symbol", "AAPL", *argv])


def test_pipeline_engine_flag_sets_the_engine_and_its_registered_name():
    cfg = config_from_flags(_pipeline_args("--engine", "finagent"))
    assert cfg.engine == "finagent" and cfg.registered_model_name == "finagent_AAPL"
    assert config_from_flags(_pipeline_args("--engine", "")).engine == "builtin"  # "" = unset


def test_an_unknown_engine_is_one_config_error_line_before_any_run():
    with pytest.raises(ConfigError) as caught:
        config_from_flags(_pipeline_args("--engine", "dqn"))
    message = str(caught.value)
    assert "\n" not in message and "engine" in message and "'finagent'" in message
