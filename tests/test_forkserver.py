"""Warm stage processes (``tradeflow.runs.forkserver`` behind ``runs.projects.warm_stage_processes``):
a stage forked from the warm server is still the stage's own process (its run, exit code, stdout,
environment, cwd, stdin /dev/null, its own process group that ``cancel()`` stops), and every case
where it cannot be forked (the server is off, its modules were swapped for another copy, importing
started threads, a command that is not ``python -m``) starts a fresh process, labelled on the
pipeline run's ``tradeflow.stage_processes`` tag.

The projects are tiny MLprojects in tmp dirs; the server preloads only stdlib modules (plus a test
module when a case needs one), so each test costs about a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tradeflow.runs.projects import run_entry_point, warm_stage_processes
from tradeflow.runs.records import Tag

_CHILD = textwrap.dedent(r"""
    import json, os, subprocess, sys, time
    from pathlib import Path

    def ppid(pid):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    out = Path(sys.argv[1])
    parent = Path(f"/proc/{ppid(os.getpid())}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record = {"run_id": os.environ.get("MLFLOW_RUN_ID"), "pid": os.getpid(), "pgid": os.getpgid(0),
              "parent": parent, "grandchild": grandchild.pid, "cwd": os.getcwd(), "argv": sys.argv,
              "stdin": os.readlink("/proc/self/fd/0"), "note": os.environ.get("FORK_TEST_NOTE"),
              "main": __name__, "preloaded": sorted(m for m in sys.modules if m.startswith("preload_"))}
    out.with_suffix(".tmp").write_text(json.dumps(record))
    out.with_suffix(".tmp").rename(out)
    print(f"child says {out.name}", flush=True)
    time.sleep(float(sys.argv[2]))
    grandchild.kill()
    sys.exit(int(sys.argv[3]))
