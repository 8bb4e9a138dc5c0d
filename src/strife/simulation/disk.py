"""A store's group-commit writer, simulated: queue order, batches, durability at a virtual instant.

Like `strife.storage.sqlite.GroupCommitWriter`: work is queued, a single
writer task takes everything queued as one batch, and each work's effect is
applied and made durable together when the batch commits, after a (virtual)
fsync. The work runs even if the caller stopped waiting (as a queued SQLite
write does). A crash of the store's node loses every queued or uncommitted
work: only what a batch applied before the crash survives.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from strife.simulation.nodes import Node, require_alive

Work = Callable[[], Any]


class Disk:
    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self._rng = rng
        self._queue: list[tuple[Work, asyncio.Future[Any]]] = []
        self._wake: asyncio.Future[None] | None = None
        self._node: Node | None = None
        self.slow_until = 0.0

    def start(self, node: Node) -> None:
        """The writer of a new incarnation of the store's process."""
        self._node = node
        self._queue = []
        self._wake = None
        node.spawn(self._write_forever())

    def crash(self) -> None:
        """What was queued or being committed is lost; its callers never hear back."""
        for _, future in self._queue:
            future.cancel()
        self._queue = []
        self._node = None

    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue `work`; the future resolves (to its result) once its batch committed."""
        require_alive()
        if self._node is None or not self._node.alive:
            raise asyncio.CancelledError(f"{self.name} is down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return future

    def _fsync_s(self) -> float:
        latency = self._rng.uniform(0.0002, 0.003)
        if asyncio.get_running_loop().time() < self.slow_until:
            latency *= 100
        return latency

    async def _write_forever(self) -> None:
        while True:
            if not self._queue:
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
            await asyncio.sleep(self._fsync_s())
            batch, self._queue = self._queue, []
            for work, future in batch:
                try:
                    result = work()
                except Exception as exc:
                    if future.cancelled():
                        continue
                    future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(result)
