"""A bank is trusted only for its own accounts, and a debit only for their owner.

A compromised bank (it holds its own genuine certificate) may list another
bank's accounts when it authenticates its customer: the gateway keeps only the
asked bank's. And the payer's bank checks, at the debit, that the account is
the customer's the gateway names: a gateway misled anyway cannot move money.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from strife.bank.ledger import ErrorKind, Ledger, LedgerError, Leg, Reason, TransferState
from strife.errors import from_rpc_error
from strife.gateway.tokens import TokenAuthority, load_or_create_key
from strife.rpc.channels import ChannelPool
from strife.security.identity import thumbprint_of_pem
from strife.security.tls import TlsMaterial
from strife.v1 import bank_pb2, bank_pb2_grpc, gateway_pb2, money_pb2

from .bank_fixtures import TIMEOUT_S
from .cluster_fixtures import Cluster, Customer, cluster
from .conftest import Pki
from .processes import ServiceProcess

ABORTED = gateway_pb2.PAYMENT_STATUS_ABORTED
ADA, BOB, CY = ("alpha", "ada-usd"), ("alpha", "bob-usd"), ("beta", "cy-usd")
FP = b"\x01" * 32


def key() -> str:
    return str(uuid.uuid4())


# ------------------------------------------------------------------ the ledger


def ledger() -> Ledger:
    book = Ledger()
    book.add_account(account_id="ada", customer_id="c-ada", currency="USD", balance_minor=100)
    book.add_account(account_id="bob", customer_id="c-bob", currency="USD", balance_minor=100)
    return book


def prepare(book: Ledger, tid: str, leg: Leg, account: str, customer: str) -> Any:
    return book.prepare(
        transfer_id=tid,
        coordinator="gw-1",
        leg=leg,
        account_id=account,
        amount_minor=10,
        currency="USD",
        fingerprint=FP,
        counterparty="beta/cy",
        customer_id=customer,
    )


def test_a_debit_for_another_customer_is_a_recorded_no() -> None:
    book = ledger()
    refused = prepare(book, "t-1", Leg.DEBIT, "ada", "c-bob")
    assert refused.transfer.state == TransferState.ABORTED
    assert refused.transfer.abort_reason == Reason.NOT_ACCOUNT_OWNER
    # Recorded: the same transfer id stays NO, whoever asks again.
    assert prepare(book, "t-1", Leg.DEBIT, "ada", "c-bob").replayed
    assert book.accounts["ada"].held_minor == 0
    book.check_invariants()

    assert prepare(book, "t-2", Leg.DEBIT, "ada", "c-ada").transfer.state == TransferState.PREPARED
    # A credit is anyone's to receive; and an unnamed customer is not checked.
    assert prepare(book, "t-3", Leg.CREDIT, "bob", "c-ada").transfer.state == (
        TransferState.PREPARED
    )
    assert prepare(book, "t-4", Leg.DEBIT, "bob", "").transfer.state == TransferState.PREPARED


def test_a_one_phase_transfer_needs_the_payer_to_own_the_source() -> None:
    book = ledger()
    outcome = book.process(
        transfer_id="t-1",
        coordinator="gw-1",
        from_account="ada",
        to_account="bob",
        amount_minor=10,
        currency="USD",
        fingerprint=FP,
        customer_id="c-bob",
    )
    assert outcome.transfer.abort_reason == Reason.NOT_ACCOUNT_OWNER
    assert (book.accounts["ada"].balance_minor, book.accounts["bob"].balance_minor) == (100, 100)


def test_the_refusal_is_permission_denied() -> None:
    from strife.bank.ledger import abort_error

    book = ledger()
    error = abort_error(prepare(book, "t-1", Leg.DEBIT, "ada", "c-bob").transfer)
    assert isinstance(error, LedgerError)
    assert (error.kind, error.reason) == (ErrorKind.PERMISSION_DENIED, Reason.NOT_ACCOUNT_OWNER)


# ------------------------------------------------------- through real processes


@pytest.fixture(scope="module")
def running(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(pki, tmp_path_factory.mktemp("trust")) as c:
        yield c


@pytest.fixture
async def pool(pki: Pki) -> AsyncIterator[ChannelPool]:
    async with ChannelPool(pki.identity("client", "default")) as p:
        yield p


async def test_payers_bank_refuses_a_debit_the_gateway_was_misled_into(
    pki: Pki, pool: ChannelPool, running: Cluster
) -> None:
    """A token (signed with the gateway's own key) that lists ada's account for
    another customer of alpha: the gateway lets the payment through, alpha does not."""
    ada = Customer(pool, running.gateways["gw-1"].address)
    await ada.login("ada")
    before = await ada.balance(*ADA)
    authority = TokenAuthority(load_or_create_key(running.root / "token.key"))
    evil = Customer(pool, running.gateways["gw-1"].address)
    client_cert = (pki.identity("client", "default") / "tls.crt").read_bytes()
    evil.token, _ = authority.issue(
        "c-eve", "alpha", ["alpha/ada-usd"], cert_sha256=thumbprint_of_pem(client_cert)
    )
    for target in (CY, BOB):  # two-phase, then one-phase (both legs at alpha)
        reply = await evil.pay(key(), ADA, target, 100)
        assert (reply.payment.status, reply.payment.abort_reason) == (
            ABORTED,
            "NOT_ACCOUNT_OWNER",
        )
        assert not reply.payment.abort_transient
    assert await ada.balance(*ADA) == before  # nothing moved, nothing held


class CompromisedBank(bank_pb2_grpc.BankServiceServicer):
    """Bank beta's genuine certificate, answering for accounts at alpha too."""

    async def AuthenticateCustomer(
        self,
        request: bank_pb2.AuthenticateCustomerRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.AuthenticateCustomerRequest, bank_pb2.AuthenticateCustomerResponse
        ],
    ) -> bank_pb2.AuthenticateCustomerResponse:
        accounts = [("beta", "evil-usd"), ADA]
        return bank_pb2.AuthenticateCustomerResponse(
            customer_id="c-ada",  # alpha's ada's id, to pass alpha's check as well
            accounts=[
                money_pb2.Account(
                    ref=money_pb2.AccountRef(bank=b, account_id=a),
                    customer_id="c-ada",
                    currency="USD",
                )
                for b, a in accounts
            ],
        )


