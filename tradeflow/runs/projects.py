"""Run an MLproject entry point as a child run of a given parent, through ``mlflow.projects.run``.

Nesting is done by tagging ``mlflow.parentRunId`` on the submitted run instead of resuming the
parent with ``mlflow.start_run(run_id=parent)``: resuming flips the parent's status on exit and is
not safe when several threads (Airflow mapped tasks, batch fan-out) nest under one parent.
The child keeps every tag ``mlflow.projects.run`` writes (entry point, params, git commit).

Stages go through the ``tradeflow-local`` project backend (``DirectLocalBackend``): MLflow's local
backend, minus the extra ``mlflow run`` CLI process its asynchronous mode starts per run (an
interpreter that imports mlflow, ~3 s, only to start the entry point's command). It creates the run
as the local backend does (same tags and params), tags the parent *before* the command starts, and
starts the command itself in its own process group, so the caller waits on it, or cancels the whole
tree, exactly as before. Other env managers (virtualenv, conda, uv) go through MLflow's local
backend unchanged. The backend is thread-safe: the child's environment is built per call, never by
editing ``os.environ``, so stages or symbols may be launched from several threads at once.

Inside ``warm_stage_processes`` (the pipeline wraps its stages in it) a command ``python -m <module>
...`` of this checkout, with this interpreter, is forked from a warm process instead
(``tradeflow.runs.forkserver``): the same process for every purpose the caller sees (pid, process
group, exit code, stdout/stderr, environment), minus the interpreter start and the imports. Any
other command (a ``reproduce`` of another commit's checkout, another python), ``TRADEFLOW_FORK_SERVER
=false``, or a server that cannot start gets a fresh process as before; the last is a warning and
the pipeline run's ``tradeflow.stage_processes`` tag says so.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.projects
from mlflow.entities import RunStatus, RunTag
from mlflow.projects.backend import loader as _backend_loader
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.backend.local import LocalBackend
from mlflow.projects.submitted_run import LocalSubmittedRun
from mlflow.projects.utils import (
    MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG,
    PROJECT_ENV_MANAGER,
    PROJECT_STORAGE_DIR,
    fetch_and_validate_project,
    get_entry_point_command,
    get_or_create_run,
    get_run_env_vars,
    load_project,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from tradeflow import settings
from tradeflow.runs.records import Tag, mark_failed
from tradeflow.redaction import strip_credentials
from tradeflow.runs.tracking import git
from tradeflow.names import PROJECT_ROOT

log = logging.getLogger(__name__)

#: The project backend name ``run_entry_point`` passes to ``mlflow.projects.run``.
BACKEND = "tradeflow-local"
#: ``backend_config`` keys our backend reads: tags set on the run before its command starts.
CONFIG_TAGS = Tag.PROJECT_RUN_TAGS


class DirectLocalBackend(AbstractBackend):
    """MLflow's local backend for ``env_manager=local`` without the intermediate ``mlflow run``.

    ``mlflow.projects.run(synchronous=False)`` with the stock backend starts ``mlflow run --run-id``
    in a new process group, which starts the entry point's command; this backend starts the
    command directly, as the stock backend does in synchronous mode, but returns at once and puts
    the command in its own process group (what the CLI process gave us: ``cancel()`` stops the
    whole tree). The run is created by MLflow's own ``get_or_create_run``, so its tags and params
    are the ones ``mlflow run`` writes.
    """

    def run(self, project_uri, entry_point, params, version, backend_config, tracking_uri, experiment_id):
        env_manager = backend_config.get(PROJECT_ENV_MANAGER) or "local"
        tags = dict(backend_config.get(CONFIG_TAGS) or {})
        if env_manager != "local":
            # The env has to be built and activated: MLflow's local backend does it (with its CLI).
            submitted = LocalBackend().run(project_uri, entry_point, params, version, backend_config,
                                           tracking_uri, experiment_id)
            _set_tags(submitted.run_id, tags)
            return submitted
        work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
        project = load_project(work_dir)
        run = get_or_create_run(backend_config.get(MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG), project_uri, experiment_id, work_dir, version, entry_point, params)
        run_id = run.info.run_id
        _set_tags(run_id, tags)
        command = " ".join(get_entry_point_command(project, entry_point, params, backend_config.get(PROJECT_STORAGE_DIR)))
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
        env.update(get_run_env_vars(run_id, experiment_id))
        log.debug("run %s: %s (in %s)", run_id, command, work_dir)
        forked = _fork(command, env=env, work_dir=work_dir, parent_run_id=tags.get(MLFLOW_PARENT_RUN_ID))
        if forked is not None:
            return LocalSubmittedRun(run_id, forked)
        try:
            # stdin /dev/null: under Airflow 3 the caller's stdin is a socket, and bash with a socket
            # on stdin acts as if sshd started it: it runs ~/.bashrc (which may put another python
            # first on PATH). A stage reads no input.
            process = subprocess.Popen(["bash", "-c", command], cwd=work_dir, env=env, close_fds=True,
                                       start_new_session=True, stdin=subprocess.DEVNULL)
        except OSError as exc:
            mark_failed(MlflowClient(), run_id, f"entry point '{entry_point}' could not start: {exc}")
            raise
        return LocalSubmittedRun(run_id, process)


class WarmStages:
    """This process's fork server while a pipeline runs, and how its stages were started: ``label``
    is ``forked`` while every stage forked, else ``fresh: <why>`` (the pipeline tags it, unless
    ``label_parent`` is false: the Airflow task's pipeline launch, whose parent is the DAG run's)."""

    def __init__(self, modules: list[str], root: Path, later: list[str] = (), label_parent: bool = True) -> None:
        from tradeflow.runs.forkserver import ForkServerError, claim, start_server

        self.server = None
        self.label = "forked"
        self.users = 0
        self.label_parent = label_parent
        self._tagged: dict[str, str] = {}  # parent run id -> the label it carries
        current = settings.current()
        if not current.fork_server:
            self.label = "fresh: off (TRADEFLOW_FORK_SERVER=false)"
            if server := claim(modules, root, later=later):
                server.close()
            return
        idle_s = current.fork_server_idle_s
        try:
            self.server = (claim(modules, root, later=later, shared=idle_s > 0)
                           or start_server(modules, root, later=later, idle_s=idle_s))
        except (OSError, ForkServerError) as exc:
            self.fall_back(f"the fork server could not start: {exc}")
            return
        if getattr(self.server, "shared", False):
            log.info("stages fork from this machine's shared warm process (%s, %s)", self.server.sock_path,
                     "started now" if self.server.started else "already warm")

    def fall_back(self, reason: str) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.label = f"fresh: {reason}"
        log.warning("stages start as fresh processes (%s)", reason)

    def not_forked(self, reason: str) -> None:
        """A stage started fresh while the server runs: the label says so from then on."""
        if self.label == "forked":
            self.label = f"fresh: {reason}"
        log.info("stage not forked: %s", reason)

    def tag(self, parent_run_id: str | None) -> None:
        """``Tag.STAGE_PROCESSES`` on the pipeline run, whenever its label changes."""
        if self.label_parent and parent_run_id and self._tagged.get(parent_run_id) != self.label:
            _set_tags(parent_run_id, {Tag.STAGE_PROCESSES: self.label})
            self._tagged[parent_run_id] = self.label


_warm: WarmStages | None = None
_warm_lock = threading.Lock()


@contextmanager
def warm_stage_processes(modules: list[str], root: Path = PROJECT_ROOT, *, later: list[str] = (),
                         label_parent: bool = True) -> Iterator[WarmStages]:
    """Fork the stages of checkout ``root`` this process launches from a warm server that imported
    ``modules`` (and then ``later``); one per process, shared by nested or concurrent users, left
    when the last one leaves: stopped, or, shared (``TRADEFLOW_FORK_SERVER_IDLE_S`` > 0), kept warm
    for this machine's next pipeline of the checkout until it has been idle that long."""
    global _warm
    with _warm_lock:
        if _warm is None:
            _warm = WarmStages(modules, root, list(later), label_parent=label_parent)
        warm = _warm
        warm.users += 1
    try:
        yield warm
    finally:
        with _warm_lock:
            warm.users -= 1
            if warm.users == 0:
                if warm.server is not None:
                    warm.server.close()
                _warm = None


