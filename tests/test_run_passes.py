"""A loop that lives as long as its task: a failed or cancelled call ends one
pass, only the task's own cancellation ends the loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strife.rpc.cancellation import run_passes

from .support import until


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def warning(self, event: str, **_: Any) -> None:
        self.events.append(event)

    def error(self, event: str, **_: Any) -> None:
        self.events.append(event)


async def test_a_bug_or_a_call_cancelled_under_a_pass_ends_only_that_pass() -> None:
    log = _Log()
    passes: list[int] = []

    async def one_pass() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("a bug")
        if len(passes) == 2:
            other = asyncio.get_running_loop().create_future()
            other.cancel()
            await other  # as a call whose channel closed under it raises

    loop = asyncio.create_task(run_passes(one_pass, 0.001, "settler", log))

    async def went_on() -> bool:
        return len(passes) >= 4

    await until(went_on, "passes after a bug and a cancelled call")
    assert log.events[:2] == ["settler_failed", "settler_call_cancelled"]
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
