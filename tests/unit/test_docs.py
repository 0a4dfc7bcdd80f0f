"""Docs that drift from the code are defects: every config key and entry point is documented."""

from __future__ import annotations

from pathlib import Path

import yaml

from tradeflow.config import ReviewConfig, RunConfig, SB3Params, SplitConfig, TradeMasterParams

REPO = Path(__file__).resolve().parents[2]


def test_every_config_key_is_in_docs_parameters():
    text = (REPO / "docs" / "parameters.md").read_text()
    keys = [name for name in RunConfig.model_fields if name not in ("split", "trademaster", "review")]
    keys += [f"trademaster.{n}" for n in TradeMasterParams.model_fields]
    keys += [f"sb3.{n}" for n in SB3Params.model_fields]
    keys += [f"split.{n}" for n in SplitConfig.model_fields]
    keys += [f"review.{n}" for n in ReviewConfig.model_fields]
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"undocumented config keys: {missing}"


def test_every_entry_point_has_a_module_and_its_flags():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    for name, spec in project["entry_points"].items():
        module = REPO / "entrypoints" / f"{name}.py"
        assert module.is_file(), f"entry point {name} has no module"
        source = module.read_text()
        for param in spec.get("parameters", {}):
            assert f"--{param} {{{param}}}" in spec["command"], f"{name}: -P {param} not passed to the command"
            assert f'"{param}"' in source, f"{name}: flag --{param} not parsed"


def _entry_point_flags(name: str) -> set[str]:
    import importlib

    return set(importlib.import_module(f"entrypoints.{name}").FLAGS)


def test_mlproject_parameters_are_the_entry_points_flags_and_config_keys_or_documented():
    from tradeflow.settings import RUN_KEYS

    project = yaml.safe_load((REPO / "MLproject").read_text())
    text = (REPO / "docs" / "parameters.md").read_text()
    not_config = text.split("## Entry-point parameters that are not config keys", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2] for line in not_config.splitlines()
            if line.startswith("| `")}
    for name, spec in project["entry_points"].items():
        params = set(spec.get("parameters", {}))
        if name != "reproduce":  # reproduce's one flag is checked by test_every_entry_point_has_a_module_and_its_flags
            assert params == _entry_point_flags(name), f"{name}: MLproject parameters != the module's FLAGS"
        for param in params - RUN_KEYS:
            assert f"`{param}`" in rows.get(name, ""), f"{name}: -P {param} is neither a config key nor documented"


def test_what_the_dag_and_the_pipeline_pass_are_mlproject_parameters():
    from tradeflow.config import resolve_config
    from tradeflow.orchestration import RunContext, pipeline_parameters
    from tradeflow.pipeline.stages import STAGES, Handoff, Invocation

    project = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    cfg = resolve_config({"symbol": "AAPL"})
    sent = pipeline_parameters(cfg, RunContext(dag_id="d", run_id="r"), force=False)
    assert set(sent) <= set(project["pipeline"]["parameters"])
    for stage in STAGES:
        params = stage.params(cfg, Handoff(), Invocation("{}", execution_id="e", dag_id="d", task_id="t"))
        assert set(params) <= set(project[stage.name]["parameters"]), stage.name


def _same(documented: str | None, default) -> bool:
    """A default as the docs write it (``None``: unset) against the model's."""
    if default is None or documented is None:
        return documented is None and default is None
    if isinstance(default, bool):
        return documented.lower() == str(default).lower()
    if isinstance(default, (int, float)):
        return float(documented) == float(default)
    if isinstance(default, tuple):
        return documented == ",".join(map(str, default))
    return documented == str(default)


def _table_defaults(text: str) -> dict[str, str | None]:
    """``| `name` ... | `default` |`` rows (``unset`` = None); rows whose default is prose are skipped."""
    import re

    out: dict[str, str | None] = {}
    for match in re.finditer(r"^\| `([\w.]+)`(?: \(`\w+`\))? \| (?:`([^`]*)`|(unset))[^|]*\|", text, re.M):
        out[match.group(1)] = match.group(2)
    return out


