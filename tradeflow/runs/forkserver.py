"""Warm stage processes: a fork server that has already imported the heavy modules (mlflow, torch,
stable_baselines3, the stages' own modules) and forks one child per stage command.

A stage process started from a bare interpreter spends most of its life importing (issue 26: ~2-3 s
per stage for ~0.1 s of training). ``python -m tradeflow.runs.forkserver SOCKET MODULE...`` imports
the modules once, then, for each request on its Unix socket, forks a child that is the stage's own
process, as ``python -m <module> <args>`` would have been:

- its own session and process group (``setsid``), so ``cancel()`` stops its whole tree;
- the caller's stdin/stdout/stderr (passed as file descriptors), its cwd and exact environment;
- ``runpy`` runs the entry point as ``__main__`` and the process exits as the interpreter would
  (threads joined, atexit handlers, the exit code of ``SystemExit``, 1 and a traceback on an
  uncaught exception), but without tearing down every loaded module (``_exit``: ~2 s saved);
- default signal handling (the server's SIGCHLD handler and wakeup fd are undone), numpy's global
  RNG reseeded from the OS as a fresh interpreter's would be (``random`` reseeds itself on fork).

The server only imports: it never opens a tracking store or loads a model (a logged pyfunc model's
``code_paths`` swap the process's ``tradeflow`` modules for the model's copy, which every later
child would inherit). Its own process is single-threaded Python, so forking it is safe. It exits
when the process that started it closes its stdin (or dies). The client side is ``ForkServer``;
``ForkedProcess`` stands in for ``subprocess.Popen`` (``pid``, ``poll``, ``wait``, ``terminate``,
``kill``): the server reaps the child and sends its exit code back on the request's connection.

Only the standard library is imported before the preloads, so a start costs the imports alone.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from tradeflow.runs.processes import alive

#: bytes of one request or reply at most (argv + environment)
MAX_MESSAGE = 1 << 20


def _send(conn: socket.socket, payload: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(payload).encode() + b"\n"
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


# --- the server ----------------------------------------------------------------------------------


def _preload(modules: list[str]) -> dict[str, str]:
    """Import each module; a failure is reported (the child then imports it itself, as a fresh
    interpreter would, and fails the same way if it must)."""
    import importlib

    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - reported to the client, never fatal
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


#: the top-level packages of this checkout: in the warm process they must be the checkout's own
CHECKOUT_PACKAGES = ("tradeflow", "entrypoints", "review_agents")


def _checkout() -> str:
    """Where this process's ``tradeflow`` comes from (the checkout the server was started for)."""
    return str(Path(__file__).resolve().parents[2])


def _foreign_modules(checkout: str) -> str:
    """The checkout's modules in ``sys.modules`` loaded from elsewhere (a logged model's
    ``code_paths`` copy, say), or ''. A child forked from such a process would run that code."""
    prefix = os.path.join(os.path.realpath(checkout), "")
    foreign = []
    for name, module in list(sys.modules.items()):
        if name.split(".", 1)[0] not in CHECKOUT_PACKAGES or module is None:
            continue
        path = getattr(module, "__file__", None)
        if path and not os.path.realpath(path).startswith(prefix):
            foreign.append(f"{name} from {path}")
    return ", ".join(sorted(foreign)[:3])


def _become_child(request: dict, fds: list[int], sockets: list[socket.socket], raw_fds: list[int],
                  started_w: int) -> dict:
    """In the forked child: the stage's own process, set up as ``bash -c 'python -m ...'`` would."""
    signal.set_wakeup_fd(-1)
    for item in sockets:
        item.close()
    for fd in raw_fds:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # what a fresh interpreter has
    os.setsid()
    os.close(started_w)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    if len(fds) == 4:  # the caller's life line (``hand_over``, ``spawn``): its end is our end
        _watch_caller(fds[3])
    _retitle(request)
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # what `python -m` puts first: the directory it started in
    os.environ.clear()
    os.environ.update(request["env"])
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    return request


