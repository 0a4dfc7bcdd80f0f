"""Importing upstream TradeMaster (TradeMaster-NTU/TradeMaster @ c1c4838) on Python 3.11 / numpy 2 / torch 2.13.

Nothing here is upstream code: each shim wraps or stands in for one thing, and only for upstream's
algorithmic-trading DQN path. ``import_trademaster()`` applies them once and returns upstream's
own builders; it raises ``EngineUnavailable`` (one line + the install command) when upstream or
its dependencies are missing. Why each shim exists (docs/trademaster_engine.md has the details):

1. **ray stand-in.** ``trademaster.trainers`` imports every trainer, and the portfolio-management
   ones run ``import ray; ray.init(...); @ray.remote ...`` at import time. ray 1.13 (upstream's
   pin) has no Python 3.11 wheel, and a real newer ray would start a local cluster on import. For
   the import only, ``sys.modules`` gets a stand-in ``ray`` (``init``/``shutdown`` no-ops,
   ``remote`` returns an object whose use raises, ``tune.registry.register_env`` a no-op); the
   previous ``sys.modules`` entries (none, or a real ray) are put back right after.
2. **logging.** Those same modules call ``logging.disable(logging.WARNING)``, silencing every
   logger in the process. The previous ``logging.disable`` level is restored right after import.
3. **numpy 2.** The env's terminal step computes ``np.nan_to_num(np.std(neg_ret_lst), 0)``: the
   ``0`` lands on ``copy=``, and numpy 2 refuses ``copy=False`` for a scalar ("Unable to avoid
   copy"), so every episode end raises. That one module's ``np`` becomes numpy with a
   ``nan_to_num`` that always copies (what numpy 1 did for a scalar). Nothing else is touched.
4. **torch >= 2.6 checkpoints.** ``torch.load`` defaults to ``weights_only=True``; upstream's
   ``best.pth`` stores ``epoch=np.argmax(...) + 1`` (a numpy scalar), which that loader refuses.
   ``torch.serialization.add_safe_globals`` admits numpy's scalar reconstructor and dtype classes
   (data, not code), process-wide and idempotently.
5. **Noise.** gym 0.26's "unmaintained" notice and import-time deprecation warnings are kept out of
   the run's stderr (logged at DEBUG).

mmcv: upstream imports ``mmcv.Config`` / ``mmcv.utils.Registry``; real mmcv 1.7.1 builds as pure
Python with setuptools<70 and yapf 0.40.1 (scripts/install_trademaster.sh), so no facade is used.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradeflow.engines._once import ImportOnce
from tradeflow.engines.base import EngineUnavailable
from tradeflow.engines.provenance import Provenance

log = logging.getLogger(__name__)

UPSTREAM_REPO = "TradeMaster-NTU/TradeMaster"
UPSTREAM_COMMIT = "c1c4838b518a85ecec6d4ded40be8815ade5f41d"
INSTALL_COMMAND = "bash scripts/install_trademaster.sh"
ENV_MODULE = "trademaster.environments.algorithmic_trading.environment"

_RAY_MODULES = ("ray", "ray.tune", "ray.tune.registry")
#: upstream, imported on first use (``_import`` below)
_once: ImportOnce[Upstream] = ImportOnce(lambda: _import())


@dataclass(frozen=True)
class Upstream:
    """Upstream's own builders for the algorithmic-trading DQN path, plus how they were imported."""

    Config: type
    build_dataset: Callable[..., Any]
    build_environment: Callable[..., Any]
    build_net: Callable[..., Any]
    build_agent: Callable[..., Any]
    build_optimizer: Callable[..., Any]
    build_loss: Callable[..., Any]
    build_trainer: Callable[..., Any]
    build_transition: Callable[..., Any]
    set_seed: Callable[[int], None]
    environment_module: types.ModuleType
    origin: str
    mmcv_version: str
    numpy_patched: bool
    #: the imported package's files measured against scripts/trademaster-c1c4838.sha256
    provenance: Provenance | None = None


# --- 1. ray stand-in ----------------------------------------------------------------------------


class _RayUnavailable:
    """What ``@ray.remote`` returns: importable, unusable (only portfolio-management trainers call it)."""

    def __init__(self, target: Any = None) -> None:
        self._name = getattr(target, "__name__", "remote")

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"ray is a stand-in here ({self._name}): upstream's portfolio-management trainers need "
            "ray[rllib]==1.13, which has no Python 3.11 build; tradeflow drives only the "
            "algorithmic-trading DQN path"
        )

    def options(self, *args: Any, **kwargs: Any) -> _RayUnavailable:
        return self


def _remote(*args: Any, **kwargs: Any) -> Any:
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _RayUnavailable(args[0])
    return _RayUnavailable


def _ray_get(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("ray is a stand-in here: upstream's ray-based trainers are not supported")


def _ray_stand_in() -> dict[str, types.ModuleType]:
    ray = types.ModuleType("ray", "tradeflow stand-in for ray (import-time only; see tradeflow.engines.trademaster.compat)")
    tune = types.ModuleType("ray.tune")
    registry = types.ModuleType("ray.tune.registry")
    ray.__path__ = []  # a package, so `from ray.tune.registry import ...` resolves through sys.modules
    tune.__path__ = []
    ray.init = lambda *a, **k: None
    ray.shutdown = lambda *a, **k: None
    ray.is_initialized = lambda: False
    ray.remote = _remote
    ray.get = _ray_get
    ray.tune, tune.registry = tune, registry
    registry.register_env = lambda *a, **k: None
    for module in (ray, tune, registry):
        module.__tradeflow_stand_in__ = True
    return {"ray": ray, "ray.tune": tune, "ray.tune.registry": registry}


@contextlib.contextmanager
def _ray_stand_in_installed() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in _RAY_MODULES}
    sys.modules.update(_ray_stand_in())
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# --- 2/5. logging and noise ---------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Keep upstream's import-time notices off stderr and restore ``logging.disable`` afterwards."""
    disabled_before = logging.root.manager.disable
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        # upstream's portfolio-management trainers call logging.disable(logging.WARNING) globally
        logging.disable(disabled_before)
        if captured.getvalue().strip():
            log.debug("upstream import notices: %s", captured.getvalue().strip())