@pytest.fixture
async def compromised_beta(pki: Pki) -> AsyncIterator[str]:
    server = grpc.aio.server()
    # AuthenticateCustomer only: the other methods answer UNIMPLEMENTED, as the base does.
    bank_pb2_grpc.add_BankServiceServicer_to_server(CompromisedBank(), server)  # type: ignore[abstract]
    creds = TlsMaterial.load(pki.identity("bank", "beta")).server_credentials()
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_gateway_keeps_only_the_asked_banks_accounts(
    pki: Pki, pool: ChannelPool, running: Cluster, compromised_beta: str, tmp_path: Path
) -> None:
    log = tmp_path / "gw-9.log"
    gateway = ServiceProcess(
        "strife-gateway",
        [
            "--name",
            "gw-9",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "gw-9.db"),
            "--certs",
            str(pki.identity("gateway", "gw-9")),
            "--grace",
            "1",
            "--token-key",
            str(tmp_path / "token.key"),
            f"--bank=alpha={running.banks['alpha'].address}",
            f"--bank=beta={compromised_beta}",
        ],
        log,
    ).start()
    try:
        evil = Customer(pool, gateway.address)
        reply = await evil.stub.Login(
            gateway_pb2.LoginRequest(username="evil", password="anything", bank="beta"),
            timeout=TIMEOUT_S,
        )
        evil.token = reply.access_token
        assert [(a.ref.bank, a.ref.account_id) for a in reply.accounts] == [("beta", "evil-usd")]
        ada = Customer(pool, running.gateways["gw-1"].address)
        await ada.login("ada")
        before = await ada.balance(*ADA)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await evil.pay(key(), ADA, BOB, 50_000)
        error = from_rpc_error(caught.value)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_ACCOUNT_OWNER",
        )
        assert await ada.balance(*ADA) == before
    finally:
        gateway.stop()
    assert "foreign_accounts_dropped" in log.read_text()