def _retitle(request: dict) -> None:
    """Show the command this process stands for (``python -m entrypoints.persist --symbol=...``)
    in ``ps`` and /proc/<pid>/cmdline, not the server's: operators and fault tests find a stage by
    its command line."""
    import setproctitle

    setproctitle.setproctitle(" ".join(["python", "-m", request["module"], *request["args"]]))


def _watch_caller(fd: int) -> None:
    """SIGTERM this process's group (it leads its own: the stage and anything it started) when the
    caller holding the other end of ``fd`` is gone (killed, even with SIGKILL): what ending the
    process it replaced, or ``cancel()`` by a caller still alive, would have done. Without it a
    child of a shared server outlives an Airflow worker SIGKILLed under it (issue 27)."""
    os.set_inheritable(fd, False)

    def watch() -> None:
        while True:
            try:
                if not os.read(fd, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        try:
            os.killpg(os.getpid(), signal.SIGTERM)
        except OSError:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tradeflow-caller-watch", daemon=True).start()


def serve(sock_path: str, modules: list[str], *, later: list[str] = (), idle_s: float | None = None) -> dict | None:
    """Preload, tell the parent (stdout, one JSON line), then fork a child per request. Returns
    only in a forked child (its request); the server itself exits when its stdin closes or, shared
    (``idle_s`` set), when it has had no child and no request for ``idle_s`` seconds, when its
    socket is no longer its own (a newer server of the checkout replaced or removed it), or when
    its checkout is gone. ``later`` modules are imported after the hello, one at a time between
    requests (what the first stage does not need: it starts sooner, the rest load while it runs)."""
    shared = idle_s is not None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # shared: bind under a private name and publish (rename) once ready, so a client that can
    # connect is never waiting on the imports
    bind_path = f"{sock_path}.{os.getpid()}.tmp" if shared else sock_path
    listener.bind(bind_path)
    listener.listen(16)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the pipeline's to handle; it closes our stdin
    checkout, home = _checkout(), os.getcwd()  # the code's checkout, the project it serves
    failed = _preload(modules)
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    hello = {"ready": True, "pid": os.getpid(), "failed": failed, "threads": threads, "shared": shared}
    inode = None
    if shared:
        if threads:  # unusable (the client refuses it): say so and do not publish
            _say(hello)
            os.unlink(bind_path)
            os._exit(0)
        os.rename(bind_path, sock_path)
        inode = os.stat(sock_path).st_ino
    if not _say(hello) and not shared:  # the pipeline that started us already ended (a refused input)
        os._exit(0)
    if shared:  # nothing more goes to the starter's pipe (it may be gone)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    pending = list(later)
    refusal = ""  # set once the process can no longer fork safely (threads, foreign modules)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    children: dict[int, socket.socket] = {}
    stdin = sys.stdin.fileno()
    watched = [listener, wake_r] if shared else [listener, stdin, wake_r]
    last_active = time.monotonic()
    while True:
        try:
            readable, _, _ = select.select(watched, [], [], 0.0 if pending else 1.0)
        except InterruptedError:
            readable = []
        if not shared and stdin in readable and not os.read(stdin, 4096):  # the pipeline process is gone
            listener.close()
            os.unlink(sock_path)
            return None
        if wake_r in readable:
            os.read(wake_r, 4096)
        while children:  # reap: each child's exit code goes back on its request's connection
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                except OSError:
                    pass
                conn.close()
            last_active = time.monotonic()
        if shared and not children and listener not in readable and (
                refusal or time.monotonic() - last_active > idle_s or not _owns(sock_path, inode)
                or not os.path.isdir(home)):
            if _owns(sock_path, inode):
                os.unlink(sock_path)  # new clients start a server of their own from here on
            _refuse_pending(listener)
            listener.close()
            return None
        if pending and not readable:  # idle moment: the next deferred import
            name = pending.pop(0)
            if failure := _preload([name]):
                hello["failed"].update(failure)
            if started := [t.name for t in threading.enumerate() if t is not threading.main_thread()]:
                refusal = f"importing {name} started threads {started}"
            continue
        if listener in readable:
            conn, _ = listener.accept()
            last_active = time.monotonic()
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 4)
                request = json.loads(data)
                if request.get("hello"):
                    _send(conn, hello if not refusal else {"error": refusal})
                    conn.close()
                    for fd in fds:
                        os.close(fd)
                    continue
                if len(fds) not in (3, 4):
                    raise ValueError(f"expected 3 or 4 file descriptors, got {len(fds)}")
            except (OSError, ValueError) as exc:
                _send(conn, {"error": f"bad request: {exc}"})
                conn.close()
                continue
            if not refusal and (poisoned := _foreign_modules(checkout)):
                refusal = f"the warm process's modules are not this checkout's: {poisoned}"
            if refusal:
                _send(conn, {"error": refusal})
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            started_r, started_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(started_r)
                return _become_child(request, fds, [listener, conn, *children.values()],
                                     [wake_r, wake_w, stdin], started_w)
            os.close(started_w)
            os.read(started_r, 1)  # EOF once the child leads its own session: cancel() then reaches its tree
            os.close(started_r)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            _send(conn, {"pid": pid})


