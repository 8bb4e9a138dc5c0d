"""Calls to a bank server in batches: at most one call of a kind in flight per server.

The queues ("lines") are per bank server address, not per bank, because one
server may host several banks: prepares for alpha and beta at the same
address travel in one `PrepareTransfers`, each item naming its bank. A
prepare or decision that finds its server's line idle goes out at once,
alone, so a quiet system waits for nothing. Those made while a call to that
server is on its way queue up and leave together when it returns, as one
`PrepareTransfers` or `DecideTransfers` (one RPC, one group commit at the
server). Under load that turns four bank calls per payment into a fraction
of that; each item still gets its own answer. One transfer id may appear
twice in a batch (its debit at alpha, its credit at beta): the items name
different banks.

The queues need no bound of their own: every item belongs to a payment that
counts against the coordinator's `--max-in-flight` until its decision is
delivered, so a line holds at most two items per such payment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

MAX_BATCH = 256
Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one transfer's call: its state, or the status that refused it."""

    acked: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""
    state: int = 0  # a bank_pb2.TransferState when acked


# Sends the bank server at an address (a line) a batch; one Delivery per item, in order.
BatchCall = Callable[[str, list[Item]], Awaitable[list[Delivery]]]
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(raw: int) -> grpc.StatusCode:
    return _CODES.get(raw, grpc.StatusCode.UNKNOWN)


class BankBatcher(Generic[Item]):
    """One line per bank server address; `call` sends a line's batch to it."""

    def __init__(self, call: BatchCall[Item]) -> None:
        self._call = call
        self._queues: dict[str, list[tuple[Item, asyncio.Future[Delivery]]]] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}

    async def send(self, line: str, item: Item) -> Delivery:
        """Queue `item` on `line` (a bank server's address) and wait for its own answer.
        A caller that gives up (a deadline) leaves the item in its batch; the answer
        is then dropped."""
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(line, []).append((item, future))
        if line not in self._draining:
            self._draining[line] = asyncio.ensure_future(self._drain(line))
        return await future

    async def _drain(self, line: str) -> None:
        try:
            while queue := self._queues.get(line):
                batch = queue[:MAX_BATCH]
                del queue[:MAX_BATCH]
                waiting = [(item, future) for item, future in batch if not future.done()]
                if not waiting:
                    continue
                try:
                    results = await self._call(line, [item for item, _ in waiting])
                    if len(results) != len(waiting):
                        raise RuntimeError(f"{line} answered {len(results)} of {len(waiting)}")
                except Exception as exc:  # never leave a caller waiting
                    for _, future in waiting:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(waiting, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:  # the queue is empty here: nothing awaited since the check
            del self._draining[line]
            self._queues.pop(line, None)
