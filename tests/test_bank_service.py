"""A real strife-bank process: customers, accounts, 2PC legs, one-phase, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterator

import grpc
import pytest

from strife.errors import from_rpc_error
from strife.rpc.channels import ChannelPool
from strife.v1 import bank_pb2

from .bank_fixtures import TIMEOUT_S, BankClient, bank_process, new_id, usd
from .conftest import Pki
from .processes import ServiceProcess


@pytest.fixture(scope="module")
def bank(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with bank_process(pki, tmp_path_factory.mktemp("bank")) as process:
        yield process


@pytest.fixture
async def gw(pki: Pki, bank: ServiceProcess) -> AsyncIterator[BankClient]:
    async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
        yield BankClient(pool, bank.address)


async def expect_error(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert (error.code, error.reason) == (code, reason), error


async def test_authenticate_customer(gw: BankClient) -> None:
    reply = await gw.stub.AuthenticateCustomer(
        bank_pb2.AuthenticateCustomerRequest(username="ada", password="pw-ada"), timeout=TIMEOUT_S
    )
    assert reply.customer_id == "c-ada"
    assert reply.display_name == "Ada"
    assert sorted(a.ref.account_id for a in reply.accounts) == ["ada-eur", "ada-usd"]
    assert {a.ref.bank for a in reply.accounts} == {"alpha"}
    for username, password in [("ada", "wrong"), ("nobody", "pw-ada"), ("cy", "pw-cy")]:
        await expect_error(
            gw.stub.AuthenticateCustomer(
                bank_pb2.AuthenticateCustomerRequest(username=username, password=password),
                timeout=TIMEOUT_S,
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )


async def test_validate_account(gw: BankClient) -> None:
    reply = await gw.stub.ValidateAccount(
        bank_pb2.ValidateAccountRequest(account_id="bob-usd", currency="USD"), timeout=TIMEOUT_S
    )
    assert (reply.account.customer_id, reply.account.currency) == ("c-bob", "USD")
    await expect_error(
        gw.stub.ValidateAccount(
            bank_pb2.ValidateAccountRequest(account_id="bob-usd", currency="EUR"),
            timeout=TIMEOUT_S,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CURRENCY_MISMATCH",
    )
    await expect_error(
        gw.stub.ValidateAccount(
            bank_pb2.ValidateAccountRequest(account_id="nope"), timeout=TIMEOUT_S
        ),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )


async def test_prepare_commit_moves_money_once(gw: BankClient) -> None:
    before = await gw.balance("bob-usd")
    tid = new_id()
    first = await gw.prepare(tid, "bob-usd", 700)
    assert (first.state, first.replayed) == (bank_pb2.TRANSFER_STATE_PREPARED, False)
    assert await gw.balance("bob-usd") == (before[0], before[1] + 700, before[2] - 700)
    again = await gw.prepare(tid, "bob-usd", 700)
    assert (again.state, again.replayed) == (bank_pb2.TRANSFER_STATE_PREPARED, True)
    done = await gw.commit(tid)
    assert done.state == bank_pb2.TRANSFER_STATE_COMMITTED
    assert (await gw.commit(tid)).replayed
    assert await gw.balance("bob-usd") == (before[0] - 700, before[1], before[2] - 700)
    late = await gw.prepare(tid, "bob-usd", 700)
    assert (late.state, late.replayed) == (bank_pb2.TRANSFER_STATE_COMMITTED, True)


async def test_credit_leg_and_abort(gw: BankClient) -> None:
    before = await gw.balance("eve-usd")
    tid = new_id()
    await gw.prepare(tid, "eve-usd", 300, debit=False)
    assert await gw.balance("eve-usd") == before  # a pending credit is not spendable
    aborted = await gw.abort(tid)
    assert aborted.state == bank_pb2.TRANSFER_STATE_ABORTED
    assert (await gw.abort(tid)).replayed
    await expect_error(gw.commit(tid), grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_ABORTED")
    assert await gw.balance("eve-usd") == before


async def test_abort_of_unknown_id_refuses_a_late_prepare(gw: BankClient) -> None:
    tid = new_id()
    assert (await gw.abort(tid)).state == bank_pb2.TRANSFER_STATE_ABORTED
    await expect_error(
        gw.prepare(tid, "ada-usd", 100), grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_ABORTED"
    )


async def test_refusals_are_recorded_and_replayed(gw: BankClient) -> None:
    tid = new_id()
    await expect_error(
        gw.prepare(tid, "eve-usd", 1), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )
    # Money arrives, but the refused id stays refused: it can never turn into a YES.
    credit = new_id()
    await gw.prepare(credit, "eve-usd", 500, debit=False)
    await gw.commit(credit)
    await expect_error(
        gw.prepare(tid, "eve-usd", 1), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )
    await expect_error(
        gw.prepare(new_id(), "ada-usd", 1, currency="EUR"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CURRENCY_MISMATCH",
    )
    await expect_error(
        gw.prepare(new_id(), "nope", 1), grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"
    )


async def test_bad_amounts_and_reused_ids(gw: BankClient) -> None:
    for amount in (0, -5):
        await expect_error(
            gw.prepare(new_id(), "ada-usd", amount),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_AMOUNT",
        )
    tid = new_id()
    await gw.prepare(tid, "ada-usd", 100)
    await expect_error(
        gw.prepare(tid, "ada-usd", 101), grpc.StatusCode.ALREADY_EXISTS, "TRANSFER_ID_REUSED"
    )
    await expect_error(
        gw.prepare(tid, "ada-usd", 100, fingerprint=b"other"),
        grpc.StatusCode.ALREADY_EXISTS,
        "TRANSFER_ID_REUSED",
    )
    await gw.abort(tid)
    await expect_error(gw.commit(new_id()), grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")


async def test_one_phase_transfer(gw: BankClient) -> None:
    ada, bob = await gw.balance("ada-usd"), await gw.balance("bob-usd")
    request = bank_pb2.ProcessTransactionRequest(
        transfer_id=new_id(),
        coordinator="gw-1",
        from_account_id="ada-usd",
        to_account_id="bob-usd",
        amount=usd(1234),
        fingerprint=b"fp",
    )
    reply = await gw.stub.ProcessTransaction(request, timeout=TIMEOUT_S)
    assert (reply.state, reply.replayed) == (bank_pb2.TRANSFER_STATE_COMMITTED, False)
    replay = await gw.stub.ProcessTransaction(request, timeout=TIMEOUT_S)
    assert replay.replayed
    assert (await gw.balance("ada-usd"))[0] == ada[0] - 1234
    assert (await gw.balance("bob-usd"))[0] == bob[0] + 1234
    request.transfer_id, request.amount.amount_minor = new_id(), 10**12
    await expect_error(
        gw.stub.ProcessTransaction(request, timeout=TIMEOUT_S),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )


async def test_history_pages_newest_first(gw: BankClient) -> None:
    ids = []
    for amount in (1, 2, 3, 4, 5):
        tid = new_id()
        await gw.prepare(tid, "eve-usd", amount, debit=False)
        await gw.commit(tid)
        ids.append(tid)
    seen: list[str] = []
    token = ""
    while True:
        page = await gw.stub.GetTransactionHistory(
            bank_pb2.BankHistoryRequest(account_id="eve-usd", page_size=2, page_token=token),
            timeout=TIMEOUT_S,
        )
        assert len(page.entries) <= 2
        seen += [e.transfer_id for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert seen[:5] == ids[::-1]
    assert len(seen) == len(set(seen))
    await expect_error(
        gw.stub.GetTransactionHistory(
            bank_pb2.BankHistoryRequest(account_id="ada-usd", page_token="garbage"),
            timeout=TIMEOUT_S,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_only_gateways_run_transfers(pki: Pki, bank: ServiceProcess) -> None:
    async with ChannelPool(pki.identity("client", "mallory")) as pool:
        client = BankClient(pool, bank.address)
        await expect_error(
            client.prepare(new_id(), "ada-usd", 1),
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        )
    async with ChannelPool(pki.identity("gateway", "gw-2")) as pool:
        impostor = BankClient(pool, bank.address, coordinator="gw-1")
        await expect_error(
            impostor.prepare(new_id(), "ada-usd", 1),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_COORDINATOR",
        )


async def test_another_coordinator_cannot_touch_a_prepared_transfer(
    pki: Pki, gw: BankClient, bank: ServiceProcess
) -> None:
    tid = new_id()
    await gw.prepare(tid, "ada-usd", 10)
    async with ChannelPool(pki.identity("gateway", "gw-2")) as pool:
        other = BankClient(pool, bank.address, coordinator="gw-2")
        await expect_error(
            other.prepare(tid, "ada-usd", 10), grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS"
        )
        await expect_error(other.abort(tid), grpc.StatusCode.FAILED_PRECONDITION, "NOT_COORDINATOR")
    await gw.abort(tid)


async def test_decisions_in_one_call_are_each_applied_or_refused(gw: BankClient) -> None:
    before = await gw.balance("bob-usd")
    commit_me, abort_me, already_aborted = new_id(), new_id(), new_id()
    await gw.prepare(commit_me, "bob-usd", 40)
    await gw.prepare(abort_me, "bob-usd", 2)
    await gw.prepare(already_aborted, "bob-usd", 3)
    await gw.abort(already_aborted)

    def decide(*pairs: tuple[str, bool]) -> bank_pb2.DecideTransfersRequest:
        return bank_pb2.DecideTransfersRequest(
            coordinator=gw.coordinator,
            decisions=[bank_pb2.TransferDecision(transfer_id=t, commit=c) for t, c in pairs],
        )

    reply = await gw.stub.DecideTransfers(
        decide((commit_me, True), (abort_me, False), (already_aborted, True)), timeout=TIMEOUT_S
    )
    first, second, third = reply.outcomes
    assert (first.transfer_id, first.state, first.error_reason) == (
        commit_me,
        bank_pb2.TRANSFER_STATE_COMMITTED,
        "",
    )
    assert (second.state, second.error_reason) == (bank_pb2.TRANSFER_STATE_ABORTED, "")
    # A COMMIT of an aborted transfer is refused as Commit would refuse it, alone.
    assert (third.transfer_id, third.error_reason) == (already_aborted, "TRANSFER_ABORTED")
    assert third.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert await gw.balance("bob-usd") == (before[0] - 40, before[1], before[2] - 40)

    again = await gw.stub.DecideTransfers(decide((commit_me, True)), timeout=TIMEOUT_S)
    assert again.outcomes[0].replayed  # a resent decision moves nothing
    assert await gw.balance("bob-usd") == (before[0] - 40, before[1], before[2] - 40)

    for bad in (decide(), decide(("", True)), decide((commit_me, True), (commit_me, True))):
        await expect_error(
            gw.stub.DecideTransfers(bad, timeout=TIMEOUT_S),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
        )


async def test_only_the_named_coordinator_decides_in_batches(
    pki: Pki, gw: BankClient, bank: ServiceProcess
) -> None:
    tid = new_id()
    await gw.prepare(tid, "ada-usd", 5)
    async with ChannelPool(pki.identity("gateway", "gw-2")) as pool:
        impostor = BankClient(pool, bank.address, coordinator="gw-1")
        request = bank_pb2.DecideTransfersRequest(
            coordinator="gw-1", decisions=[bank_pb2.TransferDecision(transfer_id=tid, commit=True)]
        )
        await expect_error(
            impostor.stub.DecideTransfers(request, timeout=TIMEOUT_S),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_COORDINATOR",
        )
        other = BankClient(pool, bank.address, coordinator="gw-2")
        request = bank_pb2.DecideTransfersRequest(
            coordinator="gw-2", decisions=[bank_pb2.TransferDecision(transfer_id=tid, commit=True)]
        )
        reply = await other.stub.DecideTransfers(request, timeout=TIMEOUT_S)
        assert reply.outcomes[0].error_reason == "NOT_COORDINATOR"
    await gw.abort(tid)
