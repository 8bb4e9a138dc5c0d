"""A gateway paying both ways between a plain bank and a replicated one, a replica faulty.

Real processes throughout: plain banks alpha and beta, a gateway configured
with `--bank vault=bft:GROUP.toml`, and the four replicas of vault, one of
them answering every request with a wrong result, or the first primary
silent (the group changes view under the first payment). Every payment is
right at both banks, and the money that left one is the money that reached
the other.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from strife.bft.bank_client import ReplicatedBank
from strife.bft.group import write_signing_key
from strife.rpc.channels import ChannelPool
from strife.v1 import bank_pb2, gateway_pb2

from ..cluster_fixtures import Customer, cluster
from ..conftest import Pki
from ..support import until
from .replicated import BANK, replica_group


@pytest.mark.parametrize(("replica", "behaviour"), [(1, "wrong-results"), (0, "silent")])
async def test_payments_with_a_replicated_bank_are_right_despite_a_faulty_replica(
    pki: Pki, tmp_path: Path, replica: int, behaviour: str
) -> None:
    with replica_group(pki, tmp_path / "vault", byzantine={replica: behaviour}) as group:
        key = write_signing_key(tmp_path / "gw-1.bft.key", group.client_keys["gateway/gw-1"])
        assert key is group.client_keys["gateway/gw-1"]
        extra = [
            f"--bank={BANK}=bft:{group.group_file}",
            "--bft-signing-key", str(tmp_path / "gw-1.bft.key"),
            "--prepare-timeout", "5",
        ]  # fmt: skip
        (tmp_path / "cluster").mkdir()
        with cluster(pki, tmp_path / "cluster", gateway_extra=extra) as c:
            async with (
                ChannelPool(pki.identity("client", "default")) as customers,
                group.pool("admin", "tester") as admin,
            ):
                vault = group.bank(admin, "admin/tester")
                ada = Customer(customers, c.gateways["gw-1"].address)
                await ada.login("ada", "alpha")
                ada0 = (await ada.balance("alpha", "ada-usd"))[0]
                ann0 = await _vault_balance(vault)
                reply = await ada.pay(
                    str(uuid.uuid4()), ("alpha", "ada-usd"), (BANK, "ann-usd"), 777
                )
                assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
                assert (await ada.balance("alpha", "ada-usd"))[0] == ada0 - 777

                async def credited() -> bool:
                    return await _vault_balance(vault) == ann0 + 777

                await until(credited, "the credit to land at the replicated bank")
                refused = await ada.pay(
                    str(uuid.uuid4()), ("alpha", "ada-usd"), (BANK, "nobody"), 1
                )
                assert refused.payment.status == gateway_pb2.PAYMENT_STATUS_ABORTED

                # And out of it: a customer of the replicated bank logs in there.
                ann = Customer(customers, c.gateways["gw-1"].address)
                with pytest.raises(grpc.aio.AioRpcError) as wrong:
                    await ann.stub.Login(
                        gateway_pb2.LoginRequest(username="ann", password="nope", bank=BANK),
                        timeout=20,
                    )
                assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED
                login = await ann.stub.Login(
                    gateway_pb2.LoginRequest(username="ann", password="pw-ann", bank=BANK),
                    timeout=20,
                )
                ann.token = login.access_token
                back = await ann.pay(str(uuid.uuid4()), (BANK, "ann-usd"), ("alpha", "ada-usd"), 77)
                assert back.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED

                async def returned() -> bool:
                    alpha = (await ada.balance("alpha", "ada-usd"))[0]
                    return alpha == ada0 - 700 and await _vault_balance(vault) == ann0 + 700

                await until(returned, "the payment out of the replicated bank to land at alpha")


async def _vault_balance(vault: ReplicatedBank) -> int:
    reply = await vault.GetAccountBalance(
        bank_pb2.GetAccountBalanceRequest(bank=BANK, account_id="ann-usd"), timeout=20.0
    )
    return reply.balance.balance.amount_minor
