"""When the coordinator answers: after the durable decision, with delivery after it.

The banks here are in-process fakes whose Commit can be held back, so the
tests can see exactly what the coordinator does while a bank has not yet
heard the decision. Everything else is real: the gateway's SQLite decision
log and the coordinator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest

from strife.gateway.coordinator import (
    CoordinatorConfig,
    PaymentCoordinator,
    TooManyInFlightError,
)
from strife.gateway.store import GatewayStore, PaymentRecord, PaymentState
from strife.v1 import bank_pb2, coordinator_pb2


class FakeBank:
    """Votes YES; holds Commit until `release` is set; counts what it heard."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.commits: list[str] = []
        self.prepares: list[str] = []
        self.aborts: list[str] = []
        self.batches: list[int] = []
        self.commit_calls = 0
        self.prepare_batches: list[int] = []
        self.votes = asyncio.Event()  # PrepareTransfers answers once set
        self.votes.set()

    async def Prepare(self, request: Any, **_call: Any) -> Any:
        self.prepares.append(request.transfer_id)
        return bank_pb2.PrepareResponse(state=bank_pb2.TRANSFER_STATE_PREPARED)

    async def Commit(self, request: Any, **_call: Any) -> Any:
        self.commit_calls += 1
        await self.release.wait()
        self.commits.append(request.transfer_id)
        return bank_pb2.CommitResponse()

    async def Abort(self, request: Any, **_call: Any) -> Any:
        self.aborts.append(request.transfer_id)
        return bank_pb2.AbortResponse()

    async def PrepareTransfers(self, request: Any, **_call: Any) -> Any:
        self.prepare_batches.append(len(request.prepares))
        await self.votes.wait()
        self.prepares += [p.transfer_id for p in request.prepares]
        outcomes = [
            bank_pb2.TransferOutcome(
                transfer_id=p.transfer_id, state=bank_pb2.TRANSFER_STATE_PREPARED
            )
            for p in request.prepares
        ]
        return bank_pb2.PrepareTransfersResponse(outcomes=outcomes)

    async def DecideTransfers(self, request: Any, **_call: Any) -> Any:
        self.batches.append(len(request.decisions))
        if any(d.commit for d in request.decisions):
            await self.release.wait()
        for d in request.decisions:
            (self.commits if d.commit else self.aborts).append(d.transfer_id)
        return bank_pb2.DecideTransfersResponse(
            outcomes=[
                bank_pb2.TransferOutcome(transfer_id=d.transfer_id) for d in request.decisions
            ]
        )


class FakeBanks:
    """Each bank on a server of its own, whose address is the bank's name."""

    def __init__(self) -> None:
        self.by_name = {"alpha": FakeBank(), "beta": FakeBank()}

    async def address(self, bank: str) -> str | None:
        return bank if bank in self.by_name else None

    def at(self, address: str) -> Any:
        return self.by_name[address]

    async def stub(self, bank: str) -> Any:
        return self.by_name.get(bank)


