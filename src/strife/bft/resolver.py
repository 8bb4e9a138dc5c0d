"""A replicated bank's resolver: each replica asks the coordinator, the group counts.

As at a plain bank (`strife.bank.resolver`), a leg voted YES and left
undecided for `in_doubt_s` is asked about at the coordinator named in its
record, and an unknown id is ABORT (presumed abort). What differs is who may
act on the answer. One replica alone may not: a faulty one would invent
answers. So every replica's resolver asks for itself and submits what it
heard as a vote through the group (`resolve`, signed as `bank/<replica>`);
the ledger settles the transfer once f + 1 replicas voted alike, one of them
honest (`BankMachine._resolve`). Before asking, a replica notes the leg's
prepare count, and its vote to abort counts only while that count stands: a
YES given since belongs to a newer attempt of the coordinator.

The resolver reads its own replica's state (a local, unordered read: an
honest replica's state is right, and the vote is ordered anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from strife.bank.ledger import TransferState
from strife.bank.resolver import CoordinatorLookup
from strife.bft.bank_machine import BankMachine, operation
from strife.bft.invoker import Invoker, NoQuorumError
from strife.observability.logging import get_logger
from strife.rpc.cancellation import run_passes
from strife.rpc.channels import ChannelPool, Peer
from strife.v1 import coordinator_pb2, coordinator_pb2_grpc

__all__ = ["GroupResolver"]

_log = get_logger("strife.bft.resolver")
RPC_TIMEOUT_S = 2.0
VOTE_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 30.0


class GroupResolver:
    def __init__(
        self,
        machine: Callable[[], BankMachine],
        voter: str,
        invoker: Invoker,
        pool: ChannelPool,
        lookup: CoordinatorLookup,
        *,
        in_doubt_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._machine = machine
        self._voter = voter
        self._invoker = invoker
        self._pool = pool
        self._lookup = lookup
        self._in_doubt_s = in_doubt_s
        self._tick_s = min(1.0, max(0.05, in_doubt_s / 4))
        self._clock = clock
        self._since: dict[str, float] = {}
        self._next: dict[str, tuple[float, float]] = {}
        """transfer id -> (when to ask again, the wait after that)."""
        self.voted = 0

    async def run(self) -> None:
        await run_passes(self.resolve_due, self._tick_s, "resolver", _log)

    async def resolve_due(self) -> None:
        now = self._clock()
        ledger = self._machine().ledger
        prepared = {
            t.transfer_id: (t.coordinator, ledger.votes.get(t.transfer_id, 0))
            for t in ledger.transfers.values()
            if t.state == TransferState.PREPARED
        }
        for gone in set(self._since) - set(prepared):
            self._since.pop(gone, None)
            self._next.pop(gone, None)
        due = []
        for transfer_id, (coordinator, seen) in prepared.items():
            since = self._since.setdefault(transfer_id, now)
            at, _ = self._next.get(transfer_id, (0.0, 0.0))
            if now - since >= self._in_doubt_s and now >= at:
                due.append((transfer_id, coordinator, seen))
        await asyncio.gather(*(self._resolve(*item) for item in due))

    async def _resolve(self, transfer_id: str, coordinator: str, seen: int) -> None:
        decision = await self._ask(transfer_id, coordinator)
        if decision not in (coordinator_pb2.DECISION_COMMIT, coordinator_pb2.DECISION_ABORT):
            self._back_off(transfer_id)
            return
        commit = decision == coordinator_pb2.DECISION_COMMIT
        vote = operation(
            "resolve", transfer_id=transfer_id, commit=commit, voter=self._voter, seen=seen
        )
        try:
            await self._invoker.invoke(vote, VOTE_TIMEOUT_S)
        except (NoQuorumError, grpc.aio.AioRpcError) as exc:
            _log.warning("resolve_vote_failed", transfer_id=transfer_id, error=str(exc))
        self.voted += 1
        # Settled by f + 1 votes, or asked again later (others may not have voted yet).
        self._back_off(transfer_id)
        _log.info(
            "in_doubt_vote",
            transfer_id=transfer_id,
            coordinator=coordinator,
            decision="COMMIT" if commit else "ABORT",
        )

    async def _ask(self, transfer_id: str, coordinator: str) -> int | None:
        address = await self._lookup(coordinator)
        if address is None:
            _log.warning("coordinator_unknown", coordinator=coordinator)
            return None
        # Only the coordinator named in the record may answer for it.
        channel = self._pool.get(address, Peer("gateway", coordinator))
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        try:
            reply = await stub.GetDecision(
                coordinator_pb2.GetDecisionRequest(transfer_id=transfer_id),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning("coordinator_unreachable", coordinator=coordinator, code=exc.code().name)
            return None
        return int(reply.decision)

    def _back_off(self, transfer_id: str) -> None:
        _, wait = self._next.get(transfer_id, (0.0, self._tick_s))
        wait = min(MAX_BACKOFF_S, max(self._tick_s, wait * 2))
        self._next[transfer_id] = (self._clock() + wait, wait)
