"""A balancer killed and restarted mid-run: payments continue, the registry refills."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from strife.client import EntryState
from strife.errors import StrifeError
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient

from .cluster_fixtures import cluster, free_port
from .conftest import Pki
from .processes import ServiceProcess
from .test_client_support import CY, client_for

HEARTBEAT_S = 0.2
PAYMENTS = 30


@pytest.mark.slow
async def test_payments_continue_through_a_balancer_restart(pki: Pki, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = [
        "--listen",
        address,
        "--certs",
        str(pki.identity("balancer", "balancer")),
        "--heartbeat-interval",
        str(HEARTBEAT_S),
        "--lease-ttl",
        "1",
    ]
    with ExitStack() as stack:
        balancer = ServiceProcess("strife-balancer", args, tmp_path / "balancer.log").start()
        stack.callback(lambda: balancer.stop())
        c = stack.enter_context(
            cluster(pki, tmp_path, gateways=("gw-1", "gw-2"), gateway_extra=["--balancer", address])
        )
        async with ChannelPool(pki.identity("admin", "admin")) as pool:
            registry = BalancerClient(pool, address, cache_ttl_s=0.0)

            async def gateways_listed() -> set[str]:
                try:
                    return {s.instance for s in await registry.list("gateway")}
                except StrifeError:
                    return set()

            deadline = time.monotonic() + 15
            while await gateways_listed() != {"gw-1", "gw-2"}:
                assert time.monotonic() < deadline, "gateways never registered"
                await asyncio.sleep(0.05)

            async with client_for(pki, c, tmp_path / "outbox.db", balancer=address) as client:
                await client.login()
                results = []
                for n in range(PAYMENTS):
                    if n == PAYMENTS // 3:
                        balancer.kill()  # SIGKILL: the registry is gone
                    if n == 2 * PAYMENTS // 3:
                        balancer = ServiceProcess(
                            "strife-balancer", args, tmp_path / "balancer.log"
                        ).start()
                        restarted_at = time.monotonic()
                    results.append(await client.pay(CY, 100 + n, "USD", wait_s=10))
                assert [r.state for r in results] == [EntryState.COMMITTED] * PAYMENTS

            # Whole again within about one heartbeat interval of the restart.
            while await gateways_listed() != {"gw-1", "gw-2"}:
                assert time.monotonic() - restarted_at < 10 * HEARTBEAT_S + 2, "never refilled"
                await asyncio.sleep(0.02)
