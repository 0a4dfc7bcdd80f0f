"""``run_entry_point``: a stage is an MLflow Project run started by ``mlflow.projects.run`` (entry
point, params, git commit, parent tag), whose command is the only process started per stage (no
``mlflow run`` CLI in between), safe from several threads at once, and cancelled with its whole
process tree when its caller is interrupted.

The projects here are tiny MLprojects in tmp dirs whose commands are plain Python scripts that
never import mlflow, so each test takes well under a second of child time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tradeflow.runs.projects import BACKEND, run_entry_point

# The child walks its ancestry up to the test process: no ``mlflow run`` may sit in between.
_CHILD = textwrap.dedent(r"""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path

    def cmdline(pid):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()

    def ppid(pid):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    out = Path(sys.argv[1])
    chain, pid = [], os.getpid()
    while pid > 1 and pid != int(os.environ["TEST_PID"]):
        pid = ppid(pid)
        chain.append(cmdline(pid) if pid != int(os.environ["TEST_PID"]) else "<test>")
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record = {"run_id": os.environ.get("MLFLOW_RUN_ID"), "experiment_id": os.environ.get("MLFLOW_EXPERIMENT_ID"),
              "ancestry": chain, "pid": os.getpid(), "pgid": os.getpgid(0), "grandchild": grandchild.pid,
              "args": sys.argv[2:], "executable": sys.executable, "stdin": os.readlink("/proc/self/fd/0")}
    out.with_suffix(".tmp").write_text(json.dumps(record))
    out.with_suffix(".tmp").rename(out)
    seconds = float(sys.argv[2])
    time.sleep(seconds)
    grandchild.kill()
    sys.exit(int(sys.argv[3]))
