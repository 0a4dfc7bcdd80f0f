"""The FinAgent agent: upstream's analysis plus the calibrated rule as a ``TradingAgent``, its
saved "config package", and what inference hands the review team from it (``review_evidence``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradeflow.engines.base import ActionResult
from tradeflow.engines.finagent.analyst import BAR_FEATURES, FinAgentAnalyst
from tradeflow.engines.finagent.rule import SIGNALS, Calibration, probability, rating_for, votes_from_analysis

if TYPE_CHECKING:
    from tradeflow.engines.finagent.compat import FinAgentUpstream

CONFIG_FILE = "finagent_config.json"


class FinAgentAgent:
    """Upstream's analysis + the calibrated rule, as a ``TradingAgent`` over raw OHLC windows."""

    engine = "finagent"
    feature_columns: tuple[str, ...] = BAR_FEATURES

    def __init__(self, analyst: FinAgentAnalyst, calibration: Calibration, *, window: int, max_volume: int,
                 report: Mapping[str, Any] | None = None) -> None:
        self.analyst = analyst
        self.calibration = calibration
        self.window = int(window)
        self.max_volume = int(max_volume)
        self.report = dict(report or {})

    def decide(self, bars: pd.DataFrame, held: int = 0) -> dict[str, Any]:
        """Upstream's analysis of ``bars`` and what the calibrated rule makes of it."""
        analysis = self.analyst.analyse(bars)
        votes = votes_from_analysis(analysis)
        prob = probability(votes, self.calibration.weights)
        rating = rating_for(prob, self.calibration.buy_threshold, self.calibration.sell_threshold)
        return {"analysis": analysis, "votes": votes, "probability": round(prob, 6), "rating": rating,
                "target": self.calibration.target(rating, held, self.max_volume)}

    def act(self, features: np.ndarray, position: float = 0.0) -> ActionResult:
        features = np.asarray(features, dtype=np.float64)
        expected = (self.window, len(self.feature_columns))
        if features.shape != expected:
            raise ValueError(f"features must have shape {expected} (window, open/high/low/close); got {features.shape}")
        held = int(round(float(position) * self.max_volume))
        decision = self.decide(pd.DataFrame(features, columns=list(self.feature_columns)), held)
        prob = decision["probability"]
        low = -self.max_volume if self.calibration.allow_short else 0
        return ActionResult(action=int(decision["target"]), scores={self.max_volume: prob, low: round(1.0 - prob, 6)})

    def config_package(self) -> dict[str, Any]:
        from tradeflow.engines.finagent.compat import UPSTREAM_COMMIT, UPSTREAM_REPO

        measured = getattr(self.analyst.upstream, "provenance", None)
        return {
            "engine": self.engine,
            # the interface followed; ``implementation`` says what actually ran (upstream verified, or not)
            "upstream": {"repository": UPSTREAM_REPO, "commit": self.analyst.upstream.commit or UPSTREAM_COMMIT,
                         "function": "agents/technical_analysis.py:run_enhanced_technical_analysis",
                         "forecaster": "agents/forecaster.py:analyze_and_predict",
                         "implementation": measured.implementation if measured else "unverified",
                         "implementation_label": measured.label if measured else "unverified (no provenance measured)",
                         "tree_sha256": measured.tree_sha256 if measured else None},
            "window": self.window, "max_volume": self.max_volume, "feature_columns": list(self.feature_columns),
            "signals": list(SIGNALS),
            "calibration": asdict(self.calibration),
            "upstream_rule": asdict(Calibration.upstream_default(self.calibration.allow_short)),
            "report": self.report,
        }

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config_package(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path, upstream: FinAgentUpstream | None = None) -> FinAgentAgent:
        from tradeflow.engines.finagent.compat import UPSTREAM_COMMIT, import_finagent

        package = json.loads((Path(directory) / CONFIG_FILE).read_text())
        commit = package["upstream"]["commit"]
        if commit != UPSTREAM_COMMIT:
            raise ValueError(f"model was calibrated on upstream {commit[:12]}; this code pins {UPSTREAM_COMMIT[:12]}")
        c = package["calibration"]
        calibration = Calibration({k: float(v) for k, v in c["weights"].items()}, float(c["buy_threshold"]),
                                  float(c["sell_threshold"]), bool(c["allow_short"]))
        return cls(FinAgentAnalyst(upstream or import_finagent(), package.get("report", {}).get("symbol", "SYMBOL")), calibration,
                   window=int(package["window"]), max_volume=int(package["max_volume"]), report=package.get("report"))


# --- inference: upstream's analysis as review evidence ---------------------------------------------


def review_evidence(agent: FinAgentAgent, window: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the review team gets from FinAgent for the latest window: the ``finagent`` evidence
    section (upstream's analysis JSON, the calibrated reading of it, provenance) and the ``prompts``
    section (upstream's forecaster prompt for that analysis, generated by the installed upstream)."""
    decision = agent.decide(window.reset_index(drop=True))
    analysis = decision["analysis"]
    package = agent.config_package()
    section = {
        "upstream": package["upstream"],
        "analysis": analysis,
        "upstream_rating": analysis.get("final_decision", {}).get("rating"),
        "upstream_probability": analysis.get("final_decision", {}).get("probability"),
        "calibrated": {"votes": decision["votes"], "probability": decision["probability"],
                       "rating": decision["rating"], **package["calibration"]},
    }
    missing: list[str] = []
    section = _finite_or_null(section, "finagent", missing)
    if missing:
        # JSON has no NaN/inf and the review refuses them: an indicator upstream could not compute
        # (too few bars for its window) is an absent value, and the evidence says which.
        section["non_finite_as_null"] = missing
    prompt = agent.analyst.forecaster_prompt(analysis)
    source = (f"{package['upstream']['repository']}@{package['upstream']['commit'][:12]}:{package['upstream']['forecaster']}"
              if package["upstream"]["implementation"] == "upstream"
              else f"{package['upstream']['implementation_label']}:{package['upstream']['forecaster']}")
    prompts = {"forecaster": {"text": prompt, "source": source}}
    return section, prompts


def _finite_or_null(value: Any, where: str, missing: list[str]) -> Any:
    """``value`` with every NaN/inf number replaced by None; the dotted paths go into ``missing``."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v, f"{where}.{k}", missing) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", missing) for i, v in enumerate(value)]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        missing.append(where)
        return None
    return value