def _say(hello: dict) -> bool:
    """The hello on stdout (one JSON line); False when nobody reads it any more."""
    try:
        sys.stdout.write(json.dumps(hello) + "\n")
        sys.stdout.flush()
        return True
    except (BrokenPipeError, ValueError):
        return False


def _owns(sock_path: str, inode: int | None) -> bool:
    try:
        return os.stat(sock_path).st_ino == inode
    except FileNotFoundError:
        return False


def _refuse_pending(listener: socket.socket) -> None:
    """A shared server going away answers the connections already queued (their clients start a
    new server) instead of leaving them to a closed socket."""
    listener.setblocking(False)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            _send(conn, {"error": "exiting", "retry": True})
        except OSError:
            pass
        conn.close()


def main() -> None:
    """``python -m tradeflow.runs.forkserver SOCKET [--idle S] [--later M1,M2] MODULE...``"""
    args = sys.argv[1:]
    sock_path, idle_s, later = args.pop(0), None, []
    while args and args[0] in ("--idle", "--later"):
        flag, value = args.pop(0), args.pop(0)
        if flag == "--idle":
            idle_s = float(value)
        else:
            later = [m for m in value.split(",") if m]
    request = serve(sock_path, args, later=later, idle_s=idle_s)
    if request is None:
        _exit(0)  # the server only imported: nothing to tear down
    import runpy

    import tradeflow.runs.forkserver as this  # the module the child's own code imports (we are __main__)

    this.process_start = "forked"

    module, args = request["module"], request["args"]
    sys.modules.pop(module, None)  # preloaded or not, it runs afresh as __main__, as `python -m` runs it
    sys.argv = [module, *args]
    run_then_exit(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True))


