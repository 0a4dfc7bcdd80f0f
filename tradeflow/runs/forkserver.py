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
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # what `python -m` puts first: the directory it started in
    os.environ.clear()
    os.environ.update(request["env"])
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    return request


def serve(sock_path: str, modules: list[str]) -> dict | None:
    """Preload, tell the parent (stdout, one JSON line), then fork a child per request. Returns
    only in a forked child (its request); the server itself exits when its stdin closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(16)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the pipeline's to handle; it closes our stdin
    checkout = _checkout()
    failed = _preload(modules)
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    try:
        sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid(), "failed": failed, "threads": threads}) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the pipeline that started us already ended (a refused input): nothing to serve
        os._exit(0)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    children: dict[int, socket.socket] = {}
    stdin = sys.stdin.fileno()
    while True:
        try:
            readable, _, _ = select.select([listener, stdin, wake_r], [], [], 1.0)
        except InterruptedError:
            readable = []
        if stdin in readable and not os.read(stdin, 4096):  # the pipeline process is gone
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
        if listener in readable:
            conn, _ = listener.accept()
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
                request = json.loads(data)
                if len(fds) != 3:
                    raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
            except (OSError, ValueError) as exc:
                _send(conn, {"error": f"bad request: {exc}"})
                conn.close()
                continue
            if poisoned := _foreign_modules(checkout):
                _send(conn, {"error": f"the warm process's modules are not this checkout's: {poisoned}"})
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


def main() -> None:
    sock_path, modules = sys.argv[1], sys.argv[2:]
    request = serve(sock_path, modules)
    if request is None:
        _exit(0)  # the server only imported: nothing to tear down
    import runpy

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

    def _wait_orphan(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while _alive(self.pid):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.1)
        self.returncode = 1  # its exit code went with the server; the run's own status says more
        self._conn.close()

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ForkServer:
    """Start the server (non-blocking: it imports while the caller goes on), fork children from it,
    stop it. ``spawn`` waits for it to be ready, up to ``start_timeout_s``."""

    def __init__(self, modules: list[str], *, root: Path, start_timeout_s: float = 120.0) -> None:
        self.root, self.modules, self.start_timeout_s = root, modules, start_timeout_s
        self.python = sys.executable
        self.environ = dict(os.environ)  # what the server starts with (interpreter-start variables)
        self._dir = tempfile.mkdtemp(prefix="tradeflow-fork-")
        self.sock_path = os.path.join(self._dir, "s")
        self._ready: dict | None = None
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [self.python, "-m", "tradeflow.runs.forkserver", self.sock_path, *modules], cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)

    def ready(self) -> dict:
        """The server's hello (its pid, the preloads that failed); ``ForkServerError`` if it never came."""
        with self._lock:
            if self._ready is None:
                assert self.process.stdout is not None
                readable, _, _ = select.select([self.process.stdout], [], [], self.start_timeout_s)
                line = self.process.stdout.readline() if readable else b""
                if not line:
                    code = self.process.poll()
                    raise ForkServerError("the fork server did not start: "
                                          + (f"it exited with {code}" if code is not None
                                             else f"not ready after {self.start_timeout_s:.0f} s"))
                hello = json.loads(line)
                if hello.get("threads"):  # forking a threaded process may copy a held lock into the child
                    raise ForkServerError(f"importing {' '.join(self.modules)} started threads {hello['threads']}")
                self._ready = hello
            return self._ready

    def spawn(self, module: str, args: list[str], *, env: dict[str, str], cwd: str) -> ForkedProcess:
        """Fork ``python -m module args`` with this process's file descriptors 1 and 2 as its
        stdout/stderr (what ``subprocess.Popen`` would hand on) and /dev/null as its stdin (a stage
        reads no input)."""
        self.ready()
        if self.process.poll() is not None:
            raise ForkServerError(f"the fork server exited with {self.process.returncode}")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            conn.connect(self.sock_path)
            sys.stdout.flush()
            sys.stderr.flush()
            _send(conn, {"module": module, "args": args, "env": env, "cwd": cwd},
                  [devnull, 1, 2])
            reply = b""
            conn.settimeout(30)
            while b"\n" not in reply:
                chunk = conn.recv(4096)
                if not chunk:
                    raise ForkServerError("the fork server closed the connection before forking")
                reply += chunk
        except OSError as exc:
            conn.close()
            raise ForkServerError(f"the fork server did not answer: {exc}") from exc
        finally:
            os.close(devnull)
        first, rest = reply.split(b"\n", 1)
        answer = json.loads(first)
        if "pid" not in answer:
            conn.close()
            raise ForkServerError(answer.get("error", "the fork server refused the request"))
        process = ForkedProcess(conn, int(answer["pid"]), ["python", "-m", module, *args])
        process._buffer = rest
        return process

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


_prestarted: ForkServer | None = None


def prestart(modules: list[str], root: Path) -> None:
    """Start the server now, before the caller's own heavy imports (the two import side by side on
    two cores); ``claim`` hands it to the first user asking for the same modules and checkout."""
    global _prestarted
    if _prestarted is None:
        try:
            _prestarted = ForkServer(modules, root=root)
        except OSError:  # the user starts its own, and labels a failure
            _prestarted = None


def claim(modules: list[str], root: Path) -> ForkServer | None:
    """The prestarted server if it was started for these modules and this checkout, else None."""
    global _prestarted
    server, _prestarted = _prestarted, None
    if server is not None and (server.modules != list(modules) or Path(server.root).resolve() != Path(root).resolve()):
        server.close()
        return None
    return server


if __name__ == "__main__":
    main()
