"""Policies over three real gateways: round robin spreads, pick first sticks and fails over."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from strife.errors import StrifeError
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient
from strife.v1 import gateway_pb2

from .cluster_fixtures import Customer, cluster, free_port
from .conftest import Pki
from .processes import ServiceProcess

GATEWAYS = ("gw-1", "gw-2", "gw-3")
PAYMENTS = 90


async def test_round_robin_spreads_and_pick_first_fails_over(pki: Pki, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with ExitStack() as stack:
        balancer = ServiceProcess(
            "strife-balancer",
            [
                "--listen",
                address,
                "--certs",
                str(pki.identity("balancer", "balancer")),
                "--heartbeat-interval",
                "0.2",
                "--lease-ttl",
                "0.6",
            ],
            tmp_path / "balancer.log",
        ).start()
        stack.callback(balancer.stop)
        c = stack.enter_context(
            cluster(pki, tmp_path, gateways=GATEWAYS, gateway_extra=["--balancer", address])
        )
        by_address = {p.address: name for name, p in c.gateways.items()}
        async with ChannelPool(pki.identity("client", "default")) as pool:
            registry = BalancerClient(pool, address, cache_ttl_s=0.0)

            async def listed() -> set[str]:
                try:
                    return {s.instance for s in await registry.list("gateway")}
                except StrifeError:
                    return set()

            deadline = time.monotonic() + 15
            while await listed() != set(GATEWAYS):
                assert time.monotonic() < deadline, "gateways never registered"
                await asyncio.sleep(0.05)

            ada = Customer(pool, c.gateways["gw-1"].address)
            await ada.login("ada")
            served: Counter[str] = Counter()
            for _ in range(PAYMENTS):
                target = await registry.best("gateway", policy="round_robin")
                payer = Customer(pool, target)
                payer.token = ada.token
                reply = await payer.pay(
                    str(uuid.uuid4()), ("alpha", "ada-usd"), ("beta", "cy-usd"), 1
                )
                assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
                served[by_address[target]] += 1
            share = PAYMENTS / len(GATEWAYS)
            assert all(abs(served[g] - share) <= 0.1 * share for g in GATEWAYS), served

            firsts = {await registry.best("gateway", policy="pick_first") for _ in range(10)}
            assert len(firsts) == 1, firsts  # sticky
            first = firsts.pop()
            c.gateways[by_address[first]].kill()
            deadline = time.monotonic() + 10
            while (after := await registry.best("gateway", policy="pick_first")) == first:
                assert time.monotonic() < deadline, "pick_first never moved on"
                await asyncio.sleep(0.05)
            assert {await registry.best("gateway", policy="pick_first") for _ in range(5)} == {
                after
            }
            payer = Customer(pool, after)
            payer.token = ada.token
            reply = await payer.pay(str(uuid.uuid4()), ("alpha", "ada-usd"), ("beta", "cy-usd"), 1)
            assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
