"""The lifecycle every real-server process here shares (PostgreSQL, ``mlflow server``): temp dir,
log file, its own process group stopped as a whole, ``PR_SET_PDEATHSIG``, ``atexit`` clean-up,
readiness polling, and the log tail in every start error. See ``tests.support.servers``."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

LOOPBACK = "127.0.0.1"
_KEEP_DIRS_ENV = "TRADEFLOW_KEEP_SERVER_DIRS"  # "1": leave temp dirs (data, logs) behind


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


# --------------------------------------------------------------------------- utilities


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it).

    There is an unavoidable race between closing the probe socket and the server
    binding it; servers here bind within ~1 s, which is fine on a test machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_http(
    url: str,
    timeout: float = 30.0,
    *,
    expect_status: Sequence[int] = (200,),
    proc: subprocess.Popen | None = None,
    interval: float = 0.05,
) -> float:
    """Poll ``url`` with GET until it answers with one of ``expect_status``.

    Returns the seconds waited.  Raises ``TimeoutError`` after ``timeout`` seconds,
    or ``ServerStartError`` at once when ``proc`` (the server process) has exited.
    """
    start = time.monotonic()
    deadline = start + timeout
    last: object = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"process exited with code {proc.returncode} while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
                if resp.status in expect_status:
                    return time.monotonic() - start
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in expect_status:
                return time.monotonic() - start
            last = f"HTTP {exc.code}: {exc.read(300)!r}"
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout:.1f}s (last: {last})")
        time.sleep(interval)


def _tail(path: Path | None, max_bytes: int = 6000) -> str:
    if path is None or not path.exists():
        return "<no log>"
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        data = fh.read().decode("utf-8", "replace")
    return ("...\n" if size > max_bytes else "") + data


_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec(sig: int):
    """A preexec_fn that makes the kernel send ``sig`` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def _preexec() -> None:  # runs in the child after fork, after setuid/setgid
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return _preexec


def kill_group(proc: subprocess.Popen, first_signal: int, grace: float) -> None:
    """Signal the process group led by ``proc``; SIGKILL the group after ``grace`` s."""
    pgid = proc.pid  # start_new_session=True: the child is its own group leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, first_signal)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # Even if the leader exited, stragglers (workers, backends) may still be in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


_LIVE: "set[ManagedServer]" = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.close()


class ManagedServer:
    """Shared lifecycle: temp dir, log file, process group, context manager."""

    name = "server"
    log_path: Path | None = None

    def __init__(self, *, keep_dirs: bool | None, die_with_parent: bool) -> None:
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._closed = False
        self._owns_tmp = False
        self.tmp_dir: Path | None = None
        self.keep_dirs = os.environ.get(_KEEP_DIRS_ENV) == "1" if keep_dirs is None else keep_dirs
        self.die_with_parent = die_with_parent
        self.timings: dict[str, float] = {}

    # -- lifecycle hooks for subclasses
    def start(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def restart(self):
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, max_bytes: int = 6000) -> str:
        return _tail(self.log_path, max_bytes)

    def _open_log(self):
        assert self.log_path is not None
        if self._log_fh is None or self._log_fh.closed:
            self._log_fh = open(self.log_path, "ab", buffering=0)  # noqa: SIM115
            if self._run_as is not None:
                os.chown(self.log_path, *self._run_as)
        return self._log_fh

    _run_as: tuple[int, int] | None = None

    def _popen(self, cmd: list[str], *, env: dict[str, str], death_signal: int, cwd: Path) -> subprocess.Popen:
        log = self._open_log()
        log.write(f"\n===== {time.strftime('%H:%M:%S')} starting: {_redact(cmd)}\n".encode())
        kwargs: dict = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as[0], group=self._run_as[1], extra_groups=[])
        if self.die_with_parent:
            kwargs["preexec_fn"] = _pdeathsig_preexec(death_signal)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        return proc

    def _terminate(self, first_signal: int, grace: float) -> None:
        if self._proc is not None:
            kill_group(self._proc, first_signal, grace)
            self._proc = None

    def close(self) -> None:
        """Stop the server and remove its temp dir (unless ``keep_dirs``). Idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if self._log_fh is not None:
                self._log_fh.close()
            if self._owns_tmp and self.tmp_dir is not None and not self.keep_dirs:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _fail(self, what: str, exc: BaseException | None = None) -> ServerStartError:
        msg = f"{self.name}: {what}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
        err = ServerStartError(msg)
        if exc is not None:
            err.__cause__ = exc
        return err

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, Exception) and hasattr(exc, "add_note") and self.log_path is not None:
            with contextlib.suppress(Exception):
                exc.add_note(f"--- {self.name} log tail ({self.log_path}) ---\n{self.log_tail(3000)}")
        self.close()


def _redact(cmd: Iterable[str]) -> str:
    """Render a command line with passwords in URLs masked (``user:***@``)."""
    return " ".join(re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", str(c)) for c in cmd)


# --------------------------------------------------------------------------- pytest glue


def dump_logs_if_failed(request, *servers: ManagedServer, since_failed: int | None = None) -> None:
    """Call from a fixture's teardown: print the servers' log tails if a test failed.

    ``since_failed`` is ``request.session.testsfailed`` captured at fixture setup
    (default: dump whenever any test in the session has failed).  Output goes to the
    real stderr (bypassing capture) so it appears in the CI log next to the failure.
    """
    failed = request.session.testsfailed
    if failed == 0 or (since_failed is not None and failed <= since_failed):
        return
    out = sys.__stderr__
    for server in servers:
        out.write(f"\n===== {server.name} log tail ({server.log_path}) [{request.node.nodeid}] =====\n")
        out.write(server.log_tail())
        out.write("\n")
    out.flush()
