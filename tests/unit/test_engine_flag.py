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


def test_a_missing_upstream_is_named_before_the_pipeline_starts(monkeypatch, tmp_path, capsys):
    """Where upstream is absent, ``-P engine=finagent`` fails in one line (exit 2) before any stage."""
    from entrypoints import pipeline
    from tradeflow.engines import engine_missing
    from tradeflow.engines.finagent import compat

    monkeypatch.delenv(compat.ENV_BACKEND, raising=False)
    monkeypatch.setattr(compat.sys, "prefix", str(tmp_path))  # no finagent-upstream.json here
    reason = engine_missing("finagent")
    assert reason and "\n" not in reason and compat.INSTALL_COMMAND in reason
    assert engine_missing("builtin") is None
    with pytest.raises(SystemExit) as caught:
        pipeline.main(["--symbol", "AAPL", "--engine", "finagent"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {reason}"
