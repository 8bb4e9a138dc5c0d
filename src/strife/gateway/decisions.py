"""Decisions to the banks in batches: at most one delivery call in flight per bank.

A decision that finds its bank's line idle goes out at once, alone, so a
quiet system waits for nothing. Decisions made while a call to that bank is
on its way queue up and leave together when it returns, as one
`DecideTransfers` (one RPC, one group commit at the bank). Under load that
turns two Commit calls per payment into a fraction of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from strife.errors import from_rpc_error
from strife.gateway.banks import Banks
from strife.v1 import bank_pb2

MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one decision: acknowledged, or the status that refused it."""

    acked: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""


# Delivers one decision by itself: the fallback for a bank that does not
# know DecideTransfers yet.
SendOne = Callable[[str, str, bool], Awaitable[Delivery]]


class DecisionSender:
    def __init__(self, banks: Banks, coordinator: str, timeout_s: float, send_one: SendOne) -> None:
        self._banks = banks
        self._coordinator = coordinator
        self._timeout_s = timeout_s
        self._send_one = send_one
        self._queues: dict[str, list[tuple[str, bool, asyncio.Future[Delivery]]]] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}
        self._singly: set[str] = set()  # banks that answered UNIMPLEMENTED

    async def send(self, bank: str, transfer_id: str, commit: bool) -> Delivery:
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(bank, []).append((transfer_id, commit, future))
        if bank not in self._draining:
            self._draining[bank] = asyncio.ensure_future(self._drain(bank))
        return await future

    async def _drain(self, bank: str) -> None:
        try:
            while queue := self._queues.get(bank):
                batch = queue[:MAX_BATCH]
                del queue[:MAX_BATCH]
                try:
                    await self._deliver(bank, batch)
                except Exception as exc:  # never leave a caller waiting
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
        finally:  # the queue is empty here: nothing awaited since the check
            del self._draining[bank]
            self._queues.pop(bank, None)

    async def _deliver(
        self, bank: str, batch: list[tuple[str, bool, asyncio.Future[Delivery]]]
    ) -> None:
        if bank in self._singly:
            results = await asyncio.gather(*(self._send_one(bank, t, c) for t, c, _ in batch))
            for (_, _, future), result in zip(batch, results, strict=True):
                future.set_result(result)
            return
        stub: Any = await self._banks.stub(bank)
        if stub is None:
            _settle_all(batch, Delivery(False, grpc.StatusCode.NOT_FOUND, "BANK_NOT_FOUND"))
            return
        request = bank_pb2.DecideTransfersRequest(
            coordinator=self._coordinator,
            decisions=[bank_pb2.TransferDecision(transfer_id=t, commit=c) for t, c, _ in batch],
        )
        try:
            reply = await stub.DecideTransfers(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                self._singly.add(bank)
                await self._deliver(bank, batch)
                return
            _settle_all(batch, Delivery(False, exc.code(), from_rpc_error(exc).reason))
            return
        for (_, _, future), outcome in zip(batch, reply.outcomes, strict=True):
            if outcome.error_reason:
                code = _CODES.get(outcome.error_code, grpc.StatusCode.UNKNOWN)
                future.set_result(Delivery(False, code, outcome.error_reason))
            else:
                future.set_result(Delivery(True))


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _settle_all(batch: list[tuple[str, bool, asyncio.Future[Delivery]]], result: Delivery) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_result(result)