# --- 3. numpy 2 -----------------------------------------------------------------------------------


def _numpy_with_copying_nan_to_num() -> types.ModuleType:
    """numpy, except ``nan_to_num`` ignores a falsy positional ``copy`` (numpy 2 raises for scalars)."""
    import numpy

    compat = types.ModuleType("numpy", "numpy as seen by upstream's algorithmic-trading env (tradeflow shim)")
    compat.__dict__.update(numpy.__dict__)  # includes numpy's module __getattr__ for lazy attributes
    original = numpy.nan_to_num

    def nan_to_num(x: Any, copy: bool = True, *args: Any, **kwargs: Any) -> Any:
        return original(x, True, *args, **kwargs)

    compat.nan_to_num = nan_to_num
    compat.__tradeflow_shim__ = "nan_to_num always copies"
    return compat


def _patch_numpy2(env_module: types.ModuleType) -> bool:
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        return False
    if not getattr(env_module.np, "__tradeflow_shim__", None):
        env_module.np = _numpy_with_copying_nan_to_num()
    return True


# --- 4. torch checkpoints -------------------------------------------------------------------------


def checkpoint_safe_globals() -> list[Any]:
    """numpy's scalar reconstructor and dtype classes: what upstream's checkpoints pickle besides tensors."""
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    allowed: list[Any] = [core.multiarray.scalar, numpy.dtype]
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:
        allowed += [v for v in vars(dtypes).values() if isinstance(v, type) and issubclass(v, numpy.dtype)]
    return allowed


def _allow_numpy_scalars_in_checkpoints() -> None:
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 loads them anyway
        add(checkpoint_safe_globals())


# --- the import -----------------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why ``import_trademaster`` would fail, without importing anything heavy; None if it may work."""
    for name in ("trademaster", "mmcv", "gym"):
        if importlib.util.find_spec(name) is None:
            return f"python package '{name}' is not installed"
    return None


def import_trademaster() -> Upstream:
    """Import upstream's algorithmic-trading DQN path once (thread-safe) with the shims above."""
    return _once()


def _import() -> Upstream:
    reason = unavailable_reason()
    if reason is None:
        try:
            with _ray_stand_in_installed(), _quiet_import():
                import mmcv
                from mmcv import Config

                modules = {
                    name: importlib.import_module(f"trademaster.{name}.builder")
                    for name in ("datasets", "environments", "nets", "agents", "optimizers", "losses",
                                 "trainers", "transition")
                }
                utils = importlib.import_module("trademaster.utils")
                env_module = importlib.import_module(ENV_MODULE)
        except Exception as exc:  # ImportError, or an import-time failure inside upstream
            reason = f"importing upstream failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if reason is not None:
        raise EngineUnavailable(
            f"engine 'trademaster' needs upstream TradeMaster @ {UPSTREAM_COMMIT[:12]} ({reason}); "
            f"install it with: {INSTALL_COMMAND}"
        )
    numpy_patched = _patch_numpy2(env_module)
    _allow_numpy_scalars_in_checkpoints()
    upstream = Upstream(
        Config=Config,
        build_dataset=modules["datasets"].build_dataset,
        build_environment=modules["environments"].build_environment,
        build_net=modules["nets"].build_net,
        build_agent=modules["agents"].build_agent,
        build_optimizer=modules["optimizers"].build_optimizer,
        build_loss=modules["losses"].build_loss,
        build_trainer=modules["trainers"].build_trainer,
        build_transition=modules["transition"].build_transition,
        set_seed=utils.set_seed,
        environment_module=env_module,
        origin=str(getattr(sys.modules["trademaster"], "__file__", None) or sys.modules["trademaster"].__path__[0]),
        mmcv_version=str(mmcv.__version__),
        numpy_patched=numpy_patched,
        provenance=_provenance(),
    )
    log.debug("imported upstream TradeMaster from %s (mmcv %s)", upstream.origin, upstream.mmcv_version)
    return upstream


def _provenance() -> Provenance:
    """The installed ``trademaster`` package against the digest manifest the install verified."""
    from tradeflow.engines.provenance import verify_tree
    from tradeflow.names import PROJECT_ROOT

    package = Path(sys.modules["trademaster"].__path__[0])
    return verify_tree(package.parent, package.name, repository="TradeMaster-NTU/TradeMaster", commit=UPSTREAM_COMMIT,
                       manifest=PROJECT_ROOT / "scripts" / f"trademaster-{UPSTREAM_COMMIT[:7]}.sha256")


@contextlib.contextmanager
def upstream_quiet_stdout(sink: io.TextIOBase | None) -> Iterator[None]:
    """Send upstream's ``print`` output (tables, episode banners) to ``sink`` instead of stdout."""
    if sink is None:
        yield
        return
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        yield