def _fork(command: str, *, env: dict[str, str], work_dir: str, parent_run_id: str | None):
    """The stage command forked from the warm server, or None (start it fresh); inside
    ``warm_stage_processes`` the pipeline run is tagged with how its stages started."""
    warm = _warm
    if warm is None:
        return None
    try:
        if warm.server is None:
            return None
        reason = _not_forkable(command, env=env, work_dir=work_dir, server=warm.server)
        if reason:
            warm.not_forked(reason)
            return None
        from tradeflow.runs.forkserver import ForkServerError, spawn_tied

        argv = shlex.split(command)
        try:  # tied: it stops when this process dies (a server's child is no descendant of ours)
            return spawn_tied(warm.server, argv[2], argv[3:], env=env, cwd=str(work_dir))
        except (OSError, ForkServerError) as exc:
            warm.fall_back(str(exc))
            return None
    finally:
        warm.tag(parent_run_id)


def _not_forkable(command: str, *, env: dict[str, str], work_dir: str, server) -> str:
    """Why this command must start as a fresh process ('' when the warm server can fork it): only
    ``python -m <module>`` of the server's checkout, with the server's interpreter and PYTHON* env."""
    argv = shlex.split(command)
    if len(argv) < 3 or argv[:2] != ["python", "-m"]:
        return f"not a python -m command: {argv[:2]}"
    python = shutil.which("python", path=env.get("PATH"))
    if not python or os.path.dirname(os.path.abspath(python)) != os.path.dirname(os.path.abspath(server.python)) \
            or not os.path.samefile(python, server.python):
        return f"python on the stage's PATH is {python}, the fork server runs {server.python}"
    if not os.path.samefile(work_dir, server.root):  # another checkout (reproduce): its own code
        return f"{work_dir} is not the fork server's checkout"
    ours = {k: v for k, v in server.environ.items() if k.startswith("PYTHON")}
    theirs = {k: v for k, v in env.items() if k.startswith("PYTHON")}
    if ours != theirs:  # PYTHONPATH & co. act at interpreter start, which a fork skips
        return f"the stage's PYTHON* environment differs from the fork server's: {sorted(set(ours.items()) ^ set(theirs.items()))[:2]}"
    return ""


