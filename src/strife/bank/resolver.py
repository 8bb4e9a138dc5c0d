"""Resolve in-doubt transfers by asking their coordinator.

A participant that voted YES may not decide alone: it holds the funds until
the coordinator named in the PREPARED record says COMMIT or ABORT (an unknown
id is ABORT, by presumed abort). This task asks once a transfer has been in
doubt for `in_doubt_s`, and backs off (capped, exponential) while the
coordinator is unreachable or still undecided. That wait is two-phase
commit's blocking property: it lasts as long as the coordinator is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from strife.backoff import Backoff, Jitter, Pace
from strife.bank.ledger import LedgerError, Transfer, TransferState
from strife.bank.store import BankStore
from strife.errors import StrifeError
from strife.observability.logging import get_logger
from strife.rpc.cancellation import run_passes
from strife.rpc.channels import ChannelPool, Peer
from strife.rpc.discovery import BalancerClient
from strife.v1 import coordinator_pb2, coordinator_pb2_grpc

_log = get_logger("strife.bank.resolver")

# Coordinator instance name -> "host:port", or None while it is unknown.
CoordinatorLookup = Callable[[str], Awaitable[str | None]]


@dataclass(slots=True)
class _Doubt(Pace):
    since: float = 0.0


class Resolver:
    def __init__(
        self,
        store: BankStore,
        pool: ChannelPool,
        lookup: CoordinatorLookup,
        *,
        in_doubt_s: float = 5.0,
        max_backoff_s: float = 30.0,
        rpc_timeout_s: float = 2.0,
        tick_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._pool = pool
        self._lookup = lookup
        self._in_doubt_s = in_doubt_s
        self._tick_s = tick_s if tick_s is not None else min(1.0, max(0.05, in_doubt_s / 4))
        # Twice the tick after the first unanswered question, doubling, capped;
        # drawn from the `random` module, which the simulation seeds.
        self._backoff = Backoff(2 * self._tick_s, max_backoff_s, jitter=Jitter.HALF)
        self._rpc_timeout_s = rpc_timeout_s
        self._clock = clock
        self._doubts: dict[str, _Doubt] = {}
        self.resolved = 0
        # As of the last pass, as plain ints: /metrics reads them from its own thread.
        self.prepared = 0
        self.in_doubt = 0

    async def run(self) -> None:
        await run_passes(self.resolve_due, self._tick_s, "resolver", _log)

    async def resolve_due(self) -> None:
        """One pass: ask about every transfer whose doubt has lasted long enough."""
        now = self._clock()
        prepared = {t.transfer_id: t for t in self._store.prepared()}
        for transfer_id in list(self._doubts):
            if transfer_id not in prepared:
                del self._doubts[transfer_id]
        due = []
        in_doubt = 0
        for transfer_id, transfer in prepared.items():
            doubt = self._doubts.setdefault(transfer_id, _Doubt(since=now))
            if now - doubt.since >= self._in_doubt_s:
                in_doubt += 1
                if now >= doubt.next_at:
                    due.append((transfer, doubt))
        self.prepared, self.in_doubt = len(prepared), in_doubt
        if due:
            await asyncio.gather(*(self._resolve(t, d) for t, d in due))

    async def _resolve(self, transfer: Transfer, doubt: _Doubt) -> None:
        # Read before asking: a presumed abort ("unknown to me") is stale if the
        # coordinator started a new attempt that got this leg's YES meanwhile.
        votes = self._store.votes(transfer.transfer_id)
        decision = await self._ask(transfer)
        try:
            if decision == coordinator_pb2.DECISION_COMMIT:
                await self._store.commit(
                    transfer_id=transfer.transfer_id, coordinator=transfer.coordinator
                )
            elif decision == coordinator_pb2.DECISION_ABORT:
                outcome = await self._store.abort(
                    transfer_id=transfer.transfer_id,
                    coordinator=transfer.coordinator,
                    unless_voted_since=votes,
                )
                if outcome.transfer.state == TransferState.PREPARED:
                    self._back_off(doubt)  # voted YES again since: ask again later
                    return
            else:
                self._back_off(doubt)
                return
        except LedgerError as exc:
            # The coordinator's own Commit/Abort got there first; nothing left to do.
            _log.info("resolver_raced", transfer_id=transfer.transfer_id, reason=exc.reason)
        self.resolved += 1
        _log.info(
            "in_doubt_resolved",
            transfer_id=transfer.transfer_id,
            coordinator=transfer.coordinator,
            decision="COMMIT" if decision == coordinator_pb2.DECISION_COMMIT else "ABORT",
            attempts=doubt.failures + 1,
        )

    async def _ask(self, transfer: Transfer) -> int | None:
        address = await self._lookup(transfer.coordinator)
        if address is None:
            _log.warning("coordinator_unknown", coordinator=transfer.coordinator)
            return None
        # Only the coordinator named in the record may answer for it.
        channel = self._pool.get(address, Peer("gateway", transfer.coordinator))
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        try:
            reply = await stub.GetDecision(
                coordinator_pb2.GetDecisionRequest(transfer_id=transfer.transfer_id),
                timeout=self._rpc_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "coordinator_unreachable",
                coordinator=transfer.coordinator,
                transfer_id=transfer.transfer_id,
                code=exc.code().name,
            )
            return None
        return int(reply.decision)

    def _back_off(self, doubt: _Doubt) -> None:
        doubt.failed(self._backoff, self._clock())


def static_lookup(addresses: dict[str, str]) -> CoordinatorLookup:
    async def lookup(name: str) -> str | None:
        return addresses.get(name)

    return lookup


def registry_lookup(client: BalancerClient, static: dict[str, str]) -> CoordinatorLookup:
    """Gateways by instance name through the balancer, after any static entries."""

    async def lookup(name: str) -> str | None:
        if name in static:
            return static[name]
        try:
            return await client.resolve("gateway", name)
        except StrifeError:
            return None

    return lookup


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
