"""Are the decisions any good? Walk-forward evaluation of the pipeline's decisions against baselines.

    walkforward.py  one symbol: refit on the past, decide out of sample, account every policy
    policies.py     the baselines (buy-and-hold, flat, seeded random, SMA crossover)
    universe.py     many symbols: medians with bootstrap intervals, paired comparisons, calibration
    report.py       markdown/HTML report, plots, the per-symbol child runs
    step.py         the ``evaluate`` entry point's body (parent run, artifacts)

See docs/evaluation.md for the method, the figures and how to reproduce them.
"""

from tradeflow.evaluation.walkforward import WalkForwardSpec, decide, evaluate_symbol, score

__all__ = ["WalkForwardSpec", "decide", "evaluate_symbol", "score"]
