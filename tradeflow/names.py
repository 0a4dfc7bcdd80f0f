"""The project's fixed vocabulary, each declared once: pipeline modes, data-source kinds, the symbol
pattern, the pipeline DAG ids and the project root. Standard library only (DAG files import it at parse time)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal, get_args

#: the repository root: the MLproject the executors run, the default store beside it
PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]

#: what one symbol's pipeline runs (``pipeline.stages.STAGES_BY_MODE``, the DAG's trigger form)
Mode = Literal["both", "train_backtest", "inference"]
MODES: Final = get_args(Mode)

#: a symbol as typed (the DAG's trigger form checks it); upper-cased before use
SYMBOL_PATTERN: Final = r"^[A-Za-z0-9.^-]{1,20}$"
SYMBOL_RE: Final = re.compile(SYMBOL_PATTERN)

#: data sources that take no argument: ``backend:http://elsewhere`` is refused, not ignored
PLAIN_SOURCES: Final = ("backend", "ibkr", "yfinance", "synthetic")
SOURCE_KINDS: Final = ("csv", *PLAIN_SOURCES)

#: the pipeline DAGs (``tradeflow.orchestration``); the WebUI links symbols to them by id
DAG_ID: Final = "trademaster_autogen_pipeline_workflow"
FINAGENT_DAG_ID: Final = "finagent_autogen_pipeline_workflow"


def check_name_text(value: str, what: str) -> str:
    """``value`` unchanged when it is plain ASCII with nothing around it, else ``ValueError``:
    look-alikes (``ıbm``, ``ſpy``, ``ﬁ`` upper-case or NFKC-normalise into another name) and a
    trailing ``\n`` (a ``$`` regex lets it through) never become a second spelling of a name."""
    import unicodedata

    if not value.isascii() or unicodedata.normalize("NFKC", value) != value:
        raise ValueError(f"{what} {value[:60]!r} is not plain ASCII (look-alike characters are refused)")
    if value != value.strip():
        raise ValueError(f"{what} {value[:60]!r} has leading or trailing whitespace")
    return value


def check_symbol(value: str) -> str:
    """An upper-cased symbol, or ``ValueError`` saying what is wrong with it."""
    check_name_text(value, "symbol")
    if not SYMBOL_RE.fullmatch(value) or value != value.upper():
        raise ValueError(f"{value!r} has characters outside [A-Z0-9.^-] (or is longer than 20)")
    if not re.search(r"[A-Z0-9]", value):
        raise ValueError(f"{value!r} must hold at least one letter or digit")
    return value


def check_data_source(value: str) -> str:
    """``csv:<path>[,<path>]`` or a plain source kind, stripped; else ``ValueError``."""
    value = value.strip()
    kind = value.split(":", 1)[0]
    if kind not in SOURCE_KINDS:
        raise ValueError(f"{value!r} is not a data source; use csv:<path>, {', '.join(PLAIN_SOURCES[:-1])} "
                         f"or {PLAIN_SOURCES[-1]}")
    if kind == "csv" and not value[4:].strip():
        raise ValueError("csv data source needs a path: csv:<path>[,<path>...]")
    if kind in PLAIN_SOURCES and value != kind:
        raise ValueError(f"data source {kind} takes no argument (got {value[:60]!r}); its endpoint comes from"
                         " the environment (BACKEND_API_URL, IBKR_API_URL)")
    return value