async def turns_until(condition: Callable[[], bool]) -> None:
    """Let the event loop run, a bounded number of turns, until `condition` holds;
    no wall-clock wait, so the in-process fakes decide the order, not timing."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def payment(n: int) -> PaymentRecord:
    return PaymentRecord(
        customer_id="c-ada",
        idempotency_key=f"key-{n:012d}",
        transfer_id=f"t-{n}",
        fingerprint=b"fp",
        state=PaymentState.PENDING,
        from_bank="alpha",
        from_account="ada-usd",
        to_bank="beta",
        to_account="cy-usd",
        amount_minor=100,
        currency="USD",
        description="",
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GatewayStore]:
    opened = await GatewayStore.open(tmp_path / "gw.db")
    yield opened
    await opened.close()


def coordinator(
    store: GatewayStore,
    banks: FakeBanks,
    reply_after: Literal["decision", "settled"],
    max_in_flight: int = 8,
) -> PaymentCoordinator:
    config = CoordinatorConfig(
        name="gw-1", reply_after=reply_after, max_in_flight=max_in_flight, decision_timeout_s=5
    )
    return PaymentCoordinator(config, store, banks)


async def test_reply_after_decision_does_not_wait_for_the_banks(store: GatewayStore) -> None:
    banks = FakeBanks()
    beta = banks.by_name["beta"]
    beta.release.clear()
    coord = coordinator(store, banks, "decision")

    result, joined = await asyncio.wait_for(coord.run(payment(1)), 5)

    assert result.state is PaymentState.COMMITTED and not joined
    assert beta.commits == []  # answered while beta has not heard COMMIT yet
    # The decision is on disk before the answer, so a restart would resend it.
    stored = store.by_transfer("t-1")
    assert stored is not None and stored.state is PaymentState.COMMITTED
    assert not stored.settled
    # A read of beta's account waits for the delivery (bounded); alpha's does not.
    assert await coord.delivered("alpha", "ada-usd", timeout_s=5)
    assert not await coord.delivered("beta", "cy-usd", timeout_s=0.05)
    beta.release.set()
    assert await coord.delivered("beta", "cy-usd", timeout_s=5)
    assert beta.commits == ["t-1"]
    await coord.close()
    stored = store.by_transfer("t-1")
    assert stored is not None and stored.settled


async def test_reply_after_settled_waits_for_every_bank(store: GatewayStore) -> None:
    banks = FakeBanks()
    banks.by_name["beta"].release.clear()
    coord = coordinator(store, banks, "settled")

    running = asyncio.ensure_future(coord.run(payment(2)))
    await turns_until(lambda: banks.by_name["beta"].commit_calls > 0)  # Commit held
    assert banks.by_name["beta"].commit_calls == 1
    assert not running.done()  # the answer waits for beta's acknowledgement

    banks.by_name["beta"].release.set()
    result, _ = await asyncio.wait_for(running, 5)
    assert result.state is PaymentState.COMMITTED
    assert banks.by_name["beta"].commits == ["t-2"]
    await coord.close()


async def test_undelivered_decisions_count_against_the_in_flight_bound(
    store: GatewayStore,
) -> None:
    banks = FakeBanks()
    banks.by_name["beta"].release.clear()
    coord = coordinator(store, banks, "decision", max_in_flight=2)
    await coord.run(payment(3))
    await coord.run(payment(4))

    with pytest.raises(TooManyInFlightError):
        await coord.run(payment(5))

    banks.by_name["beta"].release.set()
    assert await coord.delivered("beta", "cy-usd", timeout_s=5)
    await coord.close()
    result, _ = await coord.run(payment(5))  # room again once delivered
    assert result.state is PaymentState.COMMITTED
    await coord.close()


async def test_settler_leaves_decisions_being_delivered_alone(store: GatewayStore) -> None:
    banks = FakeBanks()
    beta = banks.by_name["beta"]
    beta.release.clear()
    coord = coordinator(store, banks, "decision")
    await coord.run(payment(6))

    # The record is unsettled on disk, but its delivery is still running: the
    # settler must not send a second COMMIT alongside it.
    assert await asyncio.wait_for(coord.settle_once(), 1)
    beta.release.set()
    await coord.close()
    assert beta.commits == ["t-6"]
    assert banks.by_name["alpha"].commits == ["t-6"]


@pytest.mark.parametrize("delivered_first", [False, True])
async def test_a_stale_listing_never_aborts_a_committed_payment(
    store: GatewayStore, delivered_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settler lists unsettled payments, then acts on them; a payment can be
    decided COMMIT in between. Acting on the listed PENDING state would abort at
    the banks a payment the client was told is COMMITTED."""
    banks = FakeBanks()
    beta = banks.by_name["beta"]
    beta.release.clear()
    coord = coordinator(store, banks, "decision")
    stale = payment(7)

    result, _ = await coord.run(stale)
    assert result.state is PaymentState.COMMITTED
    if delivered_first:
        beta.release.set()
        await coord.close()  # delivered and marked settled: nothing of it runs any more

    async def listing_from_before_the_decision(limit: int = 1000) -> list[PaymentRecord]:
        return [stale]  # PENDING, as read before the COMMIT was written

    monkeypatch.setattr(store, "unsettled", listing_from_before_the_decision)
    assert await asyncio.wait_for(coord.settle_once(), 5)
    assert await coord.decision("t-7") == coordinator_pb2.DECISION_COMMIT

    beta.release.set()
    await coord.close()
    assert banks.by_name["alpha"].aborts == beta.aborts == []
    assert banks.by_name["alpha"].commits == beta.commits == ["t-7"]
    stored = store.by_transfer("t-7")
    assert stored is not None and stored.state is PaymentState.COMMITTED


