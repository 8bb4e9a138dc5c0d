"""Two-phase commit with presumed abort, the gateway as coordinator.

Each payment is a persisted state machine with recovery points (see
`GatewayStore`): the PENDING record before any bank is called, the decision
(COMMIT force-written before any bank hears it), then `settled` once every
bank acknowledged. A crash between points resumes from the last one:
undecided -> abort everywhere; decided but unsettled -> resend the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import grpc

from strife.errors import Reason, from_rpc_error
from strife.faults import failpoint
from strife.gateway.banks import Banks
from strife.gateway.decisions import BankBatcher, Delivery, status_code
from strife.gateway.store import GatewayStore, PaymentRecord, PaymentState
from strife.observability.logging import get_logger
from strife.v1 import bank_pb2, coordinator_pb2, money_pb2

_log = get_logger("strife.gateway.coordinator")

_TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Reasons after which a new attempt under a new key may well succeed.
TRANSIENT_REASONS = frozenset(
    {Reason.BANK_UNAVAILABLE, Reason.PREPARE_TIMEOUT, Reason.TRANSFER_ABORTED,
     Reason.COORDINATOR_RESTARTED}
)  # fmt: skip


class Vote(Enum):
    YES = "YES"
    COMMITTED = "COMMITTED"  # the id was already committed (by this or another replica)
    NO = "NO"
    IN_PROGRESS = "IN_PROGRESS"  # another coordinator holds the id PREPARED
    TRANSIENT = "TRANSIENT"


@dataclass(frozen=True, slots=True)
class Ballot:
    vote: Vote
    reason: str = ""


# A decision for one bank's leg: (bank, transfer id, commit). Batched per
# server, so the bank travels with it.
Decision = tuple[str, str, bool]
_NO_SUCH_BANK = Delivery(False, grpc.StatusCode.NOT_FOUND, Reason.BANK_NOT_FOUND)


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
    # background (the design's rule 6); "settled": answer after every bank acked.
    reply_after: Literal["decision", "settled"] = "decision"


class _Owned:
    """Marker: a run in this process is deciding the transfer right now."""


_OWNED = _Owned()


class InProgressError(Exception):
    """Another coordinator owns this transfer id; the caller should ask again later."""


class TooManyInFlightError(Exception):
    pass


class FingerprintMismatchError(Exception):
    """The same idempotency key is running for a different request."""


def legs_of(record: PaymentRecord) -> list[LegSpec]:
    return [
        LegSpec(record.from_bank, bank_pb2.LEG_DEBIT, record.from_account,
                f"{record.to_bank}/{record.to_account}"),
        LegSpec(record.to_bank, bank_pb2.LEG_CREDIT, record.to_account,
                f"{record.from_bank}/{record.from_account}"),
    ]  # fmt: skip


class PaymentCoordinator:
    def __init__(self, config: CoordinatorConfig, store: GatewayStore, banks: Banks) -> None:
        self.config = config
        self.store = store
        self.banks = banks
        self.in_flight: dict[str, tuple[PaymentRecord, asyncio.Future[PaymentRecord]]] = {}
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

    # ------------------------------------------------------------- the run

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
        result, _ = await self.run(existing)  # an unresolved one-phase payment
        return result, True


    async def run(self, record: PaymentRecord) -> tuple[PaymentRecord, bool]:
        """Coordinate a payment to its decision. Concurrent calls for the same id
        share one run; the second element says the caller joined one."""
        running = self.in_flight.get(record.transfer_id)
        if running is not None:
            if running[0].fingerprint != record.fingerprint:
                raise FingerprintMismatchError(record.transfer_id)
            return await asyncio.shield(running[1]), True
        busy = len(self.in_flight) + len(self._delivering)
        if busy >= self.config.max_in_flight:
            raise TooManyInFlightError(f"{busy} payments in flight")
        future: asyncio.Future[PaymentRecord] = asyncio.get_running_loop().create_future()
        self.in_flight[record.transfer_id] = (record, future)
        try:
            result = await self._run(record)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: joiners re-raise it, nobody else must
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            del self.in_flight[record.transfer_id]

    def running(self, transfer_id: str) -> PaymentRecord | None:
        entry = self.in_flight.get(transfer_id)
        return entry[0] if entry else None

    async def _run(self, record: PaymentRecord) -> PaymentRecord:
        if record.created_at_ms:  # already recorded (an unresolved one-phase payment)
            return await self._one_phase(record)
        # The recovery point commits while the banks are asked, not before: a
        # crash that loses it is harmless under presumed abort, and waiting for
        # it first would put one more fsync on every payment's path.
        recorded = self.store.insert_pending(record)
        try:
            if record.one_phase:
                return await self._one_phase(record)
            return await self._two_phase(record, recorded)
        finally:
            await recorded

    async def _two_phase(self, record: PaymentRecord, recorded: Awaitable[None]) -> PaymentRecord:
        legs = legs_of(record)
        started = time.perf_counter()
        ballots = await asyncio.gather(*(self._prepare(record, leg) for leg in legs))
        await recorded  # durable before any decision, so recovery knows every undecided one
        votes = [b.vote for b in ballots]
        _log.debug("votes", transfer_id=record.transfer_id, votes=[v.value for v in votes],
                   prepare_ms=round((time.perf_counter() - started) * 1000, 3))  # fmt: skip

        failpoint("gateway.before_decision")
        if all(v is Vote.YES for v in votes):
            decided = record.decided(PaymentState.COMMITTED)
            await self.store.decide(decided)  # the commit point
            failpoint("gateway.after_commit_decision")
            await self._decided(decided, legs)
            return decided
        if all(v is Vote.COMMITTED for v in votes):
            decided = record.decided(PaymentState.COMMITTED)
            await self.store.decide(decided, settled=True)
            return decided
        if any(v in (Vote.IN_PROGRESS, Vote.COMMITTED) for v in votes):
            # Another replica owns (part of) this id: release only what we hold.
            ours = [leg for leg, b in zip(legs, ballots, strict=True) if b.vote is Vote.YES]
            await self._send_all(record, ours, commit=False)
            await self.store.forget(record.transfer_id)
            raise InProgressError(record.transfer_id)

        reason, transient = _abort_reason(ballots)
        decided = record.decided(PaymentState.ABORTED, reason, transient)
        await self.store.decide(decided)
        await self._decided(decided, legs)
        return decided

    async def _one_phase(self, record: PaymentRecord) -> PaymentRecord:
        stub = await self.banks.stub(record.from_bank)
        ballot = Ballot(Vote.TRANSIENT, Reason.BANK_UNAVAILABLE)
        if stub is not None:
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
                    ),
                    timeout=self.config.prepare_timeout_s,
                )
                ballot = Ballot(Vote.COMMITTED)
            except grpc.aio.AioRpcError as exc:
                ballot = _ballot_from_error(exc)
        if ballot.vote is Vote.COMMITTED:
            decided = record.decided(PaymentState.COMMITTED)
            await self.store.decide(decided, settled=True)
            return decided
        if ballot.vote is Vote.NO:
            decided = record.decided(PaymentState.ABORTED, ballot.reason, _transient(ballot))
            await self.store.decide(decided, settled=True)
            return decided
        # Unknown outcome: an Abort either tombstones the id or tells us it committed.
        resolved = await self._resolve_one_phase(record)
        if resolved is None:
            return record  # still PENDING; the settler keeps trying
        return resolved

    async def _resolve_one_phase(self, record: PaymentRecord) -> PaymentRecord | None:
        stub = await self.banks.stub(record.from_bank)
        if stub is None:
            return None
        try:
            await stub.Abort(
                bank_pb2.AbortRequest(
                    bank=record.from_bank,
                    transfer_id=record.transfer_id,
                    coordinator=self.config.name,
                ),
                timeout=self.config.decision_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if error.reason == Reason.TRANSFER_COMMITTED:
                decided = record.decided(PaymentState.COMMITTED)
            elif exc.code() in _TRANSIENT_CODES:
                return None
            else:
                _log.error(
                    "one_phase_unresolvable", transfer_id=record.transfer_id, error=str(error)
                )
                return None
        else:
            decided = record.decided(PaymentState.ABORTED, Reason.BANK_UNAVAILABLE, True)
        await self.store.decide(decided, settled=True)
        self._notify(decided)
        return decided

    # --------------------------------------------------------- phase calls

    async def _prepare(self, record: PaymentRecord, leg: LegSpec) -> Ballot:
        request = bank_pb2.PrepareRequest(
            bank=leg.bank,
            transfer_id=record.transfer_id,
            coordinator=self.config.name,
            leg=leg.leg,
            account_id=leg.account_id,
            amount=money_pb2.Money(amount_minor=record.amount_minor, currency=record.currency),
            fingerprint=record.fingerprint,
            counterparty=leg.counterparty,
        )
        try:
            # The deadline covers the wait behind an earlier batch as well.
            async with asyncio.timeout(self.config.prepare_timeout_s):
                address = await self.banks.address(leg.bank)
                if address is None:
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
        stub = self.banks.at(address)
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
        stub = self.banks.at(address)
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
        if address is None:
            delivery = _NO_SUCH_BANK
        else:
            delivery = await self._decisions.send(address, (bank, record.transfer_id, commit))
        return self._acked(record.transfer_id, bank, commit, delivery)

    async def _send_one(self, bank: str, transfer_id: str, commit: bool) -> Delivery:
        stub = await self.banks.stub(bank)
        if stub is None:
            return _NO_SUCH_BANK
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
            return Delivery(False, exc.code(), from_rpc_error(exc).reason)
        return Delivery(True)

    def _acked(self, transfer_id: str, bank: str, commit: bool, delivery: Delivery) -> bool:
        if delivery.acked:
            return True
        if not commit and delivery.reason == Reason.NOT_COORDINATOR:
            return True  # that leg is another coordinator's to release, not ours
        level = "warning" if delivery.code in _TRANSIENT_CODES else "error"
        getattr(_log, level)(
            "decision_not_delivered", transfer_id=transfer_id, bank=bank,
            commit=commit, code=delivery.code.name, reason=delivery.reason,
        )  # fmt: skip
        return False

    # ----------------------------------------------------------- decisions

    async def decision(self, transfer_id: str) -> coordinator_pb2.Decision.ValueType:
        """What a participant in doubt is told. Never ABORT while COMMIT is possible."""
        record = await self._resolve_undecided(transfer_id)
        if isinstance(record, _Owned):
            return coordinator_pb2.DECISION_UNDECIDED
        if record is not None and record.state == PaymentState.COMMITTED:
            return coordinator_pb2.DECISION_COMMIT
        if record is not None and record.state == PaymentState.PENDING:
            return coordinator_pb2.DECISION_UNDECIDED  # a one-phase payment, still resolving
        return coordinator_pb2.DECISION_ABORT  # decided ABORT, or unknown (presumed abort)

    # ------------------------------------------------------------ recovery

    async def recover(self) -> int:
        """At start: undecided -> ABORT; everything unsettled is resent by the settler."""
        count = 0
        for record in await self.store.unsettled(limit=1_000_000):
            if record.state == PaymentState.PENDING and not record.one_phase:
                await self._resolve_undecided(record.transfer_id)
                count += 1
        if count:
            _log.info("recovered_undecided", aborted=count)
        return count

    async def _resolve_undecided(self, transfer_id: str) -> PaymentRecord | _Owned | None:
        """The current record (or _OWNED while a run here has it); a two-phase one
        left PENDING by no run here is first
        decided ABORT, durably (the restart rule).

        A listing read earlier may predate the decision: a payment can be decided
        COMMIT between the read and now. So the check of ownership and the fresh
        read happen with no `await` between them, and the takeover registers as
        the transfer's run before yielding, so no run can start beside it.
        """
        if transfer_id in self.in_flight:
            return _OWNED
        record = self.store.by_transfer(transfer_id)
        if record is None or record.state != PaymentState.PENDING or record.one_phase:
            return record
        future: asyncio.Future[PaymentRecord] = asyncio.get_running_loop().create_future()
        self.in_flight[transfer_id] = (record, future)
        try:
            decided = record.decided(PaymentState.ABORTED, Reason.COORDINATOR_RESTARTED, True)
            await self.store.decide(decided)
            self._notify(decided)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        else:
            future.set_result(decided)
            return decided
        finally:
            del self.in_flight[transfer_id]

    async def settle_forever(self) -> None:
        """Resend decisions until every bank has acknowledged them (capped backoff)."""
        delay = self.config.settle_interval_s
        while True:
            await asyncio.sleep(delay)
            try:
                done = await self.settle_once()
            except Exception as exc:  # never let the settler die; log and keep going
                _log.error("settler_failed", error=repr(exc))
                done = False
            cap_s = max(self.config.settle_backoff_max_s, self.config.settle_interval_s)
            delay = self.config.settle_interval_s if done else min(cap_s, delay * 2)

    async def settle_once(self) -> bool:
        """One pass over unsettled payments; True when nothing is left to deliver."""
        listed = await self.store.unsettled()
        results = await asyncio.gather(*(self._settle(r.transfer_id) for r in listed))
        return all(results)

    async def _settle(self, transfer_id: str) -> bool:
        if transfer_id in self._delivering:
            return True  # decided; its delivery is under way
        record = await self._resolve_undecided(transfer_id)
        if isinstance(record, _Owned) or record is None or record.settled:
            return True  # its own run or delivery finishes it, or it is done
        if record.state == PaymentState.PENDING:  # one-phase: ask the bank what happened
            return await self._exclusively(record, self._resolve_one_phase) is not None
        legs = legs_of(record) if not record.one_phase else []
        if await self._send_all(record, legs, commit=record.state == PaymentState.COMMITTED):
            await self.store.settle(record.transfer_id)
            _log.info("settled", transfer_id=record.transfer_id, state=str(record.state))
            return True
        return False

    async def _exclusively(
        self,
        record: PaymentRecord,
        resolve: Callable[[PaymentRecord], Awaitable[PaymentRecord | None]],
    ) -> PaymentRecord | None:
        """Run `resolve` as the transfer's one run: a request for the same payment
        joins it instead of racing it (the caller checked nobody owns it)."""
        transfer_id = record.transfer_id
        future: asyncio.Future[PaymentRecord] = asyncio.get_running_loop().create_future()
        self.in_flight[transfer_id] = (record, future)
        try:
            resolved = await resolve(record)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        else:
            future.set_result(resolved or record)
            return resolved
        finally:
            del self.in_flight[transfer_id]

    # ---------------------------------------------------------------- misc

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
        """Let deliveries finish (each is bounded by the decision timeout); the
        settler resends whatever they could not deliver after the next start."""
        for _ in range(3):  # a delivery spawns its settle write: a second pass
            tasks = [*self._delivering.values(), *self._background]
            if not tasks:
                return
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task


def _ballot_from_error(exc: grpc.aio.AioRpcError) -> Ballot:
    return _ballot(exc.code(), from_rpc_error(exc).reason)


def _ballot(code: grpc.StatusCode, reason: str) -> Ballot:
    if reason == Reason.REQUEST_IN_PROGRESS:
        return Ballot(Vote.IN_PROGRESS)
    if code in _TRANSIENT_CODES:
        timed_out = code is grpc.StatusCode.DEADLINE_EXCEEDED
        return Ballot(
            Vote.TRANSIENT, Reason.PREPARE_TIMEOUT if timed_out else Reason.BANK_UNAVAILABLE
        )
    return Ballot(Vote.NO, reason or Reason.INTERNAL)


def _failed(exc: grpc.aio.AioRpcError) -> Delivery:
    return Delivery(False, exc.code(), from_rpc_error(exc).reason)


def _delivery(outcome: Any) -> Delivery:
    """One transfer's answer in a batch reply."""
    if outcome.error_reason:
        return Delivery(False, status_code(outcome.error_code), outcome.error_reason)
    return Delivery(True, state=outcome.state)


def _transient(ballot: Ballot) -> bool:
    return ballot.vote is Vote.TRANSIENT or ballot.reason in TRANSIENT_REASONS


def _abort_reason(ballots: list[Ballot]) -> tuple[str, bool]:
    """A business refusal (NO) explains an abort better than a timeout does."""
    refusals = [b for b in ballots if b.vote is Vote.NO]
    chosen = refusals[0] if refusals else next(b for b in ballots if b.vote is Vote.TRANSIENT)
    return chosen.reason, _transient(chosen)
