"""Process look-ups the launchers and the fork server share (standard library only: the fork
server imports it before its preloads)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts: it is not yet reaped); one of
    another user's is alive too (``EPERM``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
