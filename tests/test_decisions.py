"""Bank calls batched per bank server, with several banks behind one address.

The bank servers here are in-process fakes that route every item by its
`bank` field, the way a server hosting several banks does, and can hold
their batch calls so the tests decide what queues behind one in flight.
Everything else is real: the coordinator, its batcher and the gateway's
SQLite decision log.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import grpc

from strife.gateway.coordinator import CoordinatorConfig, PaymentCoordinator
from strife.gateway.decisions import BankBatcher, Delivery
from strife.gateway.store import GatewayStore, PaymentState
from strife.v1 import bank_pb2

from .test_coordinator_delivery import payment, turns_until
from .test_coordinator_delivery import store as store  # the fixture, used by name

NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


class FakeHost:
    """One bank server hosting several banks: routes each item by its `bank`.

    A prepare for an account its bank does not have is refused (NO); one for a
    bank it does not host gets BANK_NOT_FOUND. Batch calls wait for `prepares_open`
    / `decisions_open`; `calls` records each batch as (bank, transfer id) pairs."""

    def __init__(self, accounts: dict[str, set[str]]) -> None:
        self.accounts = accounts
        self.prepares_open = asyncio.Event()
        self.prepares_open.set()
        self.decisions_open = asyncio.Event()
        self.decisions_open.set()
        self.prepare_calls: list[list[tuple[str, str]]] = []
        self.decide_calls: list[list[tuple[str, str, bool]]] = []
        self.single: list[tuple[str, str, str]] = []  # (method, bank, transfer id)

    def _refusal(self, bank: str, account_id: str) -> str:
        if bank not in self.accounts:
            return "BANK_NOT_FOUND"
        return "" if account_id in self.accounts[bank] else "ACCOUNT_NOT_FOUND"

    async def PrepareTransfers(self, request: Any, **_call: Any) -> Any:
        self.prepare_calls.append([(p.bank, p.transfer_id) for p in request.prepares])
        await self.prepares_open.wait()
        outcomes = []
        for p in request.prepares:
            refusal = self._refusal(p.bank, p.account_id)
            outcomes.append(
                bank_pb2.TransferOutcome(
                    transfer_id=p.transfer_id, error_reason=refusal, error_code=NOT_FOUND
                )
                if refusal
                else bank_pb2.TransferOutcome(
                    transfer_id=p.transfer_id, state=bank_pb2.TRANSFER_STATE_PREPARED
                )
            )
        return bank_pb2.PrepareTransfersResponse(outcomes=outcomes)

    async def DecideTransfers(self, request: Any, **_call: Any) -> Any:
        self.decide_calls.append([(d.bank, d.transfer_id, d.commit) for d in request.decisions])
        await self.decisions_open.wait()
        return bank_pb2.DecideTransfersResponse(
            outcomes=[
                bank_pb2.TransferOutcome(
                    transfer_id=d.transfer_id,
                    state=bank_pb2.TRANSFER_STATE_COMMITTED
                    if d.commit
                    else bank_pb2.TRANSFER_STATE_ABORTED,
                )
                for d in request.decisions
            ]
        )

    async def Prepare(self, request: Any, **_call: Any) -> Any:
        self.single.append(("Prepare", request.bank, request.transfer_id))
        return bank_pb2.PrepareResponse(state=bank_pb2.TRANSFER_STATE_PREPARED)

    async def Commit(self, request: Any, **_call: Any) -> Any:
        self.single.append(("Commit", request.bank, request.transfer_id))
        return bank_pb2.CommitResponse(state=bank_pb2.TRANSFER_STATE_COMMITTED)

    async def Abort(self, request: Any, **_call: Any) -> Any:
        self.single.append(("Abort", request.bank, request.transfer_id))
        return bank_pb2.AbortResponse(state=bank_pb2.TRANSFER_STATE_ABORTED)

    async def ProcessTransaction(self, request: Any, **_call: Any) -> Any:
        self.single.append(("ProcessTransaction", request.bank, request.transfer_id))
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "lost"
        )


class OldHost(FakeHost):
    """A server of an older version: no batch calls."""

    def __init__(self, accounts: dict[str, set[str]]) -> None:
        super().__init__(accounts)
        self.batch_attempts = 0

    async def PrepareTransfers(self, request: Any, **_call: Any) -> Any:
        self.batch_attempts += 1
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no"
        )

    DecideTransfers = PrepareTransfers


class Directory:
    """`Banks` over fake hosts: bank -> address -> host; counts address lookups."""

    def __init__(self, addresses: dict[str, str], hosts: dict[str, FakeHost]) -> None:
        self.addresses = addresses
        self.hosts = hosts
        self.lookups = 0

    async def address(self, bank: str) -> str | None:
        self.lookups += 1
        return self.addresses.get(bank)

    def at(self, address: str) -> Any:
        return self.hosts[address]

    async def stub(self, bank: str) -> Any:
        address = await self.address(bank)
        return None if address is None else self.at(address)


ACCOUNTS = {"alpha": {"ada-usd"}, "beta": {"cy-usd"}}


def coordinator(store: GatewayStore, banks: Directory) -> PaymentCoordinator:
    config = CoordinatorConfig(name="gw-1", max_in_flight=16, decision_timeout_s=5)
    return PaymentCoordinator(config, store, banks)


# ------------------------------------------------------------- the batcher


async def test_batcher_lines_are_per_address_and_answers_per_item() -> None:
    gates = {"host-1": asyncio.Event(), "host-2": asyncio.Event()}
    calls: list[tuple[str, list[str]]] = []

    async def call(line: str, items: list[str]) -> list[Delivery]:
        calls.append((line, list(items)))
        await gates[line].wait()
        return [Delivery(item.startswith("ok"), state=n) for n, item in enumerate(items)]

    batcher: BankBatcher[str] = BankBatcher(call)
    sent = 0

    async def send(line: str, item: str) -> Delivery:
        nonlocal sent
        sent += 1  # `send` queues the item before it first yields
        return await batcher.send(line, item)

    first = [asyncio.ensure_future(send(h, f"ok-{h}")) for h in ("host-1", "host-2")]
    await turns_until(lambda: len(calls) == 2)  # two lines: both calls out at once
    queued = [asyncio.ensure_future(send("host-1", item)) for item in ("ok-a", "no-b", "ok-c")]
    await turns_until(lambda: sent == 5)
    gates["host-1"].set()
    gates["host-2"].set()
    await asyncio.gather(*first)
    answers = await asyncio.gather(*queued)

    assert calls == [
        ("host-1", ["ok-host-1"]),
        ("host-2", ["ok-host-2"]),
        ("host-1", ["ok-a", "no-b", "ok-c"]),  # queued behind the first: one call
    ]
    assert [(a.acked, a.state) for a in answers] == [(True, 0), (False, 1), (True, 2)]


# ------------------------------------------- two banks behind one address


async def test_prepares_for_two_banks_at_one_server_leave_in_one_call(
    store: GatewayStore,
) -> None:
    host = FakeHost(ACCOUNTS)
    banks = Directory({"alpha": "host-1", "beta": "host-1"}, {"host-1": host})
    coord = coordinator(store, banks)
    host.prepares_open.clear()

    first = asyncio.ensure_future(coord.run(payment(1)))
    await turns_until(lambda: len(host.prepare_calls) == 1)
    # Both legs of one payment, one per bank, travel together: the same id twice.
    assert host.prepare_calls == [[("alpha", "t-1"), ("beta", "t-1")]]

    refused = replace(payment(3), to_account="nobody-usd")  # beta says NO
    later = [asyncio.ensure_future(coord.run(r)) for r in (payment(2), refused)]
    await turns_until(lambda: banks.lookups == 6)  # every prepare is queued
    host.prepares_open.set()
    results = [r for r, _ in await asyncio.gather(first, *later)]
    await coord.close()

    assert len(host.prepare_calls) == 2
    assert sorted(host.prepare_calls[1]) == [
        ("alpha", "t-2"),
        ("alpha", "t-3"),
        ("beta", "t-2"),
        ("beta", "t-3"),
    ]
    # Each payment got its own items' answers out of the shared batch.
    assert [(r.transfer_id, r.state, r.abort_reason) for r in results] == [
        ("t-1", PaymentState.COMMITTED, ""),
        ("t-2", PaymentState.COMMITTED, ""),
        ("t-3", PaymentState.ABORTED, "ACCOUNT_NOT_FOUND"),
    ]
    decided = {d for call in host.decide_calls for d in call}
    # beta refused t-3 and recorded it ABORTED: only alpha's hold needs the abort.
    assert decided == {
        ("alpha", "t-1", True),
        ("beta", "t-1", True),
        ("alpha", "t-2", True),
        ("beta", "t-2", True),
        ("alpha", "t-3", False),
    }


async def test_decisions_for_two_banks_at_one_server_leave_in_one_call(
    store: GatewayStore,
) -> None:
    host = FakeHost(ACCOUNTS)
    banks = Directory({"alpha": "host-1", "beta": "host-1"}, {"host-1": host})
    coord = coordinator(store, banks)
    host.decisions_open.clear()

    result, _ = await coord.run(payment(10))  # answered; its COMMITs are out, held
    assert result.state is PaymentState.COMMITTED
    await turns_until(lambda: len(host.decide_calls) == 1)
    assert host.decide_calls == [[("alpha", "t-10", True), ("beta", "t-10", True)]]

    committed, _ = await coord.run(payment(11))
    aborted, _ = await coord.run(replace(payment(12), from_account="nobody-usd"))
    assert (committed.state, aborted.state) == (PaymentState.COMMITTED, PaymentState.ABORTED)
    # 3 payments x 2 prepares, and 2 + 2 + 1 decisions: alpha refused t-12 and
    # recorded it, so only beta hears its abort.
    await turns_until(lambda: banks.lookups == 11)
    assert len(host.decide_calls) == 1  # the rest wait behind the held call
    host.decisions_open.set()
    await coord.close()

    assert len(host.decide_calls) == 2
    assert sorted(host.decide_calls[1]) == [
        ("alpha", "t-11", True),
        ("beta", "t-11", True),
        ("beta", "t-12", False),
    ]
    for tid in ("t-10", "t-11", "t-12"):
        stored = store.by_transfer(tid)
        assert stored is not None and stored.settled, tid


async def test_two_servers_are_two_lines(store: GatewayStore) -> None:
    one, two = FakeHost(ACCOUNTS), FakeHost(ACCOUNTS)
    banks = Directory({"alpha": "host-1", "beta": "host-2"}, {"host-1": one, "host-2": two})
    coord = coordinator(store, banks)
    one.prepares_open.clear()
    two.prepares_open.clear()

    running = asyncio.ensure_future(coord.run(payment(20)))
    await turns_until(lambda: bool(one.prepare_calls and two.prepare_calls))  # both out
    one.prepares_open.set()
    two.prepares_open.set()
    result, _ = await running
    await coord.close()

    assert result.state is PaymentState.COMMITTED
    assert (one.prepare_calls, two.prepare_calls) == ([[("alpha", "t-20")]], [[("beta", "t-20")]])
    assert one.decide_calls == [[("alpha", "t-20", True)]]
    assert two.decide_calls == [[("beta", "t-20", True)]]


async def test_a_bank_without_an_address_is_answered_without_queuing(
    store: GatewayStore,
) -> None:
    host = FakeHost(ACCOUNTS)
    banks = Directory({"alpha": "host-1"}, {"host-1": host})
    coord = coordinator(store, banks)

    result, _ = await coord.run(replace(payment(30), to_bank="gamma"))
    await coord.close()

    assert (result.state, result.abort_reason) == (PaymentState.ABORTED, "BANK_UNAVAILABLE")
    assert result.abort_transient
    assert host.prepare_calls == [[("alpha", "t-30")]]
    assert host.decide_calls == [[("alpha", "t-30", False)]]  # gamma's Abort is not sent
    stored = store.by_transfer("t-30")
    assert stored is not None and not stored.settled  # the settler keeps trying gamma


async def test_the_single_call_fallback_is_per_server(store: GatewayStore) -> None:
    """A server answering UNIMPLEMENTED is asked once, whichever of its banks the
    call was for; the single calls name their bank."""
    host = OldHost(ACCOUNTS)
    banks = Directory({"alpha": "host-1", "beta": "host-1"}, {"host-1": host})
    coord = coordinator(store, banks)
    for n in (40, 41):
        result, _ = await coord.run(payment(n))
        assert result.state is PaymentState.COMMITTED
    await coord.close()

    assert host.batch_attempts == 1  # not again for the decisions, nor for beta
    for method in ("Prepare", "Commit"):
        assert sorted(c for c in host.single if c[0] == method) == [
            (method, "alpha", "t-40"),
            (method, "alpha", "t-41"),
            (method, "beta", "t-40"),
            (method, "beta", "t-41"),
        ]


async def test_a_one_phase_payment_names_its_bank(store: GatewayStore) -> None:
    host = FakeHost({"alpha": {"ada-usd", "bob-usd"}})
    banks = Directory({"alpha": "host-1", "beta": "host-1"}, {"host-1": host})
    coord = coordinator(store, banks)

    # ProcessTransaction's answer is lost; the Abort that resolves it names alpha too.
    result, _ = await coord.run(replace(payment(50), to_bank="alpha", to_account="bob-usd"))
    await coord.close()

    assert (result.state, result.abort_reason) == (PaymentState.ABORTED, "BANK_UNAVAILABLE")
    assert host.single == [("ProcessTransaction", "alpha", "t-50"), ("Abort", "alpha", "t-50")]
