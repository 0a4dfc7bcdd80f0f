"""Import an upstream package once per process, thread-safe (both upstream adapters need it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ImportOnce(Generic[T]):
    """Calls ``load`` the first time, under a lock; later calls return the same object. ``reset``
    forgets it (tests import a different stand-in)."""

    def __init__(self, load: Callable[[], T]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._value: T | None = None

    def __call__(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._load()
            return self._value

    def reset(self) -> None:
        with self._lock:
            self._value = None