""")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "child.py").write_text(_CHILD)
    (root / "MLproject").write_text(textwrap.dedent(f"""
        name: tiny
        entry_points:
          step:
            parameters:
              out: string
              seconds: {{type: string, default: "0"}}
              code: {{type: string, default: "0"}}
              note: {{type: string, default: ""}}
            command: "{sys.executable} child.py {{out}} {{seconds}} {{code}}"
    """))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], check=True)
    return root


def _parent(experiment: str) -> str:
    return MlflowClient().create_run(experiment).info.run_id


def _record(path: Path, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the child never wrote {path}"
        time.sleep(0.02)
    return json.loads(path.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_stage_is_a_project_run_nested_under_its_parent_without_an_mlflow_run_process(project, tiny_experiment, tmp_path):
    parent = _parent(tiny_experiment)
    out = tmp_path / "child.json"
    outcome = run_entry_point("step", {"out": str(out), "note": "a b'c"}, experiment_id=tiny_experiment,
                              parent_run_id=parent, project_uri=project, run_name="tiny step")
    assert outcome.ok and outcome.failure is None, outcome
    record = _record(out)
    # the entry point's command is the stage's only process: started by us (bash execs it)
    assert all("mlflow" not in link for link in record["ancestry"]), record["ancestry"]
    assert record["ancestry"][-1] == "<test>" and len(record["ancestry"]) <= 2, record["ancestry"]
    assert record["run_id"] == outcome.run_id and record["experiment_id"] == tiny_experiment
    run = MlflowClient().get_run(outcome.run_id)
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["mlflow.parentRunId"] == parent
    assert tags["mlflow.project.entryPoint"] == "step"
    assert tags["mlflow.project.backend"] == BACKEND
    assert tags["mlflow.source.type"] == "PROJECT"
    head = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.runName"] == "tiny step"
    # the run is pre-created: MLflow logs no raw -P values (each step logs its resolved values itself)
    assert "out" not in run.data.params and "code" not in run.data.params
    assert MlflowClient().get_run(parent).info.status == "RUNNING"  # the parent is never resumed


def test_a_stage_started_with_a_socket_on_stdin_does_not_run_bashrc(project, tiny_experiment, tmp_path, monkeypatch):
    """An Airflow 3 task's stdin is a socket. ``bash -c`` with a socket on stdin (and SHLVL < 2)
    believes sshd started it and runs ~/.bashrc, which on the dev box puts pyenv's shims ahead of
    the venv: the pipeline's ``python`` then had no mlflow. The stage's stdin is /dev/null."""
    home, marker, out = tmp_path / "home", tmp_path / "bashrc-ran", tmp_path / "child.json"
    home.mkdir()
    (home / ".bashrc").write_text(f"touch {marker}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SHLVL", raising=False)
    ours, theirs = socket.socketpair()
    saved = os.dup(0)
    try:
        os.dup2(ours.fileno(), 0)
        outcome = run_entry_point("step", {"out": str(out)}, experiment_id=tiny_experiment,
                                  parent_run_id=_parent(tiny_experiment), project_uri=project)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        ours.close()
        theirs.close()
    assert outcome.ok, outcome
    assert not marker.exists(), "the stage's bash ran ~/.bashrc"
    assert _record(out)["stdin"] == "/dev/null"


def test_the_parent_tag_is_there_while_the_stage_runs_and_a_failure_is_recorded(project, tiny_experiment, tmp_path):
    parent = _parent(tiny_experiment)
    out = tmp_path / "child.json"
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(outcome=run_entry_point(
        "step", {"out": str(out), "seconds": "1.5", "code": "3"}, experiment_id=tiny_experiment,
        parent_run_id=parent, project_uri=project)))
    worker.start()
    record = _record(out)
    running = MlflowClient().get_run(record["run_id"])
    assert running.info.status == "RUNNING" and running.data.tags["mlflow.parentRunId"] == parent
    worker.join(60)
    outcome = result["outcome"]
    assert outcome.status == "FAILED"
    assert outcome.failure == f"entry point 'step' exited non-zero (run {outcome.run_id})"
    run = MlflowClient().get_run(outcome.run_id)
    assert run.info.status == "FAILED" and run.data.tags["tradeflow.failure_reason"] == outcome.failure


def test_stages_launched_from_several_threads_at_once_each_get_their_own_run_and_parent(project, tiny_experiment, tmp_path):
    parents = [_parent(tiny_experiment) for _ in range(4)]
    outcomes: dict[int, object] = {}

    def launch(index: int) -> None:
        outcomes[index] = run_entry_point("step", {"out": str(tmp_path / f"c{index}.json"), "seconds": "0.5"},
                                          experiment_id=tiny_experiment, parent_run_id=parents[index], project_uri=project)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    wall = time.perf_counter() - started
    client = MlflowClient()
    for index in range(4):
        outcome = outcomes[index]
        assert outcome.ok, outcome
        record = _record(tmp_path / f"c{index}.json")
        assert record["run_id"] == outcome.run_id  # each child saw its own run, not a neighbour's
        assert client.get_run(outcome.run_id).data.tags["mlflow.parentRunId"] == parents[index]
    assert len({outcomes[i].run_id for i in range(4)}) == 4
    assert wall < 4 * 0.5 + 20  # they overlapped (generous: a loaded 2-core machine)
    assert "MLFLOW_RUN_ID" not in os.environ


def test_an_interrupted_caller_cancels_the_stage_and_its_whole_process_tree(project, tiny_experiment, tmp_path):
    """Airflow's task timeout raises in the waiting thread (SIGALRM); so does Ctrl-C."""
    parent = _parent(tiny_experiment)
    out = tmp_path / "child.json"

    class Timeout(Exception):
        pass

    def alarm(signum, frame):
        raise Timeout("task timed out")

    previous = signal.signal(signal.SIGALRM, alarm)
    watcher = threading.Thread(target=lambda: (_record(out), signal.setitimer(signal.ITIMER_REAL, 0.3)))
    watcher.start()
    try:
        with pytest.raises(Timeout):
            run_entry_point("step", {"out": str(out), "seconds": "120"}, experiment_id=tiny_experiment,
                            parent_run_id=parent, project_uri=project)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        watcher.join(5)
    record = _record(out)
    assert record["pgid"] == record["pid"]  # its own process group: cancel() reaches its children
    deadline = time.monotonic() + 10
    while (_alive(record["pid"]) or _alive(record["grandchild"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(record["pid"]) and not _alive(record["grandchild"])
    run = MlflowClient().get_run(record["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["tradeflow.failure_reason"] == "entry point 'step' cancelled: its caller was interrupted"