def _set_tags(run_id: str, tags: dict[str, str]) -> None:
    if tags:
        MlflowClient().log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


# Registered statically, as MLflow registers its own "local" backend (no package metadata needed,
# so it also works from a plain checkout on a Databricks driver).
_backend_loader.MLFLOW_BACKENDS.setdefault(BACKEND, DirectLocalBackend)


@dataclass(frozen=True)
class StageOutcome:
    """What a child run ended as. ``failure`` is the child's one-line reason when it failed."""

    entry_point: str
    run_id: str
    status: str
    seconds: float
    failure: str | None = None
    reused: bool = False
    params: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


def create_project_run(entry_point: str, *, experiment_id: str, project_dir: Path,
                       parent_run_id: str | None = None, run_name: str | None = None) -> str:
    """Create the run of an MLproject entry point with the tags ``mlflow run`` would write, but no
    parameters: the step logs each parameter's *resolved* value under its own name (MLflow logs
    the raw ``-P`` values, ``''`` for "not set", and a param cannot be changed once logged)."""
    import getpass

    tags = {MLFLOW_SOURCE_TYPE: "PROJECT", MLFLOW_PROJECT_ENTRY_POINT: entry_point,
            MLFLOW_SOURCE_NAME: str(project_dir)}
    try:
        tags[MLFLOW_USER] = getpass.getuser()
    except (KeyError, OSError):
        pass
    try:
        tags[MLFLOW_GIT_COMMIT] = git(project_dir, "rev-parse", "HEAD").strip()
        remote = git(project_dir, "config", "--get", "remote.origin.url").strip() if _has_origin(project_dir) else ""
        if remote:  # a token in the remote URL never reaches a tag (MLflow's own rule, then ours)
            from mlflow.utils.git_utils import _strip_credentials_from_url

            tags[MLFLOW_GIT_REPO_URL] = tags[MLFLOW_SOURCE_NAME] = strip_credentials(_strip_credentials_from_url(remote))
    except (OSError, subprocess.CalledProcessError):
        pass
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if run_name:
        tags[MLFLOW_RUN_NAME] = run_name
    return MlflowClient().create_run(experiment_id, tags=tags, run_name=run_name).info.run_id


