"""Two-phase commit with presumed abort, the gateway as coordinator: the I/O shell.

The rules live in `twophase` (pure); this module sends the calls, writes the
log and owns the runs. Each payment is a persisted state machine with
recovery points (see `GatewayStore`): the PENDING record before any bank is
called, the decision (COMMIT force-written before any bank hears it), then
`settled` once every bank acknowledged. A crash between points resumes from
the last one: decided but unsettled -> resend the decision; undecided -> ask
the payer's bank to abort it, and believe what it answers (rule 7: an abort
is a promise only once a bank holds it).

One mechanism owns a transfer id in this process: `_own` starts the one task
that may act for it (a customer's attempt, a settler's or recovery's
resolution, a GetDecision's), and everyone else joins that task. The task is
never cancelled by a caller going away, so a cancelled request cannot leave
an undecided record that nobody is running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from strife.backoff import Backoff, Pace
from strife.errors import Reason, from_rpc_error
from strife.faults import failpoint
from strife.gateway.banks import BankServers
from strife.gateway.decisions import BankBatcher, Delivery, status_code
from strife.gateway.store import GatewayStore, PaymentRecord, PaymentState
from strife.gateway.twophase import (
    RECORDED_REFUSALS,
    Arbiter,
    Ballot,
    Delivered,
    Plan,
    Verdict,
    Vote,
    after_arbiter_abort,
    after_delivery,
    after_votes,
    is_transient,
)
from strife.observability.logging import get_logger
from strife.rpc.breaker import BreakerConfig
from strife.rpc.cancellation import run_passes
from strife.rpc.circuits import Circuits, GuardedStub
from strife.v1 import bank_pb2, coordinator_pb2, money_pb2

__all__ = [
    "CoordinatorConfig",
    "FingerprintMismatchError",
    "InProgressError",
    "LegSpec",
    "PaymentCoordinator",
    "TooManyInFlightError",
    "legs_of",
]

_log = get_logger("strife.gateway.coordinator")

_TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# How soon the owner of a transfer asks again for a leg another attempt holds:
# the other side lets go as soon as it sees our debit, one round trip later.
RETRY_PREPARE_S = 0.02


# A decision for one bank's leg: (bank, transfer id, commit). Batched per
# server, so the bank travels with it.
Decision = tuple[str, str, bool]
# A bank whose address the directory cannot give now: try again later.
_NO_ADDRESS = Delivery(False, grpc.StatusCode.UNAVAILABLE, Reason.BANK_UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class LegSpec:
    bank: str
    leg: bank_pb2.Leg.ValueType
    account_id: str
    counterparty: str


@dataclass(frozen=True)
class CoordinatorConfig:
    name: str
    prepare_timeout_s: float = 2.0
    decision_timeout_s: float = 1.0
    max_in_flight: int = 256
    settle_interval_s: float = 0.5
    settle_backoff_max_s: float = 10.0
    # "decision": answer once the decision is durable and deliver it in the
    # background (a payment decided COMMIT is COMMITTED); "settled": answer after
    # every bank acked.
    reply_after: Literal["decision", "settled"] = "decision"
    # Per bank server address: calls fail fast while its circuit is open.
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


class InProgressError(Exception):
    """Another attempt owns this transfer id; the caller should ask again later."""


class TooManyInFlightError(Exception):
    pass


class FingerprintMismatchError(Exception):
    """The same idempotency key is known for a different request."""


def legs_of(record: PaymentRecord) -> list[LegSpec]:
    """The payment's legs, the payer's bank (the arbiter) first. A one-phase
    payment has one call, to its one bank."""
    debit = LegSpec(
        record.from_bank,
        bank_pb2.LEG_DEBIT,
        record.from_account,
        f"{record.to_bank}/{record.to_account}",
    )
    if record.one_phase:
        return [debit]
    credit = LegSpec(
        record.to_bank,
        bank_pb2.LEG_CREDIT,
        record.to_account,
        f"{record.from_bank}/{record.from_account}",
    )
    return [debit, credit]


@dataclass(slots=True)
class _Run:
    record: PaymentRecord
    task: asyncio.Task[PaymentRecord]


class PaymentCoordinator:
    def __init__(self, config: CoordinatorConfig, store: GatewayStore, banks: BankServers) -> None:
        self.config = config
        self.store = store
        self.banks = banks
        self._runs: dict[str, _Run] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Decisions being delivered after the reply, by transfer id and by account,
        # so reads through this gateway can wait for them (read your own writes).
        self._delivering: dict[str, asyncio.Future[None]] = {}
        self._by_account: dict[tuple[str, str], set[asyncio.Future[bool]]] = {}
        # One call of each kind in flight per bank server (address); what queues
        # behind it is batched, whichever of the server's banks it is for.
        self._prepares: BankBatcher[Any] = BankBatcher(self._prepare_batch)
        self._decisions: BankBatcher[Decision] = BankBatcher(self._decide_batch)
        self._singly: set[str] = set()  # addresses without the batch calls (UNIMPLEMENTED)
        self._on_outcome: Callable[[PaymentRecord], None] | None = None
        # The settler's patience, per payment: one bank that refuses to answer
        # must not hold back the settlement of every other payment.
        self._backoff: dict[str, Pace] = {}
        # Twice the pass interval after its first failure, doubling, capped.
        interval_s = config.settle_interval_s
        self._settle_backoff = Backoff(2 * interval_s, max(config.settle_backoff_max_s, interval_s))
        # Every call to a bank server goes through its address's breaker.
        self.circuits = Circuits("bank", config.breaker)
        # Payments not yet acknowledged by every bank, as of the settler's last pass.
        self.unsettled = 0

    # ------------------------------------------------------------ entry points

    async def submit(self, record: PaymentRecord) -> tuple[PaymentRecord, bool]:
        """A customer's request for a payment: the stored outcome of its key, the
        run already deciding it, or a new run. The second element says the answer
        replays an earlier attempt (or joined one)."""
        if self.running(record.transfer_id) is not None:
            return await self.run(record)
        existing = self.store.by_transfer(record.transfer_id)
        if existing is None:
            return await self.run(record)
        if existing.fingerprint != record.fingerprint:
            raise FingerprintMismatchError(record.transfer_id)
        if existing.state != PaymentState.PENDING:
            return existing, True
        # Undecided and nobody runs it (a crash, or a bank that did not answer):
        # a new attempt under the same transfer id may still commit it.
        result, _ = await self.run(existing)
        return result, True

    async def run(self, record: PaymentRecord) -> tuple[PaymentRecord, bool]:
        """Coordinate a payment to its decision. Concurrent calls for the same id
        share one run; the second element says the caller joined one."""
        running = self._runs.get(record.transfer_id)
        if running is not None and running.record.fingerprint != record.fingerprint:
            raise FingerprintMismatchError(record.transfer_id)
        task, joined = self._own(record, lambda: self._attempt(record))
        return await asyncio.shield(task), joined

    @property
    def in_flight(self) -> int:
        """Payments being decided or delivered here: what `max_in_flight` bounds."""
        return len(self._runs) + len(self._delivering)

    def running(self, transfer_id: str) -> PaymentRecord | None:
        entry = self._runs.get(transfer_id)
        return entry.record if entry else None

    async def decision(self, transfer_id: str) -> coordinator_pb2.Decision.ValueType:
        """What a participant in doubt is told. Never ABORT while COMMIT is possible."""
        if transfer_id in self._runs:
            return coordinator_pb2.DECISION_UNDECIDED
        record = self.store.by_transfer(transfer_id)
        if record is None:
            # Never decided here, and nothing runs it: presumed abort. A new
            # attempt that got the asking bank's YES since it asked makes the
            # bank drop this answer (it counts votes; see Ledger.abort).
            return coordinator_pb2.DECISION_ABORT
        if record.state == PaymentState.COMMITTED:
            return coordinator_pb2.DECISION_COMMIT
        if record.state == PaymentState.ABORTED:
            return coordinator_pb2.DECISION_ABORT
        self._resolve_soon(record)
        return coordinator_pb2.DECISION_UNDECIDED

    async def lookup(self, transfer_id: str, key: str, bank: str) -> PaymentRecord | None:
        """A payment by transfer id: this replica's record, or what the payer's
        bank recorded (another replica coordinated it)."""
        record = self.running(transfer_id) or self.store.by_transfer(transfer_id)
        if record is not None:
            return record
        stub = await self.stub(bank)
        if stub is None:
            return None
        try:
            reply = await stub.GetTransfer(
                bank_pb2.GetTransferRequest(bank=bank, transfer_id=transfer_id),
                timeout=self.config.decision_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return _record_from_bank(reply, key, bank)

    # ------------------------------------------------------------- ownership

    def _own(
        self,
        record: PaymentRecord,
        work: Callable[[], Awaitable[PaymentRecord]],
        *,
        bounded: bool = True,
    ) -> tuple[asyncio.Task[PaymentRecord], bool]:
        """The one task acting for this transfer id here: the running one, or a
        new one doing `work`. Registered before anything can yield."""
        transfer_id = record.transfer_id
        running = self._runs.get(transfer_id)
        if running is not None:
            return running.task, True
        busy = len(self._runs) + len(self._delivering)
        if bounded and busy >= self.config.max_in_flight:
            raise TooManyInFlightError(f"{busy} payments in flight")
        task: asyncio.Task[PaymentRecord] = asyncio.ensure_future(_call(work))
        run = _Run(record, task)
        self._runs[transfer_id] = run

        def finished(done: asyncio.Task[PaymentRecord]) -> None:
            if self._runs.get(transfer_id) is run:
                del self._runs[transfer_id]
            if not done.cancelled():
                done.exception()  # retrieved: joiners re-raise it, nobody else must

        task.add_done_callback(finished)
        return task, False

    def _resolve_soon(self, record: PaymentRecord) -> None:
        """Start resolving an undecided record nobody runs (no caller waits)."""
        if record.transfer_id not in self._runs:
            self._own(record, lambda: self._resolve(record), bounded=False)

    # -------------------------------------------------------------- the run

    async def _attempt(self, record: PaymentRecord) -> PaymentRecord:
        if record.created_at_ms:  # already recorded: a new attempt of an undecided one
            recorded: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            recorded.set_result(None)
        else:
            # The recovery point commits while the banks are asked, not before: a
            # crash that loses it is harmless under presumed abort, and waiting for
            # it first would put one more fsync on every payment's path.
            recorded = self.store.insert_pending(record)
        try:
            legs = legs_of(record)
            if record.one_phase:
                ballots = [await self._process(record)]
            else:
                ballots = await self._prepare_all(record, legs)
            await recorded  # durable before any decision, so recovery knows every undecided one
            failpoint("gateway.before_decision")
            return await self._act(record, legs, ballots)
        finally:
            await recorded

    async def _prepare_all(self, record: PaymentRecord, legs: list[LegSpec]) -> list[Ballot]:
        """Prepare every leg at once; while we hold the debit and another attempt
        holds a leg, ask that leg again until the prepare deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.prepare_timeout_s
        ballots = list(
            await asyncio.gather(*(self._prepare(record, leg, deadline) for leg in legs))
        )
        while True:
            plan = after_votes(ballots, can_retry=loop.time() + RETRY_PREPARE_S < deadline)
            if plan.verdict is not Verdict.RETRY:
                return ballots
            await asyncio.sleep(RETRY_PREPARE_S)
            again = await asyncio.gather(
                *(self._prepare(record, legs[i], deadline) for i in plan.retry)
            )
            for index, ballot in zip(plan.retry, again, strict=True):
                ballots[index] = ballot

    async def _act(
        self, record: PaymentRecord, legs: list[LegSpec], ballots: list[Ballot]
    ) -> PaymentRecord:
        plan = after_votes(ballots, can_retry=False)
        _log.debug(
            "votes",
            transfer_id=record.transfer_id,
            verdict=plan.verdict.value,
            votes=[b.vote.value for b in ballots],
        )
        if plan.verdict is Verdict.COMMIT:
            decided = record.decided(PaymentState.COMMITTED)
            await self.store.decide(decided)  # the commit point
            self._notify(decided)
            failpoint("gateway.after_commit_decision")
            await self._decided(decided, _pick(legs, plan.deliver))
            return decided
        if plan.verdict is Verdict.COMMITTED:
            decided = record.decided(PaymentState.COMMITTED)
            await self.store.decide(decided, settled=True)
            self._notify(decided)
            return decided
        if plan.verdict is Verdict.ABORT:
            decided = record.decided(PaymentState.ABORTED, plan.reason, plan.transient)
            await self.store.decide(decided, settled=not plan.deliver)
            self._notify(decided)
            if plan.deliver:
                await self._decided(decided, _pick(legs, plan.deliver))
            return decided
        if plan.verdict in (Verdict.LOST, Verdict.KEY_REUSED):
            await self._withdraw(record, _pick(legs, plan.release))
            if plan.verdict is Verdict.KEY_REUSED:
                raise FingerprintMismatchError(record.transfer_id)
            raise InProgressError(record.transfer_id)
        assert plan.verdict is Verdict.UNDECIDED, plan
        return await self._establish(record, legs, plan)

    async def _withdraw(self, record: PaymentRecord, legs: list[LegSpec]) -> None:
        """Take back whatever undecided YES we may hold, then drop our record: the
        transfer is another attempt's. A release that does not arrive leaves a
        PREPARED leg of ours that its bank's resolver settles (we have no record:
        presumed abort)."""
        await asyncio.gather(*(self._call_abort(record, leg.bank, release=True) for leg in legs))
        await self.store.forget(record.transfer_id)

    async def _resolve(self, record: PaymentRecord) -> PaymentRecord:
        """Settle an undecided record nobody runs (after a crash, a cancelled or
        unanswered attempt): an abort established at the payer's bank."""
        current = self.store.by_transfer(record.transfer_id)
        if current is None or current.state != PaymentState.PENDING:
            return current or record
        plan = Plan(Verdict.UNDECIDED, Reason.COORDINATOR_RESTARTED, transient=True)
        return await self._establish(current, legs_of(current), plan)

    async def _establish(
        self, record: PaymentRecord, legs: list[LegSpec], plan: Plan
    ) -> PaymentRecord:
        """Ask the arbiter to abort: its answer is the outcome (rule 7). Until a
        bank holds the abort, the payment stays PENDING."""
        delivery = await self._call_abort(record, legs[0].bank, release=False)
        arbiter = after_arbiter_abort(
            delivery.acked, delivery.code in _TRANSIENT_CODES, delivery.reason
        )
        if arbiter is Arbiter.ABORTED:
            reason = plan.reason or Reason.COORDINATOR_RESTARTED
            decided = record.decided(PaymentState.ABORTED, reason, is_transient(reason))
            await self.store.decide(decided, settled=len(legs) == 1)
            self._notify(decided)
            if len(legs) > 1:
                await self._decided(decided, legs[1:])
            return decided
        if arbiter is Arbiter.COMMITTED:
            decided = record.decided(PaymentState.COMMITTED)
            await self.store.decide(decided, settled=True)  # its coordinator delivers it
            self._notify(decided)
            return decided
        if arbiter is Arbiter.HELD:
            await self._withdraw(record, legs[1:])
            return record
        return record  # unknown: PENDING, asked again later

    async def _call_abort(self, record: PaymentRecord, bank: str, *, release: bool) -> Delivery:
        stub = await self.stub(bank)
        if stub is None:
            return Delivery(False, grpc.StatusCode.UNAVAILABLE, Reason.BANK_UNAVAILABLE)
        try:
            reply = await stub.Abort(
                bank_pb2.AbortRequest(
                    bank=bank,
                    transfer_id=record.transfer_id,
                    coordinator=self.config.name,
                    release=release,
                ),
                timeout=self.config.decision_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            return _failed(exc)
        return Delivery(True, state=reply.state)

    # --------------------------------------------------------- phase calls

    async def _process(self, record: PaymentRecord) -> Ballot:
        """Both legs at one bank: one call, decided there (one-phase commit)."""
        stub = await self.stub(record.from_bank)
        if stub is None:
            return Ballot(Vote.TRANSIENT, Reason.BANK_UNAVAILABLE)
        try:
            await stub.ProcessTransaction(
                bank_pb2.ProcessTransactionRequest(
                    bank=record.from_bank,
                    transfer_id=record.transfer_id,
                    coordinator=self.config.name,
                    from_account_id=record.from_account,
                    to_account_id=record.to_account,
                    amount=money_pb2.Money(
                        amount_minor=record.amount_minor, currency=record.currency
                    ),
                    fingerprint=record.fingerprint,
                    customer_id=record.customer_id,
                ),
                timeout=self.config.prepare_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            return _ballot(exc.code(), from_rpc_error(exc).reason)
        return Ballot(Vote.COMMITTED)

    async def _prepare(self, record: PaymentRecord, leg: LegSpec, deadline: float) -> Ballot:
        request = bank_pb2.PrepareRequest(
            bank=leg.bank,
            transfer_id=record.transfer_id,
            coordinator=self.config.name,
            leg=leg.leg,
            account_id=leg.account_id,
            amount=money_pb2.Money(amount_minor=record.amount_minor, currency=record.currency),
            fingerprint=record.fingerprint,
            counterparty=leg.counterparty,
            # The payer's bank checks the account is this customer's; the
            # payee's bank has no business knowing who pays.
            customer_id=record.customer_id if leg.leg == bank_pb2.LEG_DEBIT else "",
        )
        try:
            # The deadline covers the wait behind an earlier batch as well.
            async with asyncio.timeout_at(deadline):
                address = await self.banks.address(leg.bank)
                if address is None or self.circuits.refused(address) is not None:
                    # No address, or its circuit is open: fail fast, unqueued.
                    return Ballot(Vote.TRANSIENT, Reason.BANK_UNAVAILABLE)
                vote = await self._prepares.send(address, request)
        except TimeoutError:
            return Ballot(Vote.TRANSIENT, Reason.PREPARE_TIMEOUT)
        if vote.acked:
            committed = vote.state == bank_pb2.TRANSFER_STATE_COMMITTED
            return Ballot(Vote.COMMITTED if committed else Vote.YES)
        return _ballot(vote.code, vote.reason)

    async def _prepare_batch(self, address: str, requests: list[Any]) -> list[Delivery]:
        """One line's prepares, for any of the banks at `address` (each names its own)."""
        stub = self._at(address)
        return await self._batch_or_singly(
            address,
            len(requests),
            lambda: stub.PrepareTransfers(
                bank_pb2.PrepareTransfersRequest(prepares=requests),
                timeout=self.config.prepare_timeout_s,
            ),
            lambda: asyncio.gather(*(self._prepare_one(stub, r) for r in requests)),
        )

    async def _prepare_one(self, stub: Any, request: Any) -> Delivery:
        try:
            reply = await stub.Prepare(request, timeout=self.config.prepare_timeout_s)
        except grpc.aio.AioRpcError as exc:
            return _failed(exc)
        return Delivery(True, state=reply.state)

    async def _decide_batch(self, address: str, items: list[Decision]) -> list[Delivery]:
        """One line's decisions; a transfer id may come twice, for two banks."""
        stub = self._at(address)
        request = bank_pb2.DecideTransfersRequest(
            coordinator=self.config.name,
            decisions=[
                bank_pb2.TransferDecision(bank=b, transfer_id=t, commit=c) for b, t, c in items
            ],
        )
        return await self._batch_or_singly(
            address,
            len(items),
            lambda: stub.DecideTransfers(request, timeout=self.config.decision_timeout_s),
            lambda: asyncio.gather(*(self._decide_one(stub, b, t, c) for b, t, c in items)),
        )

    async def _batch_or_singly(
        self,
        address: str,
        count: int,
        batch: Callable[[], Awaitable[Any]],
        singly: Callable[[], Awaitable[list[Delivery]]],
    ) -> list[Delivery]:
        """One batch call, its outcomes one per item; single calls from the first
        UNIMPLEMENTED on (a bank server of an older version)."""
        if address not in self._singly:
            try:
                reply = await batch()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    return [_failed(exc)] * count
                self._singly.add(address)
            else:
                return [_delivery(outcome) for outcome in reply.outcomes]
        return list(await singly())

    async def _decided(self, record: PaymentRecord, legs: list[LegSpec]) -> None:
        """Deliver a durable decision: before the reply, or after it in the background."""
        if self.config.reply_after == "settled":
            await self._deliver(record, legs)
            return
        commit = record.state == PaymentState.COMMITTED
        sends = [
            asyncio.ensure_future(self._send_batched(record, leg.bank, commit)) for leg in legs
        ]
        for leg, send in zip(legs, sends, strict=True):
            self._watch((leg.bank, leg.account_id), send)
        self._delivering[record.transfer_id] = asyncio.ensure_future(
            self._settle_after(record, sends)
        )

    async def _settle_after(
        self, record: PaymentRecord, sends: Sequence[asyncio.Future[bool]]
    ) -> None:
        try:
            if all(await asyncio.gather(*sends)):
                await self.store.settle(record.transfer_id)
        except Exception as exc:  # the settler resends what this could not deliver
            _log.error("delivery_failed", transfer_id=record.transfer_id, error=repr(exc))
        finally:
            del self._delivering[record.transfer_id]

    def _watch(self, account: tuple[str, str], send: asyncio.Future[bool]) -> None:
        self._by_account.setdefault(account, set()).add(send)

        def done(finished: asyncio.Future[bool]) -> None:
            waiting = self._by_account.get(account)
            if waiting is not None:
                waiting.discard(finished)
                if not waiting:
                    del self._by_account[account]

        send.add_done_callback(done)

    async def delivered(self, bank: str, account_id: str, timeout_s: float) -> bool:
        """Wait (bounded) until decisions touching this account reached its bank;
        False when some are still on their way (a bank slow or down)."""
        waiting = self._by_account.get((bank, account_id))
        if not waiting:
            return True
        _, pending = await asyncio.wait(set(waiting), timeout=timeout_s)
        return not pending

    async def _deliver(self, record: PaymentRecord, legs: list[LegSpec]) -> None:
        """Send the decision; settle now if every bank acknowledged, else in the background."""
        if await self._send_all(record, legs, commit=record.state == PaymentState.COMMITTED):
            self._spawn(self.store.settle(record.transfer_id))

    async def _send_all(self, record: PaymentRecord, legs: list[LegSpec], *, commit: bool) -> bool:
        acks = await asyncio.gather(*(self._send(record, leg.bank, commit) for leg in legs))
        return all(acks)

    async def _send(self, record: PaymentRecord, bank: str, commit: bool) -> bool:
        delivery = await self._send_one(bank, record.transfer_id, commit)
        return self._acked(record.transfer_id, bank, commit, delivery)

    async def _send_batched(self, record: PaymentRecord, bank: str, commit: bool) -> bool:
        address = await self.banks.address(bank)
        if address is None or self.circuits.refused(address) is not None:
            delivery = _NO_ADDRESS  # the settler resends it
        else:
            delivery = await self._decisions.send(address, (bank, record.transfer_id, commit))
        return self._acked(record.transfer_id, bank, commit, delivery)

    async def _send_one(self, bank: str, transfer_id: str, commit: bool) -> Delivery:
        stub = await self.stub(bank)
        if stub is None:
            return _NO_ADDRESS
        return await self._decide_one(stub, bank, transfer_id, commit)

    async def _decide_one(self, stub: Any, bank: str, transfer_id: str, commit: bool) -> Delivery:
        name = self.config.name
        try:
            if commit:
                await stub.Commit(
                    bank_pb2.CommitRequest(bank=bank, transfer_id=transfer_id, coordinator=name),
                    timeout=self.config.decision_timeout_s,
                )
            else:
                await stub.Abort(
                    bank_pb2.AbortRequest(bank=bank, transfer_id=transfer_id, coordinator=name),
                    timeout=self.config.decision_timeout_s,
                )
        except grpc.aio.AioRpcError as exc:
            return _failed(exc)
        return Delivery(True)

    def _acked(self, transfer_id: str, bank: str, commit: bool, delivery: Delivery) -> bool:
        """True when nothing is left to send this bank for this transfer."""
        verdict = after_delivery(
            commit, delivery.acked, delivery.code in _TRANSIENT_CODES, delivery.reason
        )
        if verdict is Delivered.DONE:
            return True
        if verdict is Delivered.REFUSED:
            # The bank knows the id with the other outcome, or not at all: sending
            # it again cannot change that. Only a violated rule gets here.
            _log.error(
                "decision_refused",
                transfer_id=transfer_id,
                bank=bank,
                commit=commit,
                code=delivery.code.name,
                reason=delivery.reason,
            )
            return True
        _log.warning(
            "decision_not_delivered",
            transfer_id=transfer_id,
            bank=bank,
            commit=commit,
            code=delivery.code.name,
            reason=delivery.reason,
        )
        return False

    # ------------------------------------------------------------ recovery

    async def recover(self) -> int:
        """At start: every undecided record is resolved at the banks (or left for
        the settler when they cannot say yet); decided ones are resent by the
        settler. Returns how many undecided records there were."""
        pending = [
            record
            for record in await self.store.unsettled(limit=1_000_000)
            if record.state == PaymentState.PENDING
        ]
        if pending:
            results = await asyncio.gather(*(self._settle(r.transfer_id) for r in pending))
            _log.info("recovered_undecided", undecided=len(pending), resolved=sum(results))
        return len(pending)

    async def settle_forever(self) -> None:
        """Resend decisions and resolve undecided records until none is left;
        each payment backs off on its own (capped)."""
        await run_passes(
            self.settle_once, self.config.settle_interval_s, "settler", _log, wait_first=True
        )

    async def settle_once(self) -> bool:
        """One pass over the unsettled payments that are due; True when nothing is
        left to deliver."""
        now = asyncio.get_running_loop().time()
        listed = await self.store.unsettled()
        self.unsettled = len(listed)
        due = [r for r in listed if self._backoff.get(r.transfer_id, Pace()).next_at <= now]
        results = await asyncio.gather(*(self._settle(r.transfer_id) for r in due))
        for record, done in zip(due, results, strict=True):
            self._note_attempt(record.transfer_id, done, now)
        return len(due) == len(listed) and all(results)

    def _note_attempt(self, transfer_id: str, done: bool, now: float) -> None:
        if done:
            self._backoff.pop(transfer_id, None)
            return
        self._backoff.setdefault(transfer_id, Pace()).failed(self._settle_backoff, now)

    async def _settle(self, transfer_id: str) -> bool:
        if transfer_id in self._delivering:
            return True  # decided; its delivery is under way
        running = self._runs.get(transfer_id)
        if running is not None:
            return True  # its own run finishes it
        record = self.store.by_transfer(transfer_id)
        if record is None or record.settled:
            return True
        if record.state == PaymentState.PENDING:
            task, _ = self._own(record, lambda: self._resolve(record), bounded=False)
            resolved = await asyncio.shield(task)
            return resolved.state != PaymentState.PENDING
        legs = legs_of(record)
        commit = record.state == PaymentState.COMMITTED
        if await self._send_all(record, legs, commit=commit):
            await self.store.settle(record.transfer_id)
            _log.info("settled", transfer_id=record.transfer_id, state=str(record.state))
            return True
        return False

    # ---------------------------------------------------------------- misc

    def _at(self, address: str) -> Any:
        """The stub for the bank server at `address`, behind its breaker."""
        return GuardedStub(self.banks.at(address), self.circuits, address, Reason.BANK_UNAVAILABLE)

    async def stub(self, bank: str) -> Any | None:
        """The stub for `bank`'s server behind its breaker (None: no address). A
        call refused by an open circuit raises UNAVAILABLE BANK_UNAVAILABLE with
        RetryInfo, like a bank that did not answer; it never makes up an answer."""
        address = await self.banks.address(bank)
        return None if address is None else self._at(address)

    def on_outcome(self, callback: Callable[[PaymentRecord], None]) -> None:
        self._on_outcome = callback

    def _notify(self, record: PaymentRecord) -> None:
        if self._on_outcome is not None:
            self._on_outcome(record)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Let runs and deliveries finish (each is bounded by its timeouts); the
        settler resends whatever they could not deliver after the next start."""
        for _ in range(3):  # a run spawns its delivery, a delivery its settle write
            tasks: list[asyncio.Future[Any]] = [
                *(run.task for run in self._runs.values()),
                *self._delivering.values(),
                *self._background,
            ]
            if not tasks:
                return
            for task in tasks:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task


async def _call(work: Callable[[], Awaitable[PaymentRecord]]) -> PaymentRecord:
    return await work()


def _pick(legs: list[LegSpec], indexes: Sequence[int]) -> list[LegSpec]:
    return [legs[i] for i in indexes]


def _ballot(code: grpc.StatusCode, reason: str) -> Ballot:
    if reason == Reason.REQUEST_IN_PROGRESS:
        return Ballot(Vote.IN_PROGRESS, reason)
    if reason == Reason.TRANSFER_ID_REUSED:
        return Ballot(Vote.REUSED, reason)
    if reason in RECORDED_REFUSALS:
        return Ballot(Vote.NO, reason)
    if code in _TRANSIENT_CODES:
        timed_out = code is grpc.StatusCode.DEADLINE_EXCEEDED
        return Ballot(
            Vote.TRANSIENT, Reason.PREPARE_TIMEOUT if timed_out else Reason.BANK_UNAVAILABLE
        )
    return Ballot(Vote.REFUSED, reason or Reason.INTERNAL)


_STATES = {
    bank_pb2.TRANSFER_STATE_PREPARED: PaymentState.PENDING,
    bank_pb2.TRANSFER_STATE_COMMITTED: PaymentState.COMMITTED,
    bank_pb2.TRANSFER_STATE_ABORTED: PaymentState.ABORTED,
}


def _record_from_bank(reply: Any, key: str, bank: str) -> PaymentRecord | None:
    """A payment as the payer's bank recorded it: its debit leg (the arbiter)
    says the outcome; the credit side comes from the leg's counterparty."""
    state = _STATES.get(reply.state)
    if state is None:
        return None
    debit = next((p for p in reply.postings if p.leg == bank_pb2.LEG_DEBIT), None)
    to_bank, to_account = bank, ""
    if debit is not None and reply.one_phase:
        credit = next((p for p in reply.postings if p.leg == bank_pb2.LEG_CREDIT), None)
        to_account = credit.account_id if credit is not None else ""
    elif debit is not None:
        to_bank, _, to_account = debit.counterparty.partition("/")
    reason = ""
    if state == PaymentState.ABORTED:
        reason = reply.abort_reason
        if reason not in RECORDED_REFUSALS:
            reason = Reason.TRANSFER_ABORTED
    return PaymentRecord(
        customer_id="",
        idempotency_key=key,
        transfer_id=reply.transfer_id,
        fingerprint=b"",
        state=state,
        from_bank=bank,
        from_account=debit.account_id if debit is not None else "",
        to_bank=to_bank,
        to_account=to_account,
        amount_minor=debit.amount.amount_minor if debit is not None else 0,
        currency=debit.amount.currency if debit is not None else "",
        description="",
        abort_reason=reason,
        abort_transient=is_transient(reason),
        settled=state != PaymentState.PENDING,
    )


def _failed(exc: grpc.aio.AioRpcError) -> Delivery:
    return Delivery(False, exc.code(), from_rpc_error(exc).reason)


def _delivery(outcome: Any) -> Delivery:
    """One transfer's answer in a batch reply."""
    if outcome.error_reason:
        return Delivery(False, status_code(outcome.error_code), outcome.error_reason)
    return Delivery(True, state=outcome.state)
