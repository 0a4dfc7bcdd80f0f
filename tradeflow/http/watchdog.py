"""The total-deadline watchdog under ``tradeflow.http.client``: sockets a request opened are shut down
when its deadline passes, so a blocked read returns at once.

``requests`` timeouts are per socket read: a server sending a byte a second holds a client forever.
Connections made through ``watched_session()`` register their socket with the request in flight on
this thread; ``deadline(seconds)`` arms a timer that shuts those sockets down. Transport only: the
retry policy and what a failure means stay in ``tradeflow.http.client``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Watch:
    """Sockets of one request; ``fire`` shuts them down so a blocked read returns at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.fired = False
        self.done = False

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            if self.fired:
                _shutdown(sock)
            self.sockets.append(sock)

    def fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            for sock in self.sockets:
                _shutdown(sock)


@contextmanager
def deadline(seconds: float) -> Iterator[Watch]:
    """Watch the sockets this thread's request opens; shut them down after ``seconds``."""
    watch = Watch()
    timer = threading.Timer(seconds, watch.fire)
    timer.daemon = True
    _current.watch = watch
    timer.start()
    try:
        yield watch
    finally:
        with watch.lock:
            watch.done = True
        timer.cancel()
        _current.watch = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Registering:
    """Registers the connection's socket with the request in flight (new and keep-alive reuse)."""

    def _register(self) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.add(getattr(self, "sock", None))

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._register()

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:  # a reused keep-alive connection
        self._register()
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Registering, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Registering, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def watch_session(session: requests.Session) -> requests.Session:
    """Mount the watched adapter on ``session`` (unless it is already there); return it."""
    if not isinstance(session.get_adapter("http://x"), WatchedAdapter):
        adapter = WatchedAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


def watched_session() -> requests.Session:
    """A ``requests.Session`` whose connections the deadline watchdog can cut."""
    return watch_session(requests.Session())


__all__ = ["Watch", "WatchedAdapter", "deadline", "watch_session", "watched_session"]