def run_then_exit(main: Callable[[], object]) -> NoReturn:
    """Run ``main`` and end the process with its exit code, as the interpreter would, without the
    module teardown (``_exit``). Entry points call it under ``if __name__ == "__main__"``, so a
    fresh stage process saves the teardown too; a forked one goes through it either way."""
    try:
        main()
    except SystemExit as exc:
        code = exc.code
        if code is None:
            _exit(0)
        if isinstance(code, int):
            _exit(code)
        print(code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
        _exit(1)
    except KeyboardInterrupt:
        _exit(None)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        _exit(1)
    _exit(0)


def _exit(code: int | None) -> NoReturn:
    """End the process as the interpreter would (non-daemon threads joined, atexit handlers run,
    stdout/stderr flushed, the exit code), minus tearing down every module: with torch and mlflow
    loaded that teardown alone took ~2 s per process on the 2-core box (issue 26). ``None``: die
    of SIGINT, as an uncaught KeyboardInterrupt does."""
    import atexit

    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code is None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


# --- the client ----------------------------------------------------------------------------------


class ForkServerError(RuntimeError):
    """The fork server could not start or answer; the caller starts a fresh process instead."""


class ForkedProcess:
    """A ``subprocess.Popen`` stand-in for a child of the fork server (the server reaps it and
    reports its exit code; ``returncode`` follows Popen's convention, -N for signal N)."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]) -> None:
        self._conn, self.pid, self.args = conn, pid, args
        self.returncode: int | None = None
        self._life_line: int | None = None  # our end of the child's watch pipe: closed once it ended
        self._buffer = b""
        self._lock = threading.Lock()

    def _read(self, timeout: float | None) -> None:
        # poll() never blocks behind a wait() in another thread: it just sees no exit code yet
        if not self._lock.acquire(blocking=timeout != 0.0):
            return
        try:
            self._read_locked(timeout)
        finally:
            self._lock.release()

    def _read_locked(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        self._conn.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                chunk = self._conn.recv(4096)
                if not chunk:  # the server died: wait for the orphan itself
                    self._wait_orphan(timeout)
                    return
                self._buffer += chunk
        except (TimeoutError, BlockingIOError):
            return
        self.returncode = int(json.loads(self._buffer.split(b"\n", 1)[0])["exit"])
        self._conn.close()
        self._cut_life_line()

    def _cut_life_line(self) -> None:
        if self._life_line is not None:
            os.close(self._life_line)
            self._life_line = None

    def _wait_orphan(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while alive(self.pid):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.1)
        self.returncode = 1  # its exit code went with the server; the run's own status says more
        self._conn.close()
        self._cut_life_line()

    def poll(self) -> int | None:
        self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Start the server (non-blocking: it imports while the caller goes on), fork children from it,
    stop it. ``spawn`` waits for it to be ready, up to ``start_timeout_s``."""

    shared = False

    def __init__(self, modules: list[str], *, root: Path, later: list[str] = (), start_timeout_s: float = 120.0) -> None:
        self.root, self.modules, self.later, self.start_timeout_s = root, list(modules), list(later), start_timeout_s
        self.python = sys.executable
        self.environ = dict(os.environ)  # what the server starts with (interpreter-start variables)
        self._dir = tempfile.mkdtemp(prefix="tradeflow-fork-")
        self.sock_path = os.path.join(self._dir, "s")
        self._ready: dict | None = None
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [self.python, "-m", "tradeflow.runs.forkserver", self.sock_path, *_later_flag(self.later), *modules],
            cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)

    def ready(self) -> dict:
        """The server's hello (its pid, the preloads that failed); ``ForkServerError`` if it never came."""
        with self._lock:
            if self._ready is None:
                self._ready = _read_hello(self.process, self.modules, self.start_timeout_s)
            return self._ready

    def spawn(self, module: str, args: list[str], *, env: dict[str, str], cwd: str,
              watch_fd: int | None = None) -> ForkedProcess:
        """Fork ``python -m module args`` with this process's file descriptors 1 and 2 as its
        stdout/stderr (what ``subprocess.Popen`` would hand on) and /dev/null as its stdin (a stage
        reads no input)."""
        self.ready()
        if self.process.poll() is not None:
            raise ForkServerError(f"the fork server exited with {self.process.returncode}")
        return _fork_request(self.sock_path, module, args, env=env, cwd=cwd, watch_fd=watch_fd)

    def close(self) -> None:
        """Stop the server (children already forked run on, as a fresh process would)."""
        if self.process.stdin:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        for path in (self.sock_path,):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass


def _later_flag(later: list[str]) -> list[str]:
    return ["--later", ",".join(later)] if later else []


def _read_hello(process: subprocess.Popen, modules: list[str], timeout: float) -> dict:
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if readable else b""
    if not line:
        code = process.poll()
        raise ForkServerError("the fork server did not start: "
                              + (f"it exited with {code}" if code is not None else f"not ready after {timeout:.0f} s"))
    hello = json.loads(line)
    if hello.get("threads"):  # forking a threaded process may copy a held lock into the child
        raise ForkServerError(f"importing {' '.join(modules)} started threads {hello['threads']}")
    return hello


class _Retry(ForkServerError):
    """A shared server that went away (idle, replaced) between the connect and the request."""