async def test_an_undecided_payment_nobody_runs_is_resolved_at_the_payers_bank(
    store: GatewayStore,
) -> None:
    """A PENDING record with no run here (left by a crash) is never decided ABORT on
    this gateway's word alone: another replica may have committed the transfer.
    An Abort goes to the payer's bank first; only its acknowledgement makes the
    abort final, and then the payee's bank hears it too."""
    banks = FakeBanks()
    coord = coordinator(store, banks, "decision")
    await store.insert_pending(payment(8))

    assert await coord.decision("t-8") == coordinator_pb2.DECISION_UNDECIDED
    assert banks.by_name["alpha"].aborts == []  # nothing decided before the bank said so
    await coord.close()
    assert await coord.decision("t-8") == coordinator_pb2.DECISION_ABORT
    assert await coord.settle_once()
    stored = store.by_transfer("t-8")
    assert stored is not None and stored.state is PaymentState.ABORTED and stored.settled
    assert stored.abort_transient
    assert banks.by_name["alpha"].aborts == banks.by_name["beta"].aborts == ["t-8"]


async def test_decisions_made_while_a_delivery_is_out_leave_together(store: GatewayStore) -> None:
    """One delivery call in flight per bank: what queues behind it goes as one batch."""
    banks = FakeBanks()
    beta = banks.by_name["beta"]
    beta.release.clear()
    coord = coordinator(store, banks, "decision", max_in_flight=16)
    for n in range(10, 15):
        result, _ = await coord.run(payment(n))
        assert result.state is PaymentState.COMMITTED

    # The first COMMIT is out alone and held; the next four wait behind it.
    assert beta.batches == [1] and beta.commits == []
    beta.release.set()
    assert await coord.delivered("beta", "cy-usd", timeout_s=5)
    await coord.close()
    assert beta.batches == [1, 4]
    assert sorted(beta.commits) == [f"t-{n}" for n in range(10, 15)]
    for n in range(10, 15):
        stored = store.by_transfer(f"t-{n}")
        assert stored is not None and stored.settled


async def test_prepares_queue_behind_one_call_and_keep_their_deadline(
    store: GatewayStore,
) -> None:
    banks = FakeBanks()
    beta = banks.by_name["beta"]
    beta.votes.clear()
    config = CoordinatorConfig(name="gw-1", max_in_flight=16, prepare_timeout_s=0.3)
    coord = PaymentCoordinator(config, store, banks)

    # Beta holds the first call: all three payments time out in prepare...
    results = await asyncio.gather(*(coord.run(payment(n)) for n in (20, 21, 22)))
    assert [r.state for r, _ in results] == [PaymentState.ABORTED] * 3
    assert {r.abort_reason for r, _ in results} == {"PREPARE_TIMEOUT"}
    assert beta.prepare_batches == [3]  # they left together: one call for three
    # ...and once beta answers, payments that wait behind one call go as a batch.
    beta.votes.set()
    await coord.close()
    beta.prepare_batches.clear()
    beta.votes.clear()
    first = asyncio.ensure_future(coord.run(payment(23)))
    await turns_until(lambda: bool(beta.prepare_batches))  # the first leaves alone
    assert beta.prepare_batches == [1]
    more = [asyncio.ensure_future(coord.run(payment(n))) for n in (24, 25)]
    beta.votes.set()
    done = await asyncio.gather(first, *more)
    assert [r.state for r, _ in done] == [PaymentState.COMMITTED] * 3
    assert beta.prepare_batches == [1, 2]
    await coord.close()


class OldBank(FakeBank):
    """A bank of an older version: no batch calls."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_attempts = 0

    def _unimplemented(self) -> grpc.aio.AioRpcError:
        self.batch_attempts += 1
        return grpc.aio.AioRpcError(
            grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no"
        )

    async def PrepareTransfers(self, request: Any, **_call: Any) -> Any:
        raise self._unimplemented()

    async def DecideTransfers(self, request: Any, **_call: Any) -> Any:
        raise self._unimplemented()


async def test_a_bank_without_batch_calls_gets_single_calls(store: GatewayStore) -> None:
    banks = FakeBanks()
    banks.by_name = {"alpha": OldBank(), "beta": OldBank()}
    coord = coordinator(store, banks, "decision")
    for n in (30, 31):
        result, _ = await coord.run(payment(n))
        assert result.state is PaymentState.COMMITTED
    await coord.close()
    for bank in banks.by_name.values():
        assert isinstance(bank, OldBank)
        assert bank.prepares == ["t-30", "t-31"] and bank.commits == ["t-30", "t-31"]
        assert bank.batch_attempts == 1  # asked once, then single calls only
