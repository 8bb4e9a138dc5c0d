"""One strife-bank process serving two banks: routing by `bank`, one transfer id
with a leg at each, refusals for banks not served here, and the CLI's limits."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from strife.rpc.channels import ChannelPool
from strife.v1 import bank_pb2

from .bank_fixtures import (
    COLUMNS,
    TIMEOUT_S,
    BankClient,
    bank_host_process,
    bank_process,
    new_id,
    usd,
)
from .conftest import Pki
from .processes import BIN, ServiceProcess
from .test_bank_service import expect_error

# A second seed file: --seed is repeatable, and each bank loads its rows from all.
EXTRA_SEED = [("beta", "c-dan", "dan", "Dan", "pw-dan", "dan-usd", "USD", "5.00")]


@pytest.fixture(scope="module")
def host(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("host")
    extra = tmp / "extra.json"
    extra.write_text(json.dumps([dict(zip(COLUMNS, row, strict=True)) for row in EXTRA_SEED]))
    with bank_host_process(pki, tmp, ["alpha", "beta"], "--seed", str(extra)) as process:
        yield process
    assert process.stop() == 0  # every bank's store closed cleanly


@pytest.fixture(scope="module")
def single(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with bank_process(pki, tmp_path_factory.mktemp("single")) as process:
        yield process


@pytest.fixture
async def pool(pki: Pki) -> AsyncIterator[ChannelPool]:
    async with ChannelPool(pki.identity("gateway", "gw-1")) as channels:
        yield channels


def prepare(tid: str, bank: str, account: str, amount_minor: int, *, debit: bool) -> Any:
    return bank_pb2.PrepareRequest(
        transfer_id=tid,
        coordinator="gw-1",
        bank=bank,
        account_id=account,
        amount=usd(amount_minor),
        leg=bank_pb2.LEG_DEBIT if debit else bank_pb2.LEG_CREDIT,
        fingerprint=b"fp",
        counterparty="elsewhere",
    )


def decide(*items: tuple[str, str, bool]) -> Any:
    return bank_pb2.DecideTransfersRequest(
        coordinator="gw-1",
        decisions=[bank_pb2.TransferDecision(transfer_id=t, bank=b, commit=c) for t, b, c in items],
    )


async def newest_entry(client: BankClient, account: str) -> Any:
    page = await client.stub.GetTransactionHistory(
        bank_pb2.BankHistoryRequest(bank=client.bank, account_id=account, page_size=1),
        timeout=TIMEOUT_S,
    )
    return page.entries[0]


async def test_reads_go_to_the_named_bank(pool: ChannelPool, host: ServiceProcess) -> None:
    alpha = BankClient(pool, host.address, bank="alpha")
    beta = BankClient(pool, host.address, bank="beta")
    assert (await alpha.balance("ada-usd"))[0] == 100_000
    assert (await beta.balance("cy-usd"))[0] == 1_000
    assert (await beta.balance("dan-usd"))[0] == 500  # from the second seed file
    reply = await beta.stub.GetAccountBalance(
        bank_pb2.GetAccountBalanceRequest(bank="beta", account_id="cy-usd"), timeout=TIMEOUT_S
    )
    assert reply.balance.account.bank == "beta"
    # Each bank knows only its own accounts and customers.
    await expect_error(beta.balance("ada-usd"), grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    await expect_error(
        alpha.stub.ValidateAccount(
            bank_pb2.ValidateAccountRequest(bank="alpha", account_id="cy-usd"), timeout=TIMEOUT_S
        ),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )
    login = await beta.stub.AuthenticateCustomer(
        bank_pb2.AuthenticateCustomerRequest(bank="beta", username="cy", password="pw-cy"),
        timeout=TIMEOUT_S,
    )
    assert [a.ref.bank for a in login.accounts] == ["beta"]
    await expect_error(
        alpha.stub.AuthenticateCustomer(
            bank_pb2.AuthenticateCustomerRequest(bank="alpha", username="cy", password="pw-cy"),
            timeout=TIMEOUT_S,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )


async def test_one_transfer_id_with_a_leg_at_each_bank(
    pool: ChannelPool, host: ServiceProcess
) -> None:
    alpha = BankClient(pool, host.address, bank="alpha")
    beta = BankClient(pool, host.address, bank="beta")
    ada, cy = await alpha.balance("ada-usd"), await beta.balance("cy-usd")
    tid = new_id()
    votes = await alpha.stub.PrepareTransfers(
        bank_pb2.PrepareTransfersRequest(
            prepares=[
                prepare(tid, "alpha", "ada-usd", 2_500, debit=True),
                prepare(tid, "beta", "cy-usd", 2_500, debit=False),
            ]
        ),
        timeout=TIMEOUT_S,
    )
    assert [(o.transfer_id, o.state, o.error_reason) for o in votes.outcomes] == [
        (tid, bank_pb2.TRANSFER_STATE_PREPARED, ""),
    ] * 2
    assert await alpha.balance("ada-usd") == (ada[0], ada[1] + 2_500, ada[2] - 2_500)
    assert await beta.balance("cy-usd") == cy  # a pending credit is not spendable yet

    done = await alpha.stub.DecideTransfers(
        decide((tid, "alpha", True), (tid, "beta", True)), timeout=TIMEOUT_S
    )
    assert [(o.state, o.error_reason) for o in done.outcomes] == [
        (bank_pb2.TRANSFER_STATE_COMMITTED, ""),
    ] * 2
    assert await alpha.balance("ada-usd") == (ada[0] - 2_500, ada[1], ada[2] - 2_500)
    assert await beta.balance("cy-usd") == (cy[0] + 2_500, cy[1], cy[2] + 2_500)
    debit, credit = await newest_entry(alpha, "ada-usd"), await newest_entry(beta, "cy-usd")
    assert (debit.transfer_id, debit.amount.amount_minor, debit.account.bank) == (
        tid,
        -2_500,
        "alpha",
    )
    assert (credit.transfer_id, credit.amount.amount_minor, credit.account.bank) == (
        tid,
        2_500,
        "beta",
    )

    # Once per bank, not twice at one bank.
    await expect_error(
        alpha.stub.DecideTransfers(
            decide((tid, "alpha", True), (tid, "alpha", True)), timeout=TIMEOUT_S
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )


async def test_an_item_for_a_bank_not_hosted_is_refused_alone(
    pool: ChannelPool, host: ServiceProcess
) -> None:
    alpha = BankClient(pool, host.address, bank="alpha")
    beta = BankClient(pool, host.address, bank="beta")
    bob, dan = await alpha.balance("bob-usd"), await beta.balance("dan-usd")
    tid, elsewhere, unnamed = new_id(), new_id(), new_id()
    votes = await alpha.stub.PrepareTransfers(
        bank_pb2.PrepareTransfersRequest(
            prepares=[
                prepare(tid, "alpha", "bob-usd", 100, debit=True),
                prepare(elsewhere, "gamma", "bob-usd", 100, debit=True),
                prepare(unnamed, "", "bob-usd", 100, debit=True),
                prepare(tid, "beta", "dan-usd", 100, debit=False),
            ]
        ),
        timeout=TIMEOUT_S,
    )
    assert [(o.transfer_id, o.state, o.error_reason, o.error_code) for o in votes.outcomes] == [
        (tid, bank_pb2.TRANSFER_STATE_PREPARED, "", 0),
        (elsewhere, 0, "BANK_NOT_FOUND", grpc.StatusCode.NOT_FOUND.value[0]),
        (unnamed, 0, "BANK_REQUIRED", grpc.StatusCode.INVALID_ARGUMENT.value[0]),
        (tid, bank_pb2.TRANSFER_STATE_PREPARED, "", 0),
    ]
    done = await alpha.stub.DecideTransfers(
        decide((tid, "alpha", True), (elsewhere, "gamma", True), (tid, "beta", True)),
        timeout=TIMEOUT_S,
    )
    assert [(o.state, o.error_reason) for o in done.outcomes] == [
        (bank_pb2.TRANSFER_STATE_COMMITTED, ""),
        (0, "BANK_NOT_FOUND"),
        (bank_pb2.TRANSFER_STATE_COMMITTED, ""),
    ]
    assert (await alpha.balance("bob-usd"))[0] == bob[0] - 100
    assert (await beta.balance("dan-usd"))[0] == dan[0] + 100


async def test_a_host_of_several_banks_needs_the_bank_named(
    pool: ChannelPool, host: ServiceProcess
) -> None:
    unnamed = BankClient(pool, host.address)
    await expect_error(
        unnamed.balance("ada-usd"), grpc.StatusCode.INVALID_ARGUMENT, "BANK_REQUIRED"
    )
    await expect_error(
        unnamed.prepare(new_id(), "ada-usd", 1), grpc.StatusCode.INVALID_ARGUMENT, "BANK_REQUIRED"
    )
    await expect_error(
        BankClient(pool, host.address, bank="gamma").commit(new_id()),
        grpc.StatusCode.NOT_FOUND,
        "BANK_NOT_FOUND",
    )
    hosted = [e for e in host.log_events() if e.get("event") == "banks_hosted"]
    assert [e["banks"] for e in hosted] == [["alpha", "beta"]]


async def test_a_single_bank_server_refuses_other_banks(
    pool: ChannelPool, single: ServiceProcess
) -> None:
    other = BankClient(pool, single.address, bank="other")
    before = await BankClient(pool, single.address).balance("ada-usd")
    assert await BankClient(pool, single.address, bank="alpha").balance("ada-usd") == before
    await expect_error(other.balance("ada-usd"), grpc.StatusCode.NOT_FOUND, "BANK_NOT_FOUND")
    # A prepare sent to the wrong server never applies here.
    await expect_error(
        other.prepare(new_id(), "ada-usd", 1), grpc.StatusCode.NOT_FOUND, "BANK_NOT_FOUND"
    )
    tid = new_id()
    votes = await other.stub.PrepareTransfers(
        bank_pb2.PrepareTransfersRequest(
            prepares=[
                prepare(tid, "other", "ada-usd", 7, debit=True),
                prepare(tid, "", "ada-usd", 7, debit=True),
            ]
        ),
        timeout=TIMEOUT_S,
    )
    assert [(o.state, o.error_reason) for o in votes.outcomes] == [
        (0, "BANK_NOT_FOUND"),
        (bank_pb2.TRANSFER_STATE_PREPARED, ""),
    ]
    # "" and "alpha" are the same bank here: one transfer id once, not twice.
    await expect_error(
        other.stub.DecideTransfers(
            decide((tid, "", False), (tid, "alpha", False)), timeout=TIMEOUT_S
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    done = await other.stub.DecideTransfers(decide((tid, "alpha", False)), timeout=TIMEOUT_S)
    assert done.outcomes[0].state == bank_pb2.TRANSFER_STATE_ABORTED
    assert await BankClient(pool, single.address).balance("ada-usd") == before


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--bank", "alpha", "--bank", "beta", "--db", "x.db"], "--db"),
        (["--bank", "alpha", "--bank", "alpha"], "listed twice"),
    ],
)
def test_cli_refuses_what_several_banks_cannot_mean(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    result = subprocess.run(
        [str(BIN / "strife-bank"), "--name", "east", "--insecure", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert complaint in result.stderr
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "data").exists()
