"""Two-phase commit under failures: stalled banks, and crashes at the worst moments."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import grpc
import pytest

from strife.rpc.channels import ChannelPool
from strife.v1 import gateway_pb2

from .bank_fixtures import BankClient
from .cluster_fixtures import Cluster, Customer, cluster
from .conftest import Pki
from .support import until

ADA, CY = ("alpha", "ada-usd"), ("beta", "cy-usd")
DEADLINE_S = 20.0


async def balances(
    pki: Pki, c: Cluster, banks: tuple[str, ...] = ("alpha", "beta")
) -> dict[str, tuple[int, int, int]]:
    """Read the accounts straight from the banks, as an operator would."""
    accounts = {"alpha": ("ada", "ada-usd"), "beta": ("cy", "cy-usd")}
    result = {}
    async with ChannelPool(pki.identity("admin", "admin")) as pool:
        for bank in banks:
            owner, account = accounts[bank]
            result[owner] = await BankClient(pool, c.banks[bank].address).balance(account)
    return result


async def login(pool: ChannelPool, c: Cluster) -> Customer:
    ada = Customer(pool, c.gateways["gw-1"].address)
    await ada.login("ada")
    return ada


@pytest.mark.slow
async def test_stalled_bank_aborts_within_the_prepare_timeout(pki: Pki, tmp_path: Path) -> None:
    with cluster(pki, tmp_path, gateway_extra=["--prepare-timeout", "0.5"]) as c:
        async with ChannelPool(pki.identity("client", "default")) as pool:
            ada = await login(pool, c)
            before = await balances(pki, c)
            c.banks["beta"].signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                reply = await ada.pay(str(uuid.uuid4()), ADA, CY, 300)
                elapsed = time.monotonic() - started
                assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_ABORTED
                # A deadline on an open connection, or a connection that never
                # completed its handshake: either way the bank did not answer in time.
                assert reply.payment.abort_reason in {"PREPARE_TIMEOUT", "BANK_UNAVAILABLE"}
                assert reply.payment.abort_transient
                assert elapsed < 0.5 + 1.0 + 1.0  # prepare timeout + abort delivery + slack
                # Read through the gateway, which waits for its own abort to reach alpha.
                assert await ada.balance(*ADA) == before["ada"]  # released
            finally:
                c.banks["beta"].signal(signal.SIGCONT)

            async def beta_unchanged_and_settled() -> bool:
                now = await balances(pki, c)
                settled = any(e.get("event") == "settled" for e in c.gateways["gw-1"].log_events())
                return now == before and settled

            await until(beta_unchanged_and_settled, "the late abort to reach beta")


async def test_crash_after_commit_decision_commits_everywhere(pki: Pki, tmp_path: Path) -> None:
    env = {"STRIFE_FAILPOINTS": "gateway.after_commit_decision"}
    with cluster(pki, tmp_path, gateway_env=env) as c:
        async with ChannelPool(pki.identity("client", "default")) as pool:
            ada = await login(pool, c)
            before = await balances(pki, c)
            k = str(uuid.uuid4())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ada.pay(k, ADA, CY, 400)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            held = await balances(pki, c)
            assert held["ada"] == (before["ada"][0], 400, before["ada"][2] - 400)
            c.restart_gateway("gw-1")

            async def committed() -> bool:
                now = await balances(pki, c)
                return now["ada"][:2] == (before["ada"][0] - 400, 0) and now["cy"][0] == (
                    before["cy"][0] + 400
                )

            await until(committed, "both banks to commit after the restart")
            ada = await login(pool, c)
            status = await ada.stub.GetPayment(
                gateway_pb2.GetPaymentRequest(idempotency_key=k), timeout=5, metadata=ada.auth
            )
            assert status.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
            replay = await ada.pay(k, ADA, CY, 400)
            assert replay.replayed and replay.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED


async def test_crash_before_decision_aborts_everywhere(pki: Pki, tmp_path: Path) -> None:
    env = {"STRIFE_FAILPOINTS": "gateway.before_decision"}
    with cluster(pki, tmp_path, gateway_env=env) as c:
        async with ChannelPool(pki.identity("client", "default")) as pool:
            ada = await login(pool, c)
            before = await balances(pki, c)
            k = str(uuid.uuid4())
            with pytest.raises(grpc.aio.AioRpcError):
                await ada.pay(k, ADA, CY, 250)
            assert (await balances(pki, c))["ada"][1] == 250  # held while in doubt
            c.restart_gateway("gw-1")

            async def released() -> bool:
                return await balances(pki, c) == before

            await until(released, "the holds to be released")
            ada = await login(pool, c)
            replay = await ada.pay(k, ADA, CY, 250)
            assert replay.payment.status == gateway_pb2.PAYMENT_STATUS_ABORTED
            assert replay.payment.abort_reason == "COORDINATOR_RESTARTED"
            assert replay.payment.abort_transient


async def test_bank_killed_after_yes_learns_commit_from_the_coordinator(
    pki: Pki, tmp_path: Path
) -> None:
    # The settler waits a minute, so only the bank's own resolver can finish this.
    with cluster(
        pki,
        tmp_path,
        gateway_extra=["--settle-interval", "60"],
        bank_extra=["--in-doubt-timeout", "0.3"],
        bank_env={"beta": {"STRIFE_FAILPOINTS": "bank.before_commit"}},
    ) as c:
        async with ChannelPool(pki.identity("client", "default")) as pool:
            ada = await login(pool, c)
            before = await balances(pki, c)
            reply = await ada.pay(str(uuid.uuid4()), ADA, CY, 600)
            # COMMIT was decided; alpha has it, beta died on receiving it.
            assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
            assert c.banks["beta"].proc is not None and c.banks["beta"].proc.wait(10) == 75
            beta = c.restart_bank("beta")

            async def committed() -> bool:
                return (await balances(pki, c))["cy"][0] == before["cy"][0] + 600

            await until(committed, "beta to resolve the in-doubt transfer")
            resolved = [e for e in beta.log_events() if e.get("event") == "in_doubt_resolved"]
            assert [e["decision"] for e in resolved] == ["COMMIT"]
            assert (await balances(pki, c))["ada"][:2] == (before["ada"][0] - 600, 0)