""")

_PRELOADS = {
    # what loading a logged pyfunc with code_paths does: this process's tradeflow is another copy
    "preload_swap.py": "import sys, types\nm = types.ModuleType('tradeflow._swapped')\n"
                       "m.__file__ = '/elsewhere/model/code/tradeflow/_swapped.py'\nsys.modules[m.__name__] = m\n",
    "preload_thread.py": "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
    "preload_plain.py": "X = 1\n",
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "child.py").write_text(_CHILD)
    for name, text in _PRELOADS.items():
        (root / name).write_text(text)
    step = "{out} {seconds} {code}"
    (root / "MLproject").write_text(textwrap.dedent(f"""
        name: tiny
        entry_points:
          step:
            parameters:
              out: string
              seconds: {{type: string, default: "0"}}
              code: {{type: string, default: "0"}}
            command: "python -m child {step}"
          script:
            parameters:
              out: string
            command: "{sys.executable} child.py {{out}} 0 0"
    """))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], check=True)
    # `python` on the stage's PATH is this interpreter (the server forks only for its own python)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FORK_TEST_NOTE", "from the caller")
    return root


@pytest.fixture(scope="module")
def _store(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    return uri, MlflowClient(uri).create_experiment("tiny", artifact_location=(root / "artifacts").as_uri())


@pytest.fixture
def experiment(_store, monkeypatch) -> str:
    import mlflow

    uri, experiment_id = _store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield experiment_id
    mlflow.set_tracking_uri(None)


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


def _stage(project: Path, experiment: str, parent: str, out: Path, entry_point: str = "step", **params: str):
    return run_entry_point(entry_point, {"out": str(out), **params}, experiment_id=experiment,
                           parent_run_id=parent, project_uri=project)


def _label(parent: str) -> str:
    return MlflowClient().get_run(parent).data.tags[Tag.STAGE_PROCESSES]


def test_a_forked_stage_is_the_stages_own_process(project, experiment, tmp_path, capfd):
    parent = MlflowClient().create_run(experiment).info.run_id
    with warm_stage_processes(["preload_plain", "json"], root=project):
        ok = _stage(project, experiment, parent, tmp_path / "ok.json")
        failed = _stage(project, experiment, parent, tmp_path / "failed.json", code="3")
    record = _record(tmp_path / "ok.json")
    assert "tradeflow.runs.forkserver" in record["parent"]  # forked, not a fresh interpreter under bash
    assert record["preloaded"] == ["preload_plain"]  # the server's imports are the child's
    assert ok.ok and record["run_id"] == ok.run_id and MlflowClient().get_run(ok.run_id).info.status == "FINISHED"
    assert record["pgid"] == record["pid"] and record["main"] == "__main__"
    assert record["cwd"] == str(project) and record["argv"][1:] == [str(tmp_path / "ok.json"), "0", "0"]
    assert record["stdin"] == "/dev/null" and record["note"] == "from the caller"
    assert "child says ok.json" in capfd.readouterr().out  # its stdout is the caller's
    assert failed.status == "FAILED" and failed.failure == f"entry point 'step' exited non-zero (run {failed.run_id})"
    assert _label(parent) == "forked"


def test_an_interrupted_caller_cancels_a_forked_stage_and_its_whole_tree(project, experiment, tmp_path):
    parent = MlflowClient().create_run(experiment).info.run_id
    out = tmp_path / "child.json"

    class Timeout(Exception):
        pass

    def alarm(signum, frame):
        raise Timeout("task timed out")

    previous = signal.signal(signal.SIGALRM, alarm)
    watcher = threading.Thread(target=lambda: (_record(out), signal.setitimer(signal.ITIMER_REAL, 0.3)))
    watcher.start()
    try:
        with warm_stage_processes(["json"], root=project), pytest.raises(Timeout):
            _stage(project, experiment, parent, out, seconds="120")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        watcher.join(5)
    record = _record(out)
    assert "tradeflow.runs.forkserver" in record["parent"]
    deadline = time.monotonic() + 10
    while (_alive(record["pid"]) or _alive(record["grandchild"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(record["pid"]) and not _alive(record["grandchild"])
    run = MlflowClient().get_run(record["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags[Tag.FAILURE] == "entry point 'step' cancelled: its caller was interrupted"


@pytest.mark.parametrize("preload, env, label", [
    ("preload_swap", {}, "fresh: the warm process's modules are not this checkout's: tradeflow._swapped from /elsewhere/"),
    ("preload_thread", {}, "fresh: importing preload_thread started threads"),
    ("json", {"TRADEFLOW_FORK_SERVER": "false"}, "fresh: off (TRADEFLOW_FORK_SERVER=false)"),
], ids=["swapped-modules", "threads", "off"])
def test_a_stage_that_cannot_fork_runs_fresh_and_the_pipeline_run_says_why(project, experiment, tmp_path, monkeypatch,
                                                                            preload, env, label):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parent = MlflowClient().create_run(experiment).info.run_id
    with warm_stage_processes([preload], root=project) as warm:
        outcome = _stage(project, experiment, parent, tmp_path / "child.json")
        assert warm.server is None  # given up: later stages start fresh without asking again
    record = _record(tmp_path / "child.json")
    assert outcome.ok and record["run_id"] == outcome.run_id
    assert "tradeflow.runs.forkserver" not in record["parent"] and record["preloaded"] == []
    assert _label(parent).startswith(label), _label(parent)


def test_a_command_that_is_not_python_m_runs_fresh_and_is_labelled(project, experiment, tmp_path):
    parent = MlflowClient().create_run(experiment).info.run_id
    with warm_stage_processes(["json"], root=project):
        forked = _stage(project, experiment, parent, tmp_path / "forked.json")
        assert _label(parent) == "forked"
        fresh = _stage(project, experiment, parent, tmp_path / "fresh.json", entry_point="script")
    assert forked.ok and fresh.ok
    assert "tradeflow.runs.forkserver" not in _record(tmp_path / "fresh.json")["parent"]
    assert _label(parent).startswith("fresh: not a python -m command")


_EXITS = textwrap.dedent(r"""
    import atexit, sys, threading, time
    from pathlib import Path

    out = Path(sys.argv[1])
    atexit.register(lambda: out.write_text(out.read_text() + "atexit;"))
    def late():
        time.sleep(0.3)
        out.write_text(out.read_text() + "thread;")
    out.write_text("")
    threading.Thread(target=late).start()  # non-daemon: joined before the process ends
    how = sys.argv[2]
    if how == "message":
        sys.exit("a one-line reason")
    if how == "raise":
        raise RuntimeError("boom")
    if how == "code":
        sys.exit(7)
