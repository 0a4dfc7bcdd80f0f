"""The agent trained pooled across the universe: one model on every symbol's features.

A per-symbol model sees a few hundred daily bars; the pooled one sees all of them (29x on the DJ30).
At each refit date it is trained, through the train step's own ``compute_train``, on every symbol's
feature rows up to that date, split chronologically *per symbol* (each symbol's first 60% to train,
the next 20% to validate, the last 20% to test) and concatenated symbol after symbol. The prices
of each segment are rescaled to start at the previous segment's last close, so the environment sees
no jump where one symbol's history ends and the next begins; the features are ratios and unchanged.
The walk-forward then acts with it on each symbol's own window (``agent_pooled``) and offers it as
a candidate rule like the per-symbol agent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tradeflow.config import RunConfig

log = logging.getLogger(__name__)

PRICE_COLUMNS = ("open", "high", "low", "close", "adjcp")


def _chain(frames: list[pd.DataFrame]) -> pd.DataFrame:
    out, last = [], None
    for frame in frames:
        frame = frame.copy()
        if last is not None and len(frame):
            factor = last / float(frame["close"].iloc[0])
            for column in PRICE_COLUMNS:
                if column in frame:
                    frame[column] = frame[column] * factor
        if len(frame):
            last = float(frame["close"].iloc[-1])
        out.append(frame)
    return pd.concat(out, ignore_index=True)


def pooled_splits(features: Mapping[str, pd.DataFrame], upto: pd.Timestamp, cfg: RunConfig):
    """Every symbol's rows up to ``upto``, split chronologically per symbol, chained by split."""
    from tradeflow.features import Splits

    parts: dict[str, list[pd.DataFrame]] = {"train": [], "valid": [], "test": []}
    ratios = cfg.split
    for frame in features.values():
        seen = frame[frame["date"] <= upto]
        n = len(seen)
        a, b = int(n * ratios.train_ratio), int(n * (ratios.train_ratio + ratios.valid_ratio))
        if a < 30 or b - a < 10 or n - b < 10:
            continue
        parts["train"].append(seen.iloc[:a])
        parts["valid"].append(seen.iloc[a:b])
        parts["test"].append(seen.iloc[b:])
    if not parts["train"]:
        return None
    return Splits(*(_chain(parts[k]).reset_index(drop=True) for k in ("train", "valid", "test")))


def train_pooled(base_cfg: RunConfig, features: Mapping[str, pd.DataFrame], dates: list[pd.Timestamp],
                 workdir: Path) -> dict[pd.Timestamp, Any]:
    """``{refit date: (agent, gate, seconds)}`` for every refit date (the per-symbol refit dates)."""
    from tradeflow.engines import get_engine
    from tradeflow.steps.train_backtest import compute_train

    engine = get_engine(base_cfg.engine)
    cfg = base_cfg.override({"symbol": "POOLED"})
    out: dict[pd.Timestamp, Any] = {}
    for date in sorted(set(dates)):
        splits = pooled_splits(features, date, cfg)
        if splits is None:
            continue
        outcome = compute_train(splits, cfg, engine=engine, workdir=workdir)
        out[date] = (outcome.agent, outcome.gate, outcome.train_seconds)
        log.info("pooled agent %s: %d train rows from %d symbols, gate %s (%.1fs)", f"{date:%Y-%m-%d}",
                 len(splits.train), len(features), "passed" if outcome.gate.passed else "failed", outcome.train_seconds)
    return out


def latest_before(models: Mapping[pd.Timestamp, Any], date: pd.Timestamp) -> Any | None:
    """The pooled model refitted last on or before ``date`` (None before the first)."""
    keys = [d for d in models if d <= date]
    return models[max(keys)] if keys else None


