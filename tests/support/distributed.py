"""The distributed stack (``scripts/stack.py``) for tests and benchmarks: load it, run a DAG on it
through the scheduler and the Celery workers, read what happened from the Airflow metadata DB.

    with distributed_stack(root, worker_env={...}) as stack:    # ~1 min: every service, 2 workers
        run_id = trigger(stack, DAG_ID, conf={...})
        assert wait_dag_run(stack, DAG_ID, run_id) == "success"
        task_rows(stack, DAG_ID, run_id)                       # [{task_id, map_index, state, hostname, try_number}]
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .data import REPO

STACK_SCRIPT = REPO / "scripts" / "stack.py"


def stack_module():
    """``scripts/stack.py`` as a module (it is a script, not part of the package)."""
    if "tradeflow_stack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("tradeflow_stack", STACK_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["tradeflow_stack"] = module
        spec.loader.exec_module(module)
    return sys.modules["tradeflow_stack"]


def stack_unavailable() -> str | None:
    """Why the stack cannot run here (a missing binary or package), else None."""
    return stack_module().unavailable_reason()


@contextlib.contextmanager
def distributed_stack(root: Path, **options: Any) -> Iterator[Any]:
    stack = stack_module().Stack(root, **options)
    with stack:
        yield stack


def wait_dag_parsed(stack, dag_id: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.sql("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_stale", (dag_id,)):
            return
        time.sleep(1)
    raise TimeoutError(f"{dag_id} not parsed in {timeout:.0f} s:\n{stack.services['airflow-dag-processor'].tail()}")


def trigger(stack, dag_id: str, *, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
    run_id = run_id or f"dist__{time.strftime('%Y%m%dT%H%M%S')}_{int(time.time() * 1000) % 100000}"
    args = ["dags", "trigger", dag_id, "--run-id", run_id]
    if conf is not None:
        args += ["--conf", json.dumps(conf)]
    proc = stack.airflow(*args)
    if proc.returncode:
        raise RuntimeError(f"airflow dags trigger failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return run_id


def dag_run_state(stack, dag_id: str, run_id: str) -> str | None:
    rows = stack.sql("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
    return rows[0][0] if rows else None


def wait_dag_run(stack, dag_id: str, run_id: str, timeout: float = 900, during=None) -> str:
    """The DAG run's final state; ``during(rows)`` is called on every poll (fault injection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = dag_run_state(stack, dag_id, run_id)
        if state in ("success", "failed"):
            return state
        if during is not None:
            during(task_rows(stack, dag_id, run_id))
        for name in ("airflow-scheduler", "airflow-apiserver"):
            if not stack.services[name].running:
                raise RuntimeError(f"{name} exited:\n{stack.services[name].tail()}")
        time.sleep(1)
    raise TimeoutError(f"{dag_id} {run_id} not finished in {timeout:.0f} s: {task_rows(stack, dag_id, run_id)}")


def task_rows(stack, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    rows = stack.sql("SELECT task_id, map_index, state, hostname, try_number, start_date, end_date "
                     "FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
                     (dag_id, run_id))
    keys = ("task_id", "map_index", "state", "hostname", "try_number", "start", "end")
    return [dict(zip(keys, row)) for row in rows]


def kill_tree(service) -> list[int]:
    """SIGKILL a service and every process under it, as a machine or container dying would: the
    stage processes run in their own sessions (``run_entry_point``, the fork server), so killing
    the worker's process group alone would leave them running; the machine's shared warm
    processes (``tradeflow.runs.forkserver``, detached, their sockets in the worker's TMPDIR) and
    the pipelines and stages they forked go with it. The tree is frozen (SIGSTOP) first so that
    nothing forks or reparents between listing it and killing it. Returns the pids killed."""
    import psutil

    tmp = service.env.get("TMPDIR")
    roots = [psutil.Process(service.proc.pid)]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if tmp and "tradeflow.runs.forkserver" in cmdline and any(arg.startswith(f"{tmp}/") for arg in cmdline):
            roots.append(proc)
    frozen: dict[int, psutil.Process] = {}
    for _ in range(3):  # until a listing finds nothing new
        found = [p for root in roots for p in [root, *_children(root)] if p.pid not in frozen]
        if not found:
            break
        for proc in found:
            with contextlib.suppress(psutil.Error):
                proc.suspend()
                frozen[proc.pid] = proc
    for proc in frozen.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(Exception):
        service.proc.wait(timeout=10)
    return sorted(frozen)


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def faketime_lib() -> str | None:
    """libfaketime's multithreaded preload library (Debian ``faketime``), or None."""
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1",
                    "/usr/local/lib/faketime/libfaketimeMT.so.1"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return str(found[0])
    return None
