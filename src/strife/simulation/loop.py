"""An asyncio event loop with virtual time and no I/O, for deterministic runs.

`asyncio`'s own scheduling is deterministic: ready callbacks run in FIFO
order, timers in order of their deadline, and the only source of
nondeterminism is the outside world (the clock, sockets, threads). This loop
has none of them. Its clock is a number that moves only when the loop has
nothing ready to run: the "selector" it polls reports no I/O and advances the
clock straight to the next timer. So a two-second prepare timeout costs
nothing, and the same program under the same seed takes the same path every
time.

The loop is bounded: past `max_ticks` iterations or `max_time` seconds of
virtual time it raises `BoundExceeded`; with nothing ready and nothing
scheduled (every task waiting on a future nobody will resolve) it raises
`Stuck`, which a real loop would answer by hanging forever.
"""

from __future__ import annotations

import asyncio
from typing import Any


class BoundExceeded(Exception):
    """The run took more loop iterations or virtual time than allowed."""


class Stuck(Exception):
    """Nothing ready and no timer: every task waits for something that never comes."""


class _VirtualClock:
    """What the loop polls instead of a selector: no events, and time moves on."""

    def __init__(self, loop: SimulatedLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        loop = self._loop
        loop.ticks += 1
        if timeout is None:
            raise Stuck(f"no task can run at t={loop.time():.6f}")
        if loop.ticks > loop.max_ticks:
            raise BoundExceeded(f"more than {loop.max_ticks} loop iterations")
        if timeout > 0:
            loop.advance(timeout)
        return []

    def close(self) -> None:
        pass


class SimulatedLoop(asyncio.BaseEventLoop):
    """A loop whose `time()` is virtual and whose only events are timers."""

    def __init__(self, *, max_ticks: int, max_time: float) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _VirtualClock(self)
        self.ticks = 0
        self.max_ticks = max_ticks
        self.max_time = max_time

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        if self._now > self.max_time:
            raise BoundExceeded(f"virtual time passed {self.max_time:g} s")

    def _process_events(self, event_list: list[Any]) -> None:
        assert not event_list

    def _write_to_self(self) -> None:
        """Nothing to wake: there are no other threads."""
