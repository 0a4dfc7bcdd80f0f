"""``reproduce``: re-run a past stage run (recorded entry point, params, data, commit) from a clean
checkout and report whether its metrics match.

    mlflow run . -e reproduce -P run_id=<run id from the MLflow UI>
"""

from __future__ import annotations

from tradeflow.cli import fail_before_work, main_wrapper, parser


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, ("run_id",), required=("run_id",)).parse_args(argv)

    def step() -> None:
        from tradeflow.settings import resolve_with_env
        from tradeflow.errors import tracking_lookup_error
        from tradeflow.runs.records import Tag
        from tradeflow.pipeline.reproduce import NotReproducible, recorded_invocation, reproduce
        from tradeflow.runs.tracking import configure_tracking

        uri = configure_tracking()
        try:
            invocation = recorded_invocation(args.run_id)
        except NotReproducible as exc:
            fail_before_work(str(exc))
        except Exception as exc:  # not a run, or the store is down: say which
            fail_before_work(str(tracking_lookup_error(exc, f"run_id {args.run_id!r}", uri)))
        experiment = resolve_with_env({"symbol": invocation["run"].data.tags.get(Tag.SYMBOL, "X")})
        reproduce(args.run_id, experiment.experiment_name)

    main_wrapper(step)


if __name__ == "__main__":
    from tradeflow.runs.forkserver import run_then_exit

    run_then_exit(main)  # the exit without the ~2 s teardown of torch, mlflow & co.
