"""Telling our own cancellation from a call's.

A grpc.aio call cancelled from outside the caller's task (its channel closed
under it) raises `asyncio.CancelledError` in the caller, exactly like the
caller being cancelled. A loop meant to run for the life of the process (a
heartbeat, a settler, a resolver) must end on the second, and treat the
first as one more failed call; `Task.cancelling()` tells them apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn


def cancelled_itself() -> bool:
    """True when the running task has been asked to stop (cancel() pending)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def run_passes(
    one_pass: Callable[[], Awaitable[object]],
    interval_s: float,
    what: str,
    log: Any,
    *,
    wait_first: bool = False,
) -> NoReturn:
    """Run `one_pass` every `interval_s` for the life of the task (a resolver, a
    settler). A call cancelled under a pass, or a bug in one, is logged as
    `<what>_call_cancelled` or `<what>_failed` on `log`, and the next pass goes on:
    only this task's own cancellation ends the loop. `wait_first` waits an
    interval before the first pass too."""
    while True:
        if wait_first:
            await asyncio.sleep(interval_s)
        try:
            await one_pass()
        except asyncio.CancelledError:
            if cancelled_itself():
                raise
            log.warning(f"{what}_call_cancelled")  # a call's, not ours: go on
        except Exception as exc:  # never let the loop die; log and go on
            log.error(f"{what}_failed", error=repr(exc))
        if not wait_first:
            await asyncio.sleep(interval_s)
