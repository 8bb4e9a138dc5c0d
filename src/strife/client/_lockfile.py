"""A non-blocking advisory lock on an open file, on POSIX and on Windows.

The client library must import everywhere Python runs: `fcntl` exists only
on POSIX and `msvcrt` only on Windows, so each is imported where it is used,
never at import. Both locks are dropped by the operating system when their
holder dies, which is what makes them safe for an outbox.
"""

from __future__ import annotations

import sys
from typing import IO


def try_lock(handle: IO[bytes]) -> bool:
    """Lock the file, or say it is held elsewhere."""
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def unlock(handle: IO[bytes]) -> None:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
