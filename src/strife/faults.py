"""Failpoints: named places where a test can make a process die on purpose.

Crash recovery is only as good as the crashes it was tested against, and a
SIGKILL from outside cannot aim at "after the COMMIT decision is on disk but
before any bank hears it". `STRIFE_FAILPOINTS=gateway.after_commit_decision`
makes the process exit at exactly that point (status 75, no cleanup, like a
kill). Unset in production, a failpoint is one set lookup.
"""

from __future__ import annotations

import os

EXIT_STATUS = 75

_ACTIVE = frozenset(
    p.strip() for p in os.environ.get("STRIFE_FAILPOINTS", "").split(",") if p.strip()
)


def failpoint(name: str) -> None:
    if name in _ACTIVE:
        os._exit(EXIT_STATUS)
