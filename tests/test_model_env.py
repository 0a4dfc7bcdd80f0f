"""The logged model carries the project's pinned requirements: nothing inferred at log time (no
``_capture_modules`` subprocess), the same pins as conda.yaml / requirements.txt / pyproject.toml,
and an environment spec (python_env.yaml + requirements.txt) that ``mlflow models`` reads.

A full rebuild of that environment (``mlflow models prepare-env --env-manager virtualenv``: a new
virtualenv with torch, mlflow and stable-baselines3, minutes) is too slow for CI; it was run by hand,
see docs/performance.md.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import BTC_CSV, REPO, require_shared_data
from tradeflow.model import MODEL_PACKAGES, environment_mismatches, load_logged_model, pinned_requirements


def _pins(lines) -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out[canonicalize_name(Requirement(line).name)] = line
    return out


def _same(a: list[str], b: list[str]) -> bool:
    """Equal requirement lists (MLflow rewrites ``>=2.7,<3`` as ``<3,>=2.7``)."""
    from packaging.requirements import Requirement

    return [Requirement(x) for x in a] == [Requirement(x) for x in b]


def test_model_requirements_are_the_pins_of_every_project_environment_file():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    conda_pins = _pins(next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict)))
    requirements = _pins((REPO / "requirements.txt").read_text().splitlines())
    pyproject = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    logged = _pins(pinned_requirements())
    assert list(logged) == [name for name in MODEL_PACKAGES]
    for name, line in logged.items():
        assert line == conda_pins[name] == pyproject[name], name
        # torch is installed by scripts/setup.sh (pip takes the local CPU wheel), not requirements.txt
        assert name == "torch" or requirements[name] == line, name
    assert all(re.search(r"(==|<)", line) or name in ("numpy", "pandas") for name, line in logged.items()), logged


def test_a_package_missing_from_the_environment_file_is_an_error(tmp_path):
    env = tmp_path / "conda.yaml"
    env.write_text("dependencies:\n  - python=3.11.7\n  - pip:\n      - mlflow==3.17.2\n")
    with pytest.raises(RuntimeError, match=r"pins no torch, stable-baselines3"):
        pinned_requirements(("mlflow", "torch", "stable-baselines3"), env_file=env)


def test_log_agent_model_infers_nothing_and_logs_a_buildable_environment(tracking_store, tmp_path, monkeypatch):
    require_shared_data()
    import mlflow
    import mlflow.utils.requirements_utils as requirements_utils
    from mlflow.utils.environment import _PythonEnv

    from tradeflow.config import resolve_config
    from tradeflow.data import load_market_data
    from tradeflow.engines.builtin import BuiltinEngine
    from tradeflow.features import Splits, compute_features
    from tradeflow.model import log_agent_model

    def no_inference(*args, **kwargs):
        raise AssertionError("log_model inferred requirements (a _capture_modules subprocess)")

    monkeypatch.setattr(requirements_utils, "_infer_requirements", no_inference)
    cfg = resolve_config({"symbol": "BTC", "data_source": f"csv:{BTC_CSV}",
                          "trademaster": {"epochs": 1, "hidden_dims": [8, 8]}})
    features = compute_features(load_market_data(cfg).bars).tail(300).reset_index(drop=True)
    splits = Splits(train=features.iloc[:200].reset_index(drop=True), valid=features.iloc[200:250].reset_index(drop=True),
                    test=features.iloc[250:].reset_index(drop=True))
    agent = BuiltinEngine().train(splits, cfg, workdir=tmp_path).agent
    # in the store's experiment: Default's artifacts would land in ./mlruns of the checkout
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("trademaster_autogen").experiment_id) as run:
        uri = log_agent_model(agent, engine="builtin", input_example=features, workdir=tmp_path)
    assert mlflow.get_run(run.info.run_id).data.tags["tradeflow.model_env"].startswith("pinned")
    local = Path(mlflow.artifacts.download_artifacts(uri))
    logged = [line for line in (local / "requirements.txt").read_text().splitlines() if line.strip()]
    assert _same(logged, pinned_requirements()), (logged, pinned_requirements())
    python_env = _PythonEnv.from_yaml(str(local / "python_env.yaml"))
    conda_python = next(d for d in yaml.safe_load((REPO / "conda.yaml").read_text())["dependencies"]
                        if isinstance(d, str) and d.startswith("python="))
    # the interpreter that trained it (what MLflow records), the same minor version as conda.yaml's
    # pin: a machine's python3 may be another 3.11 patch release (Debian's 3.11.2 from env -i)
    import platform

    assert python_env.python == platform.python_version()
    assert python_env.python.split(".")[:2] == conda_python.removeprefix("python=").split(".")[:2]
    assert python_env.dependencies == ["-r requirements.txt"]
    assert mlflow.pyfunc.get_model_dependencies(uri).endswith("requirements.txt")
    assert environment_mismatches(local) == []  # this venv is the pinned environment
    model = load_logged_model(uri)
    prediction = model.predict(features.tail(int(agent.window)))
    assert prediction["suggestion"].iloc[0] in ("BUY", "SELL", "HOLD")


def test_the_environment_check_names_each_mismatch(tmp_path):
    """What ``load_logged_model`` warns about instead of MLflow's slow check: a pin the running
    interpreter does not satisfy, a package it lacks, another Python; markers and paths are skipped."""
    import platform

    (tmp_path / "requirements.txt").write_text(
        "mlflow==0.0.1\nno-such-package-tradeflow==1.0\nnumpy>=1\n"
        "pandas==0.1; python_version < '3'\n./local/wheel.whl\n# comment\n")
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {"python_version": "2.7.18"}}}))
    problems = environment_mismatches(tmp_path)
    import mlflow

    assert problems == [
        f"mlflow {mlflow.__version__} is installed; the model requires mlflow==0.0.1",
        "no-such-package-tradeflow is not installed (model requires no-such-package-tradeflow==1.0)",
        f"the model was logged with Python 2.7.18; this is Python {platform.python_version()}",
    ]
