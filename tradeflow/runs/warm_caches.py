"""Imported only by the warm stage process (``stages.WARM_MODULES``): fills, once, the caches every
stage process would otherwise fill for itself, so a forked stage inherits them.

- MLflow's module -> distribution map (``importlib_metadata.packages_distributions()`` over every
  installed distribution): ``log_model`` builds it to check the pinned requirements (~0.5 s of
  each train_backtest, issue 26). It describes the installed packages, which a shared warm
  process's key already covers (``forkserver.code_digest`` reads site-packages' mtime).

A cache that is gone or renamed in another MLflow version is skipped: the stage then fills it as
before, only slower.
"""

from __future__ import annotations


def fill() -> None:
    try:
        from mlflow.utils import requirements_utils
    except ImportError:
        return
    init = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    if callable(init):
        init()


fill()