def _fork_request(sock_path: str, module: str, args: list[str], *, env: dict[str, str], cwd: str,
                  watch_fd: int | None = None) -> ForkedProcess:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        try:
            conn.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise _Retry(f"the fork server is gone: {exc}") from exc
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, {"module": module, "args": args, "env": env, "cwd": cwd},
              [devnull, 1, 2] + ([watch_fd] if watch_fd is not None else []))
        reply = b""
        conn.settimeout(30)
        while b"\n" not in reply:
            chunk = conn.recv(4096)
            if not chunk:
                raise _Retry("the fork server closed the connection before forking")
            reply += chunk
    except ForkServerError:
        conn.close()
        raise
    except OSError as exc:
        conn.close()
        raise ForkServerError(f"the fork server did not answer: {exc}") from exc
    finally:
        os.close(devnull)
    first, rest = reply.split(b"\n", 1)
    answer = json.loads(first)
    if "pid" not in answer:
        conn.close()
        if answer.get("retry"):
            raise _Retry(answer.get("error", "the fork server is exiting"))
        raise ForkServerError(answer.get("error", "the fork server refused the request"))
    process = ForkedProcess(conn, int(answer["pid"]), ["python", "-m", module, *args])
    process._buffer = rest
    return process


def _hello(sock_path: str) -> dict | None:
    """A shared server's hello, or None when none listens there (or it refuses: it is going away)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    try:
        conn.connect(sock_path)
        conn.sendall(json.dumps({"hello": True}).encode() + b"\n")
        reply = b""
        while b"\n" not in reply:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            reply += chunk
    except OSError:
        return None
    finally:
        conn.close()
    answer = json.loads(reply.split(b"\n", 1)[0])
    return answer if answer.get("ready") else None


#: variables that act when the interpreter starts or a module is imported (a fork skips both): a
#: shared server only serves callers whose values match its own
START_VARIABLES = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "TORCH", "CUDA", "LD_")
#: variables of the starting run that the server's own environment does not keep
_RUN_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def shared_dir() -> Path:
    """This user's directory of shared servers (0700, refused if someone else owns it)."""
    directory = Path(tempfile.gettempdir()) / f"tradeflow-fork-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not directory.is_dir() or directory.is_symlink():
        raise ForkServerError(f"{directory} is not a private directory of this user")
    return directory


def code_digest(root: Path) -> str:
    """What the warm process's code is: every ``.py`` of the checkout's packages (path, mtime,
    size) and the interpreter's site-packages directories (an installed or upgraded package changes
    their mtime). Any edit gives another digest, so a server never serves code older than the
    checkout's; it costs a few milliseconds (no git)."""
    import hashlib

    import sysconfig

    digest = hashlib.sha256(os.path.realpath(sys.executable).encode())
    # the interpreter's site-packages, not sys.path: callers of one checkout (an Airflow task, the
    # pipeline it forks, `mlflow run`) differ in sys.path but must find the same server
    for entry in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        try:
            digest.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\n".encode())
        except OSError:
            pass
    for package in CHECKOUT_PACKAGES:
        for dirpath, dirnames, filenames in os.walk(Path(root) / package):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    info = os.stat(path)
                    digest.update(f"{os.path.relpath(path, root)}\0{info.st_mtime_ns}\0{info.st_size}\n".encode())
    return digest.hexdigest()[:16]


def shared_key(root: Path, modules: list[str], later: list[str], environ: dict[str, str]) -> tuple[str, str, str]:
    """(this checkout's prefix, its code digest, the rest of the key: preloads and start
    variables); a server answers only to clients with the same three."""
    import hashlib

    checkout = os.path.realpath(root)
    start = sorted((k, v) for k, v in environ.items() if k.startswith(START_VARIABLES))
    rest = json.dumps([checkout, list(modules), list(later), start])
    return (hashlib.sha256(checkout.encode()).hexdigest()[:10], code_digest(Path(checkout))[:12],
            hashlib.sha256(rest.encode()).hexdigest()[:12])


