"""``persist``: write a review run's decision to the WebUI (signal, llm, chart) with lineage.

    mlflow run . -e persist -P review_run_id=<id> [-P execution_id=<airflow run id>]
"""

from __future__ import annotations

from tradeflow.cli import config_from_flags, fail_before_work, main_wrapper, parser
from tradeflow.errors import ConfigError

FLAGS = ("review_run_id", "execution_id", "dag_id", "task_id")


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, FLAGS, required=("review_run_id",)).parse_args(argv)

    def step() -> None:
        from mlflow.tracking import MlflowClient

        from tradeflow.errors import tracking_lookup_error
        from tradeflow.runs.records import Tag
        from tradeflow.steps.persist import persist_step
        from tradeflow.runs.tracking import configure_tracking
        from tradeflow.webui import DAG_ID

        uri = configure_tracking()
        try:
            review_run = MlflowClient().get_run(args.review_run_id)
        except Exception as exc:  # not a run, or the store is down: say which
            fail_before_work(str(tracking_lookup_error(exc, f"review_run_id {args.review_run_id!r}", uri)))
        try:
            cfg = config_from_flags(args, extra_layers=[{"symbol": review_run.data.tags.get(Tag.SYMBOL, "")}])
        except ConfigError as exc:
            fail_before_work(str(exc))
        execution_id = args.execution_id or review_run.data.tags.get(Tag.PARENT_RUN_ID) or args.review_run_id
        persist_step(cfg, args.review_run_id, execution_id=execution_id,
                     dag_id=args.dag_id or DAG_ID, task_id=args.task_id or "persist")

    main_wrapper(step)


if __name__ == "__main__":
    from tradeflow.runs.forkserver import run_then_exit

    run_then_exit(main)  # the exit without the ~2 s teardown of torch, mlflow & co.
