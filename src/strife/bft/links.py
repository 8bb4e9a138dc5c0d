"""One replica's messages to one peer: a long-lived client stream, in order, lossy.

A unary call per protocol message cost a call's set-up at both ends (and a
log line at the receiver) for every PREPARE and COMMIT: most of a replica's
CPU. A link keeps one stream open to its peer and writes each message on it.
What PBFT needs from it is little: messages may be lost, so when the peer is
down or slow the queue drops the newest rather than grow, and a broken
stream is opened again after a short pause (the messages it carried are
gone, as on a lossy network). A link dials on its first message and waits
for its peer to be ready, so a peer that is starting or restarting gets what
queued meanwhile. Order within a link is kept, a bonus the protocol does not
rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import grpc

__all__ = ["Link"]

QUEUE_LIMIT = 4096
STREAM_S = 300.0
"""A stream's deadline (every Strife call has one); it is opened again at once."""
REOPEN_S = 0.2


class Link:
    def __init__(self, open_stream: Any, dropped: Counter[str]) -> None:
        self._open = open_stream
        self._dropped = dropped
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Future[None] | None = None

    def send(self, data: bytes) -> None:
        if self._task is None:  # the first message dials (peers start in any order)
            self._task = asyncio.ensure_future(self._run())
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            self._dropped["link-full"] += 1

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            # The write API, not a request iterator: an iterator of a broken
            # stream can outlive it and keep taking messages off the queue.
            # Waiting for the connection: a restarting peer gets what queued meanwhile.
            call = self._open(None, timeout=STREAM_S, wait_for_ready=True)
            try:
                while True:
                    data = await self._queue.get()
                    await call.write(data)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass
            finally:
                call.cancel()
            code = await call.code()
            if code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                self._dropped[f"link-{code.name.lower()}"] += 1
                await asyncio.sleep(REOPEN_S)
