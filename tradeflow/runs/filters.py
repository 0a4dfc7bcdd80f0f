"""MLflow search filters built from values the project did not choose (execution ids, symbols,
Airflow run ids). MLflow's filter grammar has no escape character, so an f-string with a quote in
the value breaks the filter (a traceback) or matches the wrong runs; ``filter_value`` quotes it."""

from __future__ import annotations

from tradeflow.errors import InputError


def filter_value(value: str) -> str:
    """``value`` as a quoted MLflow filter literal: single-quoted, or double-quoted when it holds a
    single quote; ``ValueError`` (one line) when it holds both quote characters."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise InputError(f"{value[:60]!r} holds both quote characters; MLflow filters cannot express it")