def _has_origin(root: Path) -> bool:
    return "origin" in git(root, "remote").split()


def run_entry_point(
    entry_point: str,
    parameters: dict[str, str],
    *,
    experiment_id: str,
    parent_run_id: str | None,
    project_uri: str | Path = PROJECT_ROOT,
    env_manager: str | None = None,
    run_name: str | None = None,
) -> StageOutcome:
    """Run one entry point to completion as a child of ``parent_run_id``; never raises on failure.

    ``env_manager`` defaults to ``TRADEFLOW_ENV_MANAGER`` or ``local`` (the worker's environment).
    """
    from tradeflow.runs.tracking import quiet_credentialed_urls, tracking_uri

    quiet_credentialed_urls(tracking_uri())  # MLflow's end-of-run URL line would carry a password
    env_manager = env_manager or settings.current().env_manager
    client = MlflowClient()
    started = time.perf_counter()
    # We create the run (nested, tagged like `mlflow run` does, the parent tagged before the command
    # starts, so a kill at any moment leaves a child that ``pipeline.close_abandoned_runs`` finds)
    # so that MLflow does not log the raw -P values: the step logs every parameter's resolved value
    # under its own name. The backend drops a stray MLFLOW_RUN_ID of ours from the child's environment
    # (we may be running inside another entry point).
    precreated = create_project_run(entry_point, experiment_id=experiment_id, project_dir=Path(project_uri),
                                    parent_run_id=parent_run_id, run_name=run_name)
    try:
        submitted = mlflow.projects.run(
            uri=str(project_uri),
            entry_point=entry_point,
            parameters=parameters,
            experiment_id=experiment_id,
            env_manager=env_manager,
            backend=BACKEND,
            backend_config={MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG: precreated,
                            CONFIG_TAGS: {MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {}},
            synchronous=False,
            run_name=run_name,
        )
    except BaseException as exc:
        mark_failed(client, precreated, f"entry point '{entry_point}' could not start: {' '.join(str(exc).split())[:500]}")
        raise
    run_id = submitted.run_id
    try:
        succeeded = submitted.wait()
    except BaseException:
        # Interrupted (Airflow timeout, SIGTERM, Ctrl-C): stop the child's process group so a
        # retry never runs beside an orphan, and close its run honestly.
        submitted.cancel()
        mark_failed(client, run_id, f"entry point '{entry_point}' cancelled: its caller was interrupted")
        raise
    status = client.get_run(run_id).info.status
    if not RunStatus.is_terminated(RunStatus.from_string(status)):
        # The process ended without closing its run (killed, or env build failure).
        status = "FINISHED" if succeeded else "FAILED"
        client.set_terminated(run_id, status)
    failure = None
    if status != "FINISHED":
        failure = client.get_run(run_id).data.tags.get(Tag.FAILURE) or (
            f"entry point '{entry_point}' exited non-zero (run {run_id})"
        )
        if Tag.FAILURE not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, Tag.FAILURE, failure)
    seconds = time.perf_counter() - started
    log.info("stage %s run %s %s in %.1fs", entry_point, run_id, status, seconds)
    return StageOutcome(entry_point, run_id, status, seconds, failure, params=dict(parameters))
