"""Payments end to end through a real gateway and two real banks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import grpc
import pytest

from strife.errors import from_rpc_error
from strife.rpc.channels import ChannelPool
from strife.v1 import gateway_pb2

from .cluster_fixtures import Cluster, Customer, cluster
from .conftest import Pki

COMMITTED = gateway_pb2.PAYMENT_STATUS_COMMITTED
ABORTED = gateway_pb2.PAYMENT_STATUS_ABORTED
ADA, BOB, EVE, CY = (
    ("alpha", "ada-usd"),
    ("alpha", "bob-usd"),
    ("alpha", "eve-usd"),
    ("beta", "cy-usd"),
)


def key() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def running(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(pki, tmp_path_factory.mktemp("cluster"), gateways=("gw-1", "gw-2")) as c:
        yield c


@pytest.fixture
async def pool(pki: Pki) -> AsyncIterator[ChannelPool]:
    async with ChannelPool(pki.identity("client", "default")) as p:
        yield p


async def customer(pool: ChannelPool, c: Cluster, username: str, gw: str = "gw-1") -> Customer:
    client = Customer(pool, c.gateways[gw].address)
    await client.login(username, "beta" if username == "cy" else "alpha")
    return client


async def expect_error(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert (error.code, error.reason) == (code, reason), error


async def test_cross_bank_payment_moves_exactly_the_amount(
    pool: ChannelPool, running: Cluster
) -> None:
    ada, cy = await customer(pool, running, "ada"), await customer(pool, running, "cy")
    ada0, cy0 = await ada.balance(*ADA), await cy.balance(*CY)
    reply = await ada.pay(key(), ADA, CY, 1234)
    assert (reply.payment.status, reply.replayed) == (COMMITTED, False)
    assert await ada.balance(*ADA) == (ada0[0] - 1234, 0, ada0[0] - 1234)
    assert await cy.balance(*CY) == (cy0[0] + 1234, 0, cy0[0] + 1234)
    debit = [e for e in await ada.history(*ADA) if e.transfer_id == reply.payment.transfer_id]
    credit = [e for e in await cy.history(*CY) if e.transfer_id == reply.payment.transfer_id]
    assert [e.amount.amount_minor for e in debit] == [-1234]
    assert [e.amount.amount_minor for e in credit] == [1234]
    assert (debit[0].counterparty, credit[0].counterparty) == ("beta/cy-usd", "alpha/ada-usd")


async def test_same_bank_payment_is_one_phase(pool: ChannelPool, running: Cluster) -> None:
    ada, bob = await customer(pool, running, "ada"), await customer(pool, running, "bob")
    ada0, bob0 = await ada.balance(*ADA), await bob.balance(*BOB)
    reply = await ada.pay(key(), ADA, BOB, 500)
    assert reply.payment.status == COMMITTED
    assert (await ada.balance(*ADA))[0] == ada0[0] - 500
    assert (await bob.balance(*BOB))[0] == bob0[0] + 500
    assert [
        e.amount.amount_minor
        for e in await bob.history(*BOB)
        if e.transfer_id == reply.payment.transfer_id
    ] == [500]


async def test_refusals_abort_and_leave_no_hold(pool: ChannelPool, running: Cluster) -> None:
    ada, eve, cy = [await customer(pool, running, n) for n in ("ada", "eve", "cy")]
    cy0, ada0, eve0 = await cy.balance(*CY), await ada.balance(*ADA), await eve.balance(*EVE)
    cases = [
        (eve, EVE, CY, eve0[2] + 1, "USD", "INSUFFICIENT_FUNDS"),
        (ada, ADA, ("beta", "nobody"), 10, "USD", "ACCOUNT_NOT_FOUND"),
        (ada, ("alpha", "ada-eur"), CY, 10, "EUR", "CURRENCY_MISMATCH"),
        (ada, ADA, CY, 2**63 - 1, "USD", "INSUFFICIENT_FUNDS"),
    ]
    for client, source, target, amount, currency, reason in cases:
        reply = await client.pay(key(), source, target, amount, currency)
        assert (reply.payment.status, reply.payment.abort_reason) == (ABORTED, reason)
        assert not reply.payment.abort_transient
    assert await cy.balance(*CY) == cy0
    assert await ada.balance(*ADA) == ada0
    assert await eve.balance(*EVE) == eve0
    assert (await ada.balance("alpha", "ada-eur"))[1] == 0


async def test_bad_input_is_invalid_argument(pool: ChannelPool, running: Cluster) -> None:
    ada = await customer(pool, running, "ada")
    for amount in (0, -100):
        await expect_error(
            ada.pay(key(), ADA, CY, amount), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT"
        )
    await expect_error(
        ada.pay(key(), ADA, CY, 1, "XXX"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURRENCY"
    )
    await expect_error(
        ada.pay("short", ADA, CY, 1), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IDEMPOTENCY_KEY"
    )
    await expect_error(
        ada.pay(key(), ADA, ADA, 1), grpc.StatusCode.INVALID_ARGUMENT, "SAME_ACCOUNT"
    )


async def test_fifty_concurrent_retries_debit_once(pool: ChannelPool, running: Cluster) -> None:
    ada = await customer(pool, running, "ada")
    before = await ada.balance(*ADA)
    k = key()
    replies = await asyncio.gather(*(ada.pay(k, ADA, CY, 77) for _ in range(50)))
    assert {r.payment.status for r in replies} == {COMMITTED}
    assert len({r.payment.transfer_id for r in replies}) == 1
    assert sum(not r.replayed for r in replies) == 1
    assert (await ada.balance(*ADA))[0] == before[0] - 77
    # Same key, different amount: refused, nothing moves.
    await expect_error(
        ada.pay(k, ADA, CY, 78), grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED"
    )
    # The same retry at another replica: still one debit.
    other = Customer(pool, running.gateways["gw-2"].address)
    other.token = ada.token  # replicas accept each other's tokens
    again = await other.pay(k, ADA, CY, 77)
    assert again.payment.status == COMMITTED
    assert again.payment.transfer_id == replies[0].payment.transfer_id
    assert (await ada.balance(*ADA))[0] == before[0] - 77
    status = await ada.stub.GetPayment(
        gateway_pb2.GetPaymentRequest(idempotency_key=k), timeout=5, metadata=ada.auth
    )
    assert status.payment.status == COMMITTED


async def test_aborted_is_final_for_its_key(pool: ChannelPool, running: Cluster) -> None:
    eve = await customer(pool, running, "eve")
    k = key()
    first = await eve.pay(k, EVE, BOB, 10**9)
    second = await eve.pay(k, EVE, BOB, 10**9)
    assert (first.payment.status, second.payment.status) == (ABORTED, ABORTED)
    assert second.replayed and second.payment.abort_reason == "INSUFFICIENT_FUNDS"


async def test_customers_reach_only_their_own_accounts(
    pool: ChannelPool, running: Cluster, pki: Pki
) -> None:
    ada = await customer(pool, running, "ada")
    await expect_error(ada.balance(*BOB), grpc.StatusCode.PERMISSION_DENIED, "NOT_ACCOUNT_OWNER")
    await expect_error(ada.history(*BOB), grpc.StatusCode.PERMISSION_DENIED, "NOT_ACCOUNT_OWNER")
    await expect_error(
        ada.pay(key(), BOB, ADA, 1), grpc.StatusCode.PERMISSION_DENIED, "NOT_ACCOUNT_OWNER"
    )
    header, payload, signature = ada.token.split(".")
    ada.token = f"{header}.{payload}.{signature[::-1]}"
    await expect_error(ada.balance(*ADA), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    ada.token = ""
    await expect_error(ada.balance(*ADA), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


async def test_expired_token_is_unauthenticated(pool: ChannelPool, running: Cluster) -> None:
    from strife.gateway.tokens import TokenAuthority, load_or_create_key

    authority = TokenAuthority(load_or_create_key(running.root / "token.key"), ttl_s=-1)
    token, _ = authority.issue("c-ada", "alpha", ["alpha/ada-usd"], cert_sha256="")
    ada = Customer(pool, running.gateways["gw-1"].address)
    ada.token = token
    await expect_error(ada.balance(*ADA), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


async def test_wrong_login_is_throttled(pool: ChannelPool, running: Cluster) -> None:
    stub = Customer(pool, running.gateways["gw-2"].address).stub
    codes = []
    for _ in range(7):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Login(
                gateway_pb2.LoginRequest(username="bob", password="nope", bank="alpha"), timeout=5
            )
        codes.append(from_rpc_error(caught.value))
    assert [e.reason for e in codes[:5]] == ["INVALID_CREDENTIALS"] * 5
    assert codes[-1].reason == "LOGIN_THROTTLED"
    assert codes[-1].retry_after_s is not None and codes[-1].retry_after_s > 0


async def test_client_certificates_cannot_call_banks_or_coordinators(
    pki: Pki, running: Cluster, tmp_path: Path
) -> None:
    from strife.v1 import bank_pb2, bank_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc

    async with ChannelPool(pki.identity("client", "default")) as p:
        bank = bank_pb2_grpc.BankServiceStub(p.get(running.banks["alpha"].address))
        await expect_error(
            bank.Commit(bank_pb2.CommitRequest(transfer_id="x", coordinator="gw-1"), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        )
        coord = coordinator_pb2_grpc.CoordinatorStub(p.get(running.gateways["gw-1"].address))
        await expect_error(
            coord.GetDecision(coordinator_pb2.GetDecisionRequest(transfer_id="x"), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        )


async def test_a_token_is_bound_to_the_client_certificate_it_was_issued_over(
    pki: Pki, pool: ChannelPool, running: Cluster
) -> None:
    ada = await customer(pool, running, "ada")
    before = await ada.balance(*ADA)  # the token is now in the verified-token cache
    async with ChannelPool(pki.identity("client", "mallory")) as other_pool:
        thief = Customer(other_pool, running.gateways["gw-1"].address)
        thief.token = ada.token
        await expect_error(
            thief.balance(*ADA), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_NOT_BOUND_TO_PEER"
        )
        await expect_error(
            thief.pay(key(), ADA, CY, 100),
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_NOT_BOUND_TO_PEER",
        )
    # Every replica checks it, and clients sharing the certificate share the token.
    async with ChannelPool(pki.identity("client", "default")) as same_cert:
        twin = Customer(same_cert, running.gateways["gw-2"].address)
        twin.token = ada.token
        assert await twin.balance(*ADA) == before
    assert await ada.balance(*ADA) == before
