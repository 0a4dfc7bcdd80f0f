"""``pipeline``: one symbol's stages as child runs of a parent run, with the stage cache.

    mlflow run . -e pipeline -P symbol=AAPL -P mode=both [-P engine=finagent] [-P execution_id=...] [-P force=true]
"""

from __future__ import annotations


def _warm_up() -> None:
    """Start the stages' warm process first (``runs.forkserver``): it imports mlflow, torch & co.
    while this process imports mlflow, instead of the first stage waiting for it (or find this
    machine's shared one for the checkout, already warm: ``TRADEFLOW_FORK_SERVER_IDLE_S``)."""
    from tradeflow.errors import ConfigError
    from tradeflow.names import PROJECT_ROOT
    from tradeflow.pipeline.stages import WARM_LATER, WARM_MODULES
    from tradeflow.runs.forkserver import prestart
    from tradeflow.settings import current

    try:
        settings = current()
        if settings.fork_server:
            prestart(list(WARM_MODULES), PROJECT_ROOT, later=list(WARM_LATER), idle_s=settings.fork_server_idle_s)
    except ConfigError:  # said once, by the entry point's own config resolution
        pass


def _hand_over() -> None:
    """With this machine's shared warm process already up, run as its forked child (this process
    only waits and passes signals on); otherwise return and run here."""
    import sys

    from tradeflow.runs.forkserver import hand_over

    hand_over("entrypoints.pipeline", sys.argv[1:])


def _warm_only() -> None:
    """``python -m entrypoints.pipeline --warm-only``: start the shared warm process, wait until it
    is ready, exit (``scripts/demo.sh`` runs it in the background, so the warm process imports
    while the store is set up and ``mlflow run`` starts, instead of the first stage waiting)."""
    from tradeflow.runs.forkserver import wait_prestarted

    raise SystemExit(0 if wait_prestarted() else 1)


if __name__ == "__main__":
    import sys as _sys

    _warm_up()
    if _sys.argv[1:] == ["--warm-only"]:
        _warm_only()
    _hand_over()

from tradeflow.cli import config_from_flags, fail_before_work, main_wrapper, parser  # noqa: E402
from tradeflow.errors import ConfigError  # noqa: E402
from tradeflow.settings import parse_bool  # noqa: E402

FLAGS = ("symbol", "mode", "execution_id", "force", "data_source", "engine", "epochs", "reviewer", "dag_id", "task_id", "config")


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, FLAGS, required=("symbol",)).parse_args(argv)
    try:
        cfg = config_from_flags(args)
        force = parse_bool(args.force, "force")
    except ConfigError as exc:
        fail_before_work(str(exc))
    from tradeflow.engines import engine_missing

    if reason := engine_missing(cfg.engine):  # before the parent run and any stage
        fail_before_work(reason)

    def step() -> None:
        from tradeflow.pipeline.run import run_pipeline

        run_pipeline(cfg, execution_id=args.execution_id or None, force=force, dag_id=args.dag_id, task_id=args.task_id)

    main_wrapper(step)


if __name__ == "__main__":
    from tradeflow.runs.forkserver import run_then_exit

    run_then_exit(main)  # the exit without the ~2 s teardown of torch, mlflow & co.
