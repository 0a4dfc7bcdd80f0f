"""``review``: the AutoGen team's BUY/SELL/HOLD decision on an evidence bundle.

    mlflow run . -e review -P evidence_uri=runs:/<inference run>/evidence.json [-P reviewer=rules]
"""

from __future__ import annotations

import os

from tradeflow.cli import config_from_flags, fail_before_work, main_wrapper, parser
from tradeflow.errors import ConfigError

FLAGS = ("evidence_uri", "reviewer", "review_model", "config")


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, FLAGS, required=("evidence_uri",)).parse_args(argv)
    # one trace per process, logged before the run ends: MLflow's async export queue only adds its
    # ~1 s flush wait (its consumer polls with a 1 s timeout) to every review (issue 26)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")

    def step() -> None:
        from tradeflow.steps.review import load_evidence, review_step
        from tradeflow.runs.tracking import configure_tracking

        configure_tracking()
        try:
            evidence = load_evidence(args.evidence_uri)
        except (LookupError, ValueError) as exc:
            fail_before_work(str(exc))
        try:
            cfg = config_from_flags(args, extra_layers=[{"symbol": evidence["symbol"], "bar_size": evidence.get("bar_size") or ""}])
        except ConfigError as exc:
            fail_before_work(str(exc))
        review_step(cfg, evidence, args.evidence_uri)

    main_wrapper(step)


if __name__ == "__main__":
    from tradeflow.runs.forkserver import run_then_exit

    run_then_exit(main)  # the exit without the ~2 s teardown of torch, mlflow & co.
