"""Telling our own cancellation from a call's.

A grpc.aio call cancelled from outside the caller's task (its channel closed
under it) raises `asyncio.CancelledError` in the caller, exactly like the
caller being cancelled. A loop meant to run for the life of the process (a
heartbeat, a settler, a resolver) must end on the second, and treat the
first as one more failed call; `Task.cancelling()` tells them apart.
"""

from __future__ import annotations

import asyncio


def cancelled_itself() -> bool:
    """True when the running task has been asked to stop (cancel() pending)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
