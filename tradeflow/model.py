"""The trained agent as an MLflow pyfunc model, its registration, and which version serves.

Input: a DataFrame of the last ``window`` feature rows (``FEATURE_COLUMNS``), oldest first, with
an optional ``position`` column (the current position in -1..1 of max exposure; last row used).
Output: one row: ``action`` (target position, -max_volume..max_volume), ``suggestion``
(BUY/SELL/HOLD) and ``score_<a>`` for every action ``a`` (Q-value or probability).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.tracking import MlflowClient

from tradeflow.errors import NotFoundError
from tradeflow.runs.filters import filter_value
from tradeflow.runs.records import Tag

if TYPE_CHECKING:
    from tradeflow.config import RunConfig

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
AGENT_META = "agent_meta.json"
#: What loading and running the logged model imports (tradeflow's own code travels in ``code_paths``).
#: Their pins come from the project's environment file, so the model's environment is the
#: project's, and MLflow never starts a subprocess to infer requirements at log time.
MODEL_PACKAGES = ("mlflow", "torch", "stable-baselines3", "gymnasium", "numpy", "pandas", "pydantic")
#: Engines whose agents need more than ``MODEL_PACKAGES`` (not installable from PyPI).
ENGINE_ENV_NOTES = {"trademaster": "the model also needs upstream TradeMaster, which is not on PyPI: "
                                   "install it with scripts/install_trademaster.sh"}


def suggestion_for(action: int) -> str:
    """Target position > 0 is a BUY, < 0 a SELL, flat a HOLD."""
    return "BUY" if action > 0 else "SELL" if action < 0 else "HOLD"


class TradingAgentModel(mlflow.pyfunc.PythonModel):
    """Loads the engine's saved agent directory and acts on a feature window."""

    def load_context(self, context: Any) -> None:
        from tradeflow.engines import get_engine

        agent_dir = Path(context.artifacts["agent"])
        meta = json.loads((agent_dir / AGENT_META).read_text())
        self.meta = meta
        self.agent = get_engine(meta["engine"]).load_agent(agent_dir)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        columns = list(self.meta["feature_columns"])
        window = int(self.meta["window"])
        missing = [c for c in columns if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks feature columns: {', '.join(missing)}")
        if len(model_input) < window:
            raise ValueError(f"model input has {len(model_input)} rows; the agent needs a window of {window}")
        frame = model_input.tail(window)
        features = frame[columns].to_numpy(dtype=np.float32)
        position = float(frame["position"].iloc[-1]) if "position" in frame.columns else 0.0
        result = self.agent.act(features, position=position)
        row: dict[str, Any] = {"action": int(result.action), "suggestion": suggestion_for(int(result.action))}
        for action in range(-int(self.meta["max_volume"]), int(self.meta["max_volume"]) + 1):
            row[f"score_{action}"] = float(result.scores.get(action, float("nan")))
        return pd.DataFrame([row])


def pinned_requirements(packages: tuple[str, ...] = MODEL_PACKAGES, env_file: Path | None = None) -> list[str]:
    """``packages`` as pinned in the project's ``conda.yaml`` (the MLproject environment, which
    mirrors requirements.txt); a package missing there is an error, never an unpinned guess."""
    import yaml
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from tradeflow.names import PROJECT_ROOT

    env_file = env_file or PROJECT_ROOT / "conda.yaml"
    spec = yaml.safe_load(env_file.read_text())
    pip_lists = [d["pip"] for d in spec.get("dependencies", []) if isinstance(d, dict) and "pip" in d]
    pins = {canonicalize_name(Requirement(line).name): line.strip() for group in pip_lists for line in group}
    missing = [name for name in packages if canonicalize_name(name) not in pins]
    if missing:
        raise RuntimeError(f"{env_file} pins no {', '.join(missing)}: the logged model's environment would be incomplete")
    return [pins[canonicalize_name(name)] for name in packages]


def _signature(feature_columns: list[str], max_volume: int) -> ModelSignature:
    inputs = Schema([ColSpec("double", c) for c in feature_columns] + [ColSpec("double", "position", required=False)])
    outputs = Schema(
        [ColSpec("long", "action"), ColSpec("string", "suggestion")]
        + [ColSpec("double", f"score_{a}") for a in range(-max_volume, max_volume + 1)]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_agent_model(
    agent: Any,
    *,
    engine: str,
    input_example: pd.DataFrame,
    workdir: Path,
    extra_meta: dict[str, Any] | None = None,
) -> str:
    """Save the agent, log it as a pyfunc under ``model/`` of the active run; return the model URI."""
    from tradeflow.names import PROJECT_ROOT

    agent_dir = workdir / "agent"
    agent_dir.mkdir(parents=True, exist_ok=True)
    agent.save(agent_dir)
    meta = {
        "engine": engine,
        "window": int(agent.window),
        "max_volume": int(agent.max_volume),
        "feature_columns": list(agent.feature_columns),
        **(extra_meta or {}),
    }
    (agent_dir / AGENT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    example = input_example[list(agent.feature_columns)].tail(int(agent.window)).astype("float64")
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_PATH,
        python_model=str(Path(__file__).with_name("model_code.py")),
        artifacts={"agent": str(agent_dir)},
        code_paths=[str(PROJECT_ROOT / "tradeflow")],
        signature=_signature(list(agent.feature_columns), int(agent.max_volume)),
        input_example=example,
        pip_requirements=pinned_requirements(),
    )
    note = ENGINE_ENV_NOTES.get(engine)
    mlflow.set_tag(Tag.MODEL_ENV, f"incomplete: {note}" if note else "pinned from conda.yaml (requirements.txt)")
    return info.model_uri


def load_logged_model(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """``mlflow.pyfunc.load_model`` with its environment check done by package name.

    MLflow's check first maps every installed distribution to its modules
    (``packages_distributions()``: ~3 s of each inference process here). The logged model pins
    only ``MODEL_PACKAGES`` (``requirements.txt`` beside it), and looking each up by name reports
    the same mismatches in milliseconds; like MLflow, a mismatch is a warning, not an error."""
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    for problem in environment_mismatches(local):
        log.warning("model %s: %s", model_uri, problem)
    return mlflow.pyfunc.load_model(str(local), suppress_warnings=True)


def environment_mismatches(model_dir: Path) -> list[str]:
    """What in this interpreter differs from the logged model's ``requirements.txt`` and Python."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import yaml
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    requirements = model_dir / "requirements.txt"
    lines = requirements.read_text().splitlines() if requirements.is_file() else []
    for line in (line.strip() for line in lines):
        if not line or line.startswith(("#", "-")):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # a path or URL: nothing to compare by name
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req.name} is not installed (model requires {line})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed; the model requires {line}")
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        logged = str(((yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
                      .get("python_function", {}) or {}).get("python_version") or "")
        running = platform.python_version()
        if logged and logged.split(".")[:2] != running.split(".")[:2]:
            problems.append(f"the model was logged with Python {logged}; this is Python {running}")
    return problems


def register_model(model_uri: str, name: str, alias: str, *, tags: dict[str, str] | None = None,
                   description: str | None = None, move_alias: bool = True) -> str:
    """Register ``model_uri`` under ``name``, point ``alias`` at the new version unless
    ``move_alias`` is false (the do-no-harm gate said no); return the version.

    ``description`` and ``tags`` (symbol, engine, data window, test metrics vs buy-and-hold, gate,
    runs) are what the registry page shows for the version."""
    client = MlflowClient()
    version = mlflow.register_model(model_uri, name, tags=tags)
    if description:
        client.update_model_version(name, version.version, description=description)
    if move_alias:
        client.set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s (%s)", name, version.version,
             f"alias @{alias}" if move_alias else f"alias @{alias} not moved")
    return str(version.version)


def champion_return_on(name: str, alias: str, frame: pd.DataFrame, cfg: Any) -> float | None:
    """Total return of the version ``alias`` points at, replayed on ``frame`` (the challenger's
    validation window) with the same accounting; ``None`` when there is no such version.

    A champion that cannot be replayed there (other window or features) counts as no champion,
    and the log says so: a model that cannot be compared must not block a passing one forever.
    """
    from mlflow.exceptions import MlflowException

    from tradeflow.engines import get_engine

    try:
        MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    try:
        model = load_logged_model(f"models:/{name}@{alias}")
        wrapper = model.unwrap_python_model()
        agent, meta = wrapper.agent, wrapper.meta
        if meta.get("engine") != getattr(cfg, "engine", meta.get("engine")):
            log.warning("champion %s@%s was trained by engine %r, not %r: not comparable; treated as absent",
                        name, alias, meta.get("engine"), cfg.engine)
            return None
        return float(get_engine(meta["engine"]).backtest(agent, frame, cfg).metrics["total_return"])
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.warning("champion %s@%s cannot be replayed on the validation window (%s); treated as absent", name, alias, exc)
        return None


# --- which model serves: a pinned version of the configured registry -----------------------------


class ModelNotFound(NotFoundError):
    """No trained model to act with (one line, says what to run)."""


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    version: str | None
    training_run_id: str
    registered_name: str | None
    #: set when the alias had no version (no version passed the do-no-harm gate) and the newest serves
    gate_note: str | None = None


def resolve_model(cfg: RunConfig, model_uri: str | None, client: MlflowClient | None = None) -> ResolvedModel:
    """Turn ``model_uri`` (or the symbol's registry alias) into a pinned model and its training run.

    Loading a model runs code (SB3's zip holds cloudpickled objects, a pyfunc bundles its code), so
    only models of the configured tracking store / registry are accepted: ``models:/`` and
    ``runs:/<run id>/<path>``, never a path, URL or another store's URI."""
    client = client or MlflowClient()
    hint = (f"run train_backtest first: mlflow run . -e train_backtest -P symbol={cfg.symbol}"
            + ("" if cfg.engine == "builtin" else f" -P engine={cfg.engine}"))
    uri = model_uri or f"models:/{cfg.registered_model_name}@{cfg.model_alias}"
    try:
        if uri.startswith("runs:/"):
            if not re.fullmatch(r"runs:/[0-9a-f]{32}/(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*", uri) \
                    or "/../" in uri + "/":
                raise ModelNotFound(f"model_uri {uri[:120]!r} must be runs:/<32-hex run id>/<artifact path>")
            run_id = uri.removeprefix("runs:/").split("/", 1)[0]
            run = client.get_run(run_id)
            _check_engine(cfg, run.data.params.get("cfg.engine"), uri)
            return ResolvedModel(uri, None, run_id, None)
        if not uri.startswith("models:/"):
            raise ModelNotFound(f"model_uri {uri!r} must be models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/model")
        ref = uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise ModelNotFound(f"model_uri {uri!r} names no version or alias (use models:/{ref}@{cfg.model_alias})")
        _check_engine(cfg, (version.tags or {}).get("engine"), f"models:/{name}/{version.version}")
        return ResolvedModel(f"models:/{name}/{version.version}", str(version.version), version.run_id, name)
    except MlflowException as exc:
        if model_uri:
            raise ModelNotFound(f"model {uri} not found for {cfg.symbol} ({exc.error_code}); {hint}") from None
        newest = _newest_version(client, cfg.registered_model_name, cfg.engine) if cfg.do_no_harm_gate else None
        if newest is not None:
            note = (f"no version of {cfg.registered_model_name} passed the do-no-harm gate (alias @{cfg.model_alias} "
                    f"is unset); serving the newest, version {newest.version}")
            log.warning("%s: %s", cfg.symbol, note)
            return ResolvedModel(f"models:/{newest.name}/{newest.version}", str(newest.version), newest.run_id,
                                 newest.name, gate_note=note)
        raise ModelNotFound(f"no registered model {uri.removeprefix('models:/')} for {cfg.symbol}; {hint}") from None


class EngineMismatch(ModelNotFound):
    """The model asked for was trained by another engine than the configured one."""


def _check_engine(cfg: RunConfig, engine: str | None, uri: str) -> None:
    """A model of another engine never serves as this engine's (``engine`` is the version's
    ``engine`` tag or the training run's ``cfg.engine``; a model that records neither predates
    both and is accepted by explicit URI only: the per-engine name keeps it off every alias)."""
    if engine and engine != cfg.engine:
        raise EngineMismatch(f"model {uri} was trained by engine {engine!r}, not {cfg.engine!r}; "
                             f"pass -P engine={engine} to serve it, or train engine={cfg.engine} first")


def _newest_version(client: MlflowClient, name: str, engine: str):
    """The newest version of ``name`` trained by ``engine`` (versions without an engine tag count)."""
    try:
        versions = client.search_model_versions(f"name = {filter_value(name)}")
    except MlflowException:
        return None
    ours = [v for v in versions if (v.tags or {}).get("engine", engine) == engine]
    return max(ours, key=lambda v: int(v.version), default=None)