class SharedForkServer:
    """A client of this machine's shared server for the checkout (``python -m ...forkserver SOCKET
    --idle S``): successive pipelines, and the Airflow tasks that start them, fork from one warm
    process instead of each starting its own. Found by its socket in ``shared_dir()``, named by
    ``shared_key`` (another code version is another server; starting one removes the sockets of
    the checkout's older versions, whose servers then exit once their children end); started by
    the first client that finds none (a lock file keeps two from starting at once), detached (its
    own session, no stdio of the caller's: a caller waiting for its pipes' EOF is not held up), and
    gone after ``idle_s`` seconds without a child or a request. ``close`` leaves it running."""

    shared = True

    def __init__(self, modules: list[str], *, root: Path, later: list[str] = (), idle_s: float = 120.0,
                 start_timeout_s: float = 120.0) -> None:
        self.root, self.modules, self.later = root, list(modules), list(later)
        self.idle_s, self.start_timeout_s = idle_s, start_timeout_s
        self.python = sys.executable
        self.environ = dict(os.environ)
        prefix, code, rest = shared_key(root, self.modules, self.later, self.environ)
        self.dir = shared_dir()
        self.prefix, self.code = prefix, code
        self.sock_path = str(self.dir / f"{prefix}-{code}-{rest}.sock")
        self.process: subprocess.Popen | None = None  # the server, when this client started it
        self.started = False  # this client started it (else: it was warm)
        self._ready: dict | None = None
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._connect_or_start()

    def _connect_or_start(self) -> None:
        import fcntl

        if hello := _hello(self.sock_path):
            self._ready = hello
            return
        lock_fd = os.open(str(self.dir / f"{self.prefix}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.start_timeout_s
        while True:  # another client may be starting it: wait for its lock, then look again
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(lock_fd)
                    raise ForkServerError(f"another fork server start held {self.dir} for {self.start_timeout_s:.0f} s")
                time.sleep(0.05)
        if hello := _hello(self.sock_path):
            os.close(lock_fd)
            self._ready = hello
            return
        for old in self.dir.glob(f"{self.prefix}-*.sock"):  # this key's stale one, or other code versions'
            if old.name.split("-")[1] == self.code and str(old) != self.sock_path:
                continue  # same code, other preloads or start variables: another caller's, still current
            try:
                old.unlink()
            except FileNotFoundError:
                pass
        env = {k: v for k, v in self.environ.items() if k not in _RUN_VARIABLES}
        log_path = self.dir / f"{self.prefix}.log"
        try:
            with open(log_path, "ab") as log_file:
                self.process = subprocess.Popen(
                    [self.python, "-m", "tradeflow.runs.forkserver", self.sock_path, "--idle", str(self.idle_s),
                     *_later_flag(self.later), *self.modules],
                    cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
                    close_fds=True, start_new_session=True)
        except OSError:
            os.close(lock_fd)
            raise
        self.started = True
        self._lock_fd = lock_fd  # held until its hello: a client beside us waits for it, not starts another

    def ready(self) -> dict:
        with self._lock:
            if self._ready is None:
                try:
                    assert self.process is not None
                    self._ready = _read_hello(self.process, self.modules, self.start_timeout_s)
                finally:
                    self._release()
            return self._ready

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()

    def spawn(self, module: str, args: list[str], *, env: dict[str, str], cwd: str,
              watch_fd: int | None = None) -> ForkedProcess:
        self.ready()
        try:
            return _fork_request(self.sock_path, module, args, env=env, cwd=cwd, watch_fd=watch_fd)
        except _Retry:  # it went idle (or was replaced) since we last asked: the current one, or a new one
            with self._lock:
                self._ready = None
                self._connect_or_start()
            self.ready()
            return _fork_request(self.sock_path, module, args, env=env, cwd=cwd, watch_fd=watch_fd)

    def close(self) -> None:
        """Leave the server to the next user (it exits on its own once idle)."""
        with self._lock:
            self._release()


def spawn_tied(server: ForkServer | SharedForkServer, module: str, args: list[str], *, env: dict[str, str],
               cwd: str) -> ForkedProcess:
    """``server.spawn``, the child tied to this process's life: it (its process group) gets SIGTERM
    once this process is gone, even SIGKILLed. A server's child is not this process's descendant
    (a shared server outlives the task that started it), so a worker killed with its whole tree
    would otherwise leave the pipeline and its stages running on (issue 27)."""
    watch_r, watch_w = os.pipe()  # not inheritable: only the child gets the read end (passed)
    try:
        child = server.spawn(module, args, env=env, cwd=cwd, watch_fd=watch_r)
    except BaseException:
        os.close(watch_w)
        raise
    finally:
        os.close(watch_r)
    child._life_line = watch_w
    return child


def stop_shared(root: Path) -> int:
    """Retire the shared servers of checkout ``root`` (their sockets go; each exits once its
    children have ended): the next pipeline starts a cold one. Returns how many were found."""
    prefix = shared_key(root, [], [], {})[0]  # the checkout's part of every key
    found = 0
    for sock in shared_dir().glob(f"{prefix}-*.sock"):
        try:
            sock.unlink()
            found += 1
        except FileNotFoundError:
            pass
    return found


def start_server(modules: list[str], root: Path, *, later: list[str] = (), idle_s: float = 0.0):
    """The shared server's client when ``idle_s`` > 0, else a server of the caller's own."""
    if idle_s > 0:
        return SharedForkServer(modules, root=root, later=later, idle_s=idle_s)
    return ForkServer(modules, root=root, later=later)


_prestarted: ForkServer | SharedForkServer | None = None


def prestart(modules: list[str], root: Path, *, later: list[str] = (), idle_s: float = 0.0) -> None:
    """Start the server now (or find the shared one), before the caller's own heavy imports (the
    two import side by side on two cores); ``claim`` hands it to the first user asking for the same
    modules and checkout."""
    global _prestarted
    if _prestarted is None:
        try:
            _prestarted = start_server(modules, root, later=later, idle_s=idle_s)
        except (OSError, ForkServerError):  # the user starts its own, and labels a failure
            _prestarted = None


def wait_prestarted() -> bool:
    """Wait until the server ``prestart`` started (or found) is ready; False if there is none or it
    failed (said on stderr)."""
    if _prestarted is None:
        return False
    try:
        _prestarted.ready()
    except (OSError, ForkServerError) as exc:
        print(f"warm process not started: {exc}", file=sys.stderr, flush=True)
        return False
    return True


#: how this process started, for the run it records (``Tag.PIPELINE_PROCESS``): "forked" from a
#: warm server, "fresh", or "fresh: <why>" when a warm server was there but not used
process_start = "fresh"

#: signals a ``hand_over`` caller passes on to the process that stands in for it
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def hand_over(module: str, args: list[str]) -> None:
    """In a fresh ``python -m module`` whose prestarted server is this machine's shared one and was
    already warm: run the module as that server's forked child instead (no interpreter start, no
    imports: ``mlflow run . -e pipeline``'s pipeline process, issue 26) and end this process as
    the child ends (its exit code, or its signal). This process stays the caller's handle: SIGINT,
    SIGTERM and SIGHUP are passed on to the child's process group, and the child is sent SIGTERM
    if this process dies (even of SIGKILL). Returns (the module then runs here, as before) when
    the server was not warm, this process is already a forked one, its cwd is not the server's
    checkout, or the server refuses."""
    global process_start
    server = _prestarted
    if (server is None or not server.shared or server.started or "mlflow" in sys.modules
            or not os.path.samefile(os.getcwd(), server.root)):
        return
    watch_r, watch_w = os.pipe()
    try:
        child = server.spawn(module, args, env=dict(os.environ), cwd=os.getcwd(), watch_fd=watch_r)
    except (OSError, ForkServerError) as exc:
        os.close(watch_r)
        os.close(watch_w)
        process_start = f"fresh: the warm process refused it ({exc})"
        print(f"warm process not used ({exc}): starting here", file=sys.stderr, flush=True)
        return
    os.close(watch_r)

    def forward(signum: int, frame: object) -> None:
        try:
            os.killpg(child.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    code = child.wait()
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:  # it died of a signal: so do we
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def claim(modules: list[str], root: Path, *, later: list[str] = (), shared: bool | None = None):
    """The prestarted server if it was started for these modules and this checkout (and, when
    ``shared`` is given, of that kind), else None."""
    global _prestarted
    server, _prestarted = _prestarted, None
    if server is not None and (server.modules != list(modules) or server.later != list(later)
                               or Path(server.root).resolve() != Path(root).resolve()
                               or (shared is not None and server.shared != shared)):
        server.close()
        return None
    return server


if __name__ == "__main__":
    main()