def _model_default(key: str):
    from tradeflow.config import FLAT_KEYS, RunConfig

    node = RunConfig.model_construct().model_dump() | {"symbol": None}
    for part in FLAT_KEYS.get(key, tuple(key.split("."))):
        node = node[part]
    return node


def test_documented_defaults_are_the_models_defaults():
    from tradeflow.settings import Settings

    settings_defaults = {f"TRADEFLOW_{name.upper()}": field.default for name, field in Settings.model_fields.items()}
    checked = 0
    for doc in ("docs/parameters.md", "docs/airflow.md"):
        text = (REPO / doc).read_text()
        before, _, after = text.partition("## Entry-point parameters that are not config keys")
        text = before + after.partition("\n## ")[2]  # that table's second column is not a default
        for name, documented in _table_defaults(text).items():
            if name.startswith("TRADEFLOW_"):
                assert _same(documented, settings_defaults[name]), f"{doc}: {name} default {documented!r}"
            elif name in ("symbol", "finagent"):
                continue
            else:
                assert _same(documented, _model_default(name)), f"{doc}: {name} default {documented!r}"
            checked += 1
    documented_settings = set(_table_defaults((REPO / "docs" / "parameters.md").read_text()))
    assert set(settings_defaults) <= documented_settings, "operational settings missing from docs/parameters.md"
    assert checked > 60


def test_env_example_defaults_are_the_models_defaults():
    import re

    from tradeflow.settings import RUN_KEYS, Settings, known_env_names

    text = (REPO / "env.example").read_text()
    found = re.findall(r"^# (TRADEFLOW_[A-Z_]+)=(\S*)", text, re.M)
    assert len(found) > 30
    for name, value in found:
        assert name in known_env_names(), f"env.example names unknown {name}"
        key = name.removeprefix("TRADEFLOW_").lower()
        if key == "config":
            continue
        default = Settings.model_fields[key].default if key in Settings.model_fields else _model_default(key)
        assert key in RUN_KEYS or key in Settings.model_fields
        assert _same(value or None, default), f"env.example: {name}={value} but the default is {default!r}"


def test_readme_layout_names_every_library_module():
    """The README's layout table is the map a newcomer reads first: every module and package of
    ``tradeflow/`` (and every top-level folder the flow runs through) is in it."""
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    modules = [p for p in (REPO / "tradeflow").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())]
    missing = [p.name for p in modules if f"tradeflow/{p.stem}" not in layout]
    missing += [d for d in ("entrypoints", "review_agents", "dags", "deploy/databricks", "tests", "bench", "docs")
                if f"`{d}/" not in layout]
    assert not missing, f"not in README's layout table: {missing}"
    for name in ("dqn_loop.py", "epochs.py"):  # the builtin engine's modules, named in the table
        assert name in layout and (REPO / "tradeflow" / "engines" / "builtin" / name).exists()


def test_the_layout_docs_name_only_paths_that_exist_and_every_module():
    """README's layout table and docs/architecture.md match the tree: every ``tradeflow/...`` path
    they write exists, and every module of every package is named in one of them (by its path, or
    by its file name beside its package)."""
    import re

    readme = (REPO / "README.md").read_text()
    text = readme.split("## Layout", 1)[1].split("\n## ", 1)[0] + (REPO / "docs" / "architecture.md").read_text()
    written = set(re.findall(r"tradeflow/[\w/]+(?:\.py|/)", text))
    assert written, "no paths found: the pattern is wrong"
    stale = sorted(p for p in written if not (REPO / p).exists())
    assert not stale, f"paths in README/architecture.md that do not exist: {stale}"
    unnamed = []
    for module in sorted((REPO / "tradeflow").rglob("*.py")):
        rel = module.relative_to(REPO / "tradeflow")
        if module.name == "__init__.py" or "airflow" in rel.parts:
            continue
        package = rel.parent.as_posix()
        by_path = f"tradeflow/{rel.as_posix()}" in text or rel.as_posix() in text
        by_name = f"`{module.name}`" in text or f"`{module.stem}`" in text
        if not (by_path or (by_name and (package == "." or f"{package}/" in text))):
            unnamed.append(rel.as_posix())
    assert not unnamed, f"modules named neither in README's layout nor in docs/architecture.md: {unnamed}"