""")


@pytest.mark.parametrize("how, code, stderr", [("message", 1, "a one-line reason"), ("raise", 1, "RuntimeError: boom"),
                                               ("code", 7, ""), ("return", 0, "")])
def test_a_forked_child_exits_as_the_interpreter_would(tmp_path, how, code, stderr):
    from tradeflow.runs.forkserver import ForkServer

    (tmp_path / "exits.py").write_text(_EXITS)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    server = ForkServer(["json"], root=Path.cwd())
    try:
        with err.open("w") as stream:
            saved = os.dup(2)
            os.dup2(stream.fileno(), 2)
            try:
                child = server.spawn("exits", [str(out), how], env=dict(os.environ), cwd=str(tmp_path))
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        assert child.wait(30) == code
    finally:
        server.close()
    assert out.read_text() == "thread;atexit;"  # threads joined first, then atexit, as Py_FinalizeEx does
    assert stderr in err.read_text()


def _server_of(record: dict) -> str:
    """The fork server's command line (its socket names the server) that forked the child."""
    assert "tradeflow.runs.forkserver" in record["parent"], record["parent"]
    return record["parent"]


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_successive_pipelines_fork_from_one_shared_server_until_the_code_changes(project, experiment, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("TRADEFLOW_FORK_SERVER_IDLE_S", "30")
    (project / "entrypoints").mkdir()
    (project / "entrypoints" / "code.py").write_text("X = 1\n")
    parent = MlflowClient().create_run(experiment).info.run_id
    servers = []
    for name in ("first", "second"):
        with warm_stage_processes(["preload_plain"], root=project) as warm:
            assert warm.server.shared and warm.server.started == (name == "first")  # the second finds it warm
            assert _stage(project, experiment, parent, tmp_path / f"{name}.json").ok
            servers.append(warm.server.ready()["pid"])
    assert servers[0] == servers[1] and _alive(servers[0])  # closing the context left it for the next user
    assert _server_of(_record(tmp_path / "first.json")) == _server_of(_record(tmp_path / "second.json"))
    assert _label(parent) == "forked"

    code = project / "entrypoints" / "code.py"
    code.write_text("X = 2\n")  # an edit: the warm process's code is stale, a new one serves from now on
    os.utime(code, ns=(time.time_ns(), time.time_ns() + 10**9))
    with warm_stage_processes(["preload_plain"], root=project) as warm:
        assert warm.server.started
        assert _stage(project, experiment, parent, tmp_path / "edited.json").ok
        newer = warm.server.ready()["pid"]
    assert newer != servers[0] and _server_of(_record(tmp_path / "edited.json")) != _server_of(_record(tmp_path / "first.json"))
    assert _gone(servers[0], 10)  # the stale one saw its socket go and exited (no child of its own left)


def test_a_shared_server_exits_when_idle_and_never_holds_its_starters_pipes(project, tmp_path):
    # started from a process whose stdout/stderr are pipes someone waits on (a bench, an Airflow task)
    script = ("import json, sys; from pathlib import Path; from tradeflow.runs.forkserver import SharedForkServer; "
              f"s = SharedForkServer(['json'], root=Path({str(project)!r}), idle_s=1.5); print(json.dumps(s.ready()))")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=Path.cwd())
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30  # not held until the server's idle exit
    hello = json.loads(done.stdout.strip().splitlines()[-1])
    assert hello["shared"] and _alive(hello["pid"])
    assert _gone(hello["pid"], 15)  # 1.5 s without a child or a request: gone, and its socket with it
    from tradeflow.runs.forkserver import shared_dir, shared_key

    assert not list(shared_dir().glob(f"{shared_key(project, [], [], {})[0]}-*.sock"))


def test_a_caller_sigkilled_takes_its_forked_stage_and_the_stages_tree_with_it(project, experiment, tmp_path):
    """A shared server's child is no descendant of the process that asked for it (the server
    outlives the Airflow task that started it): when that caller is SIGKILLed (a Celery worker
    killed with its process tree) the stage and its own children must stop too, not run on."""
    out = tmp_path / "child.json"
    parent = MlflowClient().create_run(experiment).info.run_id
    caller = ("import sys; from pathlib import Path; "
              "from tradeflow.runs.projects import run_entry_point, warm_stage_processes\n"
              f"with warm_stage_processes(['json'], root=Path({str(project)!r})):\n"
              f"    run_entry_point('step', {{'out': {str(out)!r}, 'seconds': '120'}}, experiment_id={experiment!r}, "
              f"parent_run_id={parent!r}, project_uri=Path({str(project)!r}))\n")
    env = {**os.environ, "TRADEFLOW_FORK_SERVER_IDLE_S": "3"}  # shared, and gone soon after
    proc = subprocess.Popen([sys.executable, "-c", caller], env=env, cwd=Path.cwd())
    try:
        record = _record(out, timeout=60)
        assert "tradeflow.runs.forkserver" in record["parent"]  # the server's child, not the caller's
        assert "--idle" in record["parent"]  # the shared server's
    finally:
        proc.kill()
        proc.wait()
    assert _gone(record["pid"], 10), "the forked stage outlived its SIGKILLed caller"
    assert _gone(record["grandchild"], 10), "the stage's own child outlived its SIGKILLed caller"
