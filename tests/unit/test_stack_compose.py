"""deploy/compose/docker-compose.yml stays in step with the native launcher (scripts/stack.py):
the same services (under the WebUI stack's names), their ports, and the variables the launcher sets
for clients and Airflow processes. Docker is not run; the file is parsed (PyYAML)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.distributed import stack_module

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _stack(tmp_path):
    return stack_module().Stack(tmp_path / "stack", artifacts="direct")


def test_every_launcher_service_is_a_compose_service_on_the_same_port(tmp_path):
    stack, services = stack_module(), _compose()["services"]
    assert sorted(s["compose"] for s in stack.SERVICES.values()) == sorted(services)
    launched = _stack(tmp_path).ports  # the ports the launcher allocates, one per listening service
    for name, decl in stack.SERVICES.items():
        ports = [str(p).split(":")[-1] for p in services[decl["compose"]].get("ports", [])]
        if decl["port"] is None:
            assert name not in launched and not ports, name
        else:
            assert name in launched, name
            assert str(decl["port"]) in ports, (name, ports)


def test_the_client_and_airflow_variables_are_the_launchers(tmp_path):
    stack, live = stack_module(), _stack(tmp_path)
    assert set(live.client_env()) == set(stack.CLIENT_ENV)  # direct mode: every client variable
    assert set(stack.AIRFLOW_ENV) <= set(live.airflow_env(tmp_path / "home"))
    worker = _compose()["services"]["airflow-worker"]["environment"]
    assert set(stack.CLIENT_ENV) | set(stack.AIRFLOW_ENV) <= set(worker)
    assert set(stack.CLIENT_ENV) <= set(_compose()["services"]["mlflow-server"]["environment"])
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert set(stack.AIRFLOW_ENV) <= set(_compose()["services"][name]["environment"]), name


def test_the_mlflow_server_is_the_webui_stacks():
    command = _compose()["services"]["mlflow-server"]["command"]
    assert "--default-artifact-root s3://mlflow" in command and "--port 5500" in command
