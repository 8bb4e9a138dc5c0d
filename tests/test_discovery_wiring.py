"""Banks and a gateway that know each other only through the balancer."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from strife.errors import StrifeError
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient
from strife.v1 import gateway_pb2

from .bank_fixtures import write_seed
from .cluster_fixtures import Customer
from .conftest import Pki
from .processes import ServiceProcess


async def test_payment_through_registry_only(pki: Pki, tmp_path: Path) -> None:
    seed = write_seed(tmp_path / "seed.json")
    with ExitStack() as stack:
        balancer = ServiceProcess(
            "strife-balancer",
            [
                "--listen",
                "127.0.0.1:0",
                "--certs",
                str(pki.identity("balancer", "balancer")),
                "--heartbeat-interval",
                "0.2",
                "--lease-ttl",
                "1",
            ],
            tmp_path / "balancer.log",
        ).start()
        stack.callback(balancer.stop)
        via = ["--balancer", balancer.address]
        for bank in ("alpha", "beta"):
            process = ServiceProcess(
                "strife-bank",
                [
                    "--name",
                    bank,
                    "--db",
                    str(tmp_path / f"{bank}.db"),
                    "--init",
                    "--seed",
                    str(seed),
                    "--certs",
                    str(pki.identity("bank", bank)),
                    *via,
                ],
                tmp_path / f"{bank}.log",
            ).start()
            stack.callback(process.stop)
        gateway = ServiceProcess(
            "strife-gateway",
            [
                "--name",
                "gw-1",
                "--db",
                str(tmp_path / "gw.db"),
                "--certs",
                str(pki.identity("gateway", "gw-1")),
                "--token-key",
                str(tmp_path / "token.key"),
                *via,
            ],
            tmp_path / "gw.log",
        ).start()
        stack.callback(gateway.stop)

        async with ChannelPool(pki.identity("client", "default")) as pool:
            registry = BalancerClient(pool, balancer.address)
            deadline = time.monotonic() + 10

            async def registered(service: str) -> set[str]:
                try:
                    return {s.instance for s in await registry.list(service)}
                except StrifeError:  # nothing registered yet
                    return set()

            while await registered("bank") != {"alpha", "beta"} or not await registered("gateway"):
                assert time.monotonic() < deadline, "banks and gateway never registered"
                await asyncio.sleep(0.05)
            assert await registry.best("gateway") == gateway.address
            ada = Customer(pool, gateway.address)
            await ada.login("ada")
            reply = await ada.pay(str(uuid.uuid4()), ("alpha", "ada-usd"), ("beta", "cy-usd"), 99)
            assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
