"""Numbers as people read them in run names, descriptions and figure titles.

Its own module so that text-only code (run descriptions in the review and inference processes)
does not import matplotlib with the plots (~2 s a process)."""

from __future__ import annotations


def pct_text(value: float | None) -> str:
    """``+7.5 %`` (a fraction as a signed percentage), ``n/a`` when missing."""
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if value != value else f"{value * 100:+.1f} %"
