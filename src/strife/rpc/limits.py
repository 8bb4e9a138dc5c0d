"""The process's open-file limit, how many connections a server takes, and
the sizes the wire accepts.

Every connection is a file descriptor, and so is every database file, log
and outgoing channel. A server raises its soft RLIMIT_NOFILE to the hard
limit at start, and caps incoming connections below it, so a flood of
connections cannot take the descriptors the process needs for its own work
(accepting good clients, reaching banks, writing its database).

`STRIFE_MAX_OPEN_FILES=N` sets a lower soft limit instead (to test a flood
small, or to hold a process to a budget).
"""

from __future__ import annotations

import os

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]

MAX_OPEN_FILES_ENV = "STRIFE_MAX_OPEN_FILES"
# Descriptors kept out of the connection cap for the process's own files,
# channels and the listener's next accept.
MIN_RESERVED_FILES = 64
MAX_RESERVED_FILES = 1024

# Enforced by the servers, and checked by the client before it sends, so a
# request that would be refused fails where it is made.
MAX_PAGE_SIZE = 200  # entries in one page of a bank's history
MAX_DESCRIPTION_CHARS = 256  # a payment's description, at the gateway


def raise_open_files_limit() -> int | None:
    """Set the soft open-file limit to the hard one (or to STRIFE_MAX_OPEN_FILES);
    the soft limit now in force, or None where there is none to read."""
    if resource is None:  # pragma: no cover
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    override = os.environ.get(MAX_OPEN_FILES_ENV, "").strip()
    if override:
        wanted = int(override)
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
    elif hard == resource.RLIM_INFINITY:
        wanted = max(soft, 1 << 20)
    if wanted != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return None if soft == resource.RLIM_INFINITY else soft
        soft = wanted
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(open_files: int | None) -> int | None:
    """Incoming connections a server accepts at once under `open_files`
    descriptors: a quarter kept back (64 to 1024) for everything else."""
    if open_files is None:
        return None
    reserved = min(MAX_RESERVED_FILES, max(MIN_RESERVED_FILES, open_files // 4))
    return max(8, open_files - reserved)
