"""The balancer's client side against a real in-loop balancer: Heartbeat, BalancerClient."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from strife.balancer.service import BalancerServer
from strife.errors import InvalidArgument, Unavailable
from strife.observability.metrics import IN_FLIGHT, SERVED
from strife.rpc.discovery import IDLE_DECAY, BalancerClient, Heartbeat, LoadSample, ProcessLoad

from .conftest import Pki
from .support import until
from .test_balancer_service import (
    INTERVAL_S,
    POLL_S,
    SLACK_S,
    TIMEOUT_S,
    TTL_S,
    Peers,
    listed,
    running_balancer,
)


@pytest.fixture
async def peers(pki: Pki) -> AsyncIterator[Peers]:
    async with AsyncExitStack() as stack:
        yield Peers(pki, stack)


@pytest.fixture
async def balancer(pki: Pki) -> AsyncIterator[BalancerServer]:
    async with running_balancer(pki.identity("balancer", "lb-1")) as server:
        yield server


def free_address() -> str:
    """A port nobody listens on (yet): the balancer is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


class Upper(random.Random):
    """Jitter always at its upper bound, so delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class RecordedSleep:
    """Records the heartbeat's delays; after `limit` of them, parks it for good."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.full = asyncio.Event()

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(round(delay_s, 6))
        if len(self.delays) >= self.limit:
            self.full.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


# --- Heartbeat ---------------------------------------------------------------


async def test_heartbeat_keeps_the_lease_and_reports_load(
    balancer: BalancerServer, peers: Peers
) -> None:
    heartbeat = Heartbeat(
        await peers.pool("bank", "alpha"),
        balancer.address,
        service="bank",
        instance="alpha",
        address="127.0.0.1:7001",
        metadata={"zone": "a"},
        load=lambda: LoadSample(in_flight=7, latency_ms_ewma=12.5, cpu_percent=30.0),
        interval_s=5.0,
    )
    client = await peers.stub("client", "ada", balancer.address)
    async with heartbeat:
        assert await heartbeat.wait_registered(TIMEOUT_S)
        assert heartbeat.interval_s == INTERVAL_S  # the balancer's, not ours

        async def renewed_past_several_ttls() -> bool:
            server = (await listed(client, "bank")).get("alpha")
            assert server is not None, "alpha lost its lease while heartbeating"
            age_ms = server.last_heartbeat_unix_ms - server.registered_at_unix_ms
            return age_ms > 2 * TTL_S * 1000

        await until(
            renewed_past_several_ttls, "lease renewed", within_s=2 * TTL_S + 1.0, every_s=POLL_S
        )
        server = (await listed(client, "bank"))["alpha"]
        assert (server.load.in_flight, server.load.latency_ms_ewma) == (7, 12.5)
        assert server.load.cpu_percent == 30.0
        assert (server.address, dict(server.metadata)) == ("127.0.0.1:7001", {"zone": "a"})

    # stop() deregistered: gone at once, not a TTL later.
    assert await listed(client, "bank") == {}
    assert not heartbeat.registered


async def test_heartbeat_waits_for_a_missing_balancer_without_failing(
    pki: Pki, peers: Peers
) -> None:
    address = free_address()
    heartbeat = Heartbeat(
        await peers.pool("bank", "alpha"),
        address,
        service="bank",
        instance="alpha",
        address="127.0.0.1:7001",
        interval_s=INTERVAL_S,
    )
    await heartbeat.start()
    try:
        assert not await heartbeat.wait_registered(3 * INTERVAL_S)
        async with running_balancer(pki.identity("balancer", "lb-1"), listen=address):
            registered_s = await until(
                lambda: heartbeat.wait_registered(0.01),
                "registered once the balancer is up",
                within_s=INTERVAL_S + SLACK_S,
                every_s=POLL_S,
            )
            assert registered_s <= INTERVAL_S + SLACK_S
        # The balancer is gone again: stop() must still return, and not raise.
        await asyncio.wait_for(heartbeat.stop(timeout_s=0.5), TIMEOUT_S)
    finally:
        await heartbeat.stop(timeout_s=0.1)


async def test_refusals_back_off_exponentially_and_outages_do_not(
    balancer: BalancerServer, peers: Peers
) -> None:
    def make(role: str, target: str, sleep: RecordedSleep) -> Heartbeat:
        return Heartbeat(
            pool,
            target,
            service=role,
            instance="mallory",
            address="127.0.0.1:7001",
            interval_s=0.1,
            refused_backoff_cap_s=1.0,
            rng=Upper(),
            sleep=sleep,
        )

    pool = await peers.pool("client", "mallory")
    refused, unreachable = RecordedSleep(limit=5), RecordedSleep(limit=5)
    for heartbeat, sleep in (
        (make("client", balancer.address, refused), refused),  # PERMISSION_DENIED
        (make("client", free_address(), unreachable), unreachable),  # nobody listening
    ):
        await heartbeat.start()
        try:
            await asyncio.wait_for(sleep.full.wait(), TIMEOUT_S)
            assert not heartbeat.registered
        finally:
            await heartbeat.stop(timeout_s=0.5)
    assert refused.delays == [0.2, 0.4, 0.8, 1.0, 1.0]
    # Retrying an unreachable balancer every interval is what makes the
    # registry whole one interval after it comes back.
    assert unreachable.delays == [0.1] * 5


async def test_a_failing_load_callable_does_not_stop_the_heartbeat(
    balancer: BalancerServer, peers: Peers
) -> None:
    def broken() -> LoadSample:
        raise RuntimeError("sensor on fire")

    client = await peers.stub("client", "ada", balancer.address)
    async with Heartbeat(
        await peers.pool("bank", "alpha"),
        balancer.address,
        service="bank",
        instance="alpha",
        address="127.0.0.1:7001",
        load=broken,
    ) as heartbeat:
        assert await heartbeat.wait_registered(TIMEOUT_S)

        async def renewed_past_a_ttl() -> bool:
            server = (await listed(client, "bank")).get("alpha")
            assert server is not None, "alpha lost its lease"
            return server.last_heartbeat_unix_ms - server.registered_at_unix_ms > TTL_S * 1000

        await until(
            renewed_past_a_ttl,
            "renewed with a broken load callable",
            within_s=TTL_S + 1.0,
            every_s=POLL_S,
        )


def test_process_load_reports_in_flight_latency_ewma_and_cpu() -> None:
    wall = iter([0.0, 1.0, 2.0, 3.0])
    cpu = iter([10.0, 10.25, 10.25, 10.75])
    load = ProcessLoad(alpha=0.5, clock=lambda: next(wall), cpu_clock=lambda: next(cpu))
    SERVED.add("/strife.v1.Test/Load", 0.010)
    SERVED.add("/strife.v1.Test/Load", 0.010)
    SERVED.add("/grpc.health.v1.Health/Check", 5.0)  # probes must not drag the figure
    IN_FLIGHT.enter()
    try:
        first = load()
    finally:
        IN_FLIGHT.leave()
    assert first.in_flight >= 1
    assert first.latency_ms_ewma == pytest.approx(10.0)
    assert first.cpu_percent == pytest.approx(25.0)
    SERVED.add("/strife.v1.Test/Load", 0.030)
    second = load()
    assert second.latency_ms_ewma == pytest.approx(20.0)  # 10 + 0.5 x (30 - 10)
    assert second.cpu_percent == pytest.approx(0.0)
    third = load()  # an idle interval lowers it: an unused instance is tried again
    assert third.latency_ms_ewma == pytest.approx(20.0 * IDLE_DECAY)
    assert third.cpu_percent == pytest.approx(50.0)


# --- BalancerClient ----------------------------------------------------------


async def three_banks(peers: Peers, address: str, stack: AsyncExitStack) -> None:
    for port, name in enumerate(("alpha", "beta", "gamma")):
        heartbeat = Heartbeat(
            await peers.pool("bank", name),
            address,
            service="bank",
            instance=name,
            address=f"127.0.0.1:{7001 + port}",
        )
        await stack.enter_async_context(heartbeat)
        assert await heartbeat.wait_registered(TIMEOUT_S)


async def test_client_finds_instances(balancer: BalancerServer, peers: Peers) -> None:
    async with AsyncExitStack() as stack:
        await three_banks(peers, balancer.address, stack)
        client = BalancerClient(await peers.pool("gateway", "gw-1"), balancer.address)
        assert [await client.best("bank") for _ in range(4)] == [
            "127.0.0.1:7001",
            "127.0.0.1:7002",
            "127.0.0.1:7003",
            "127.0.0.1:7001",
        ]
        assert await client.best("bank", policy="pick_first") == "127.0.0.1:7001"
        assert await client.best("bank", "pick_first", exclude=["alpha"]) == "127.0.0.1:7002"
        assert await client.resolve("bank", "gamma") == "127.0.0.1:7003"
        servers = await client.list("bank")
        assert [(s.instance, s.address) for s in servers] == [
            ("alpha", "127.0.0.1:7001"),
            ("beta", "127.0.0.1:7002"),
            ("gamma", "127.0.0.1:7003"),
        ]
        with pytest.raises(ValueError):
            await client.best("bank", policy="fastest")
        with pytest.raises(InvalidArgument):
            await client.best("no/such")


async def test_client_answers_from_what_it_knows_while_the_balancer_is_down(
    pki: Pki, peers: Peers
) -> None:
    clock = FakeClock()
    address = free_address()
    async with AsyncExitStack() as stack:
        lb = await stack.enter_async_context(
            running_balancer(pki.identity("balancer", "lb-1"), listen=address)
        )
        await three_banks(peers, lb.address, stack)
        client = BalancerClient(
            await peers.pool("gateway", "gw-1"),
            address,
            cache_ttl_s=5.0,
            max_stale_s=60.0,
            clock=clock,
        )
        assert len(await client.list("bank")) == 3
        await lb.stop(0)

        assert await client.resolve("bank", "beta") == "127.0.0.1:7002"  # fresh: not asked
        clock.now_s += 10  # stale: asked, unreachable, the known address anyway
        assert await client.resolve("bank", "beta") == "127.0.0.1:7002"
        picks = {await client.best("bank", exclude=["alpha"]) for _ in range(4)}
        assert picks == {"127.0.0.1:7002", "127.0.0.1:7003"}
        assert [s.instance for s in await client.list("bank")] == ["alpha", "beta", "gamma"]
        with pytest.raises(Unavailable):
            await client.resolve("bank", "delta")  # never known
        clock.now_s += 60  # now too old to trust
        with pytest.raises(Unavailable):
            await client.best("bank")
        with pytest.raises(Unavailable):
            await client.resolve("bank", "beta")


async def test_client_bridges_a_restarted_balancer_until_it_refills(pki: Pki, peers: Peers) -> None:
    certs = pki.identity("balancer", "lb-1")
    address = free_address()
    client: Any = None
    async with running_balancer(certs, listen=address), AsyncExitStack() as stack:
        await three_banks(peers, address, stack)
        client = BalancerClient(await peers.pool("gateway", "gw-1"), address)
        assert await client.best("bank", "pick_first") == "127.0.0.1:7001"
    async with running_balancer(certs, listen=address) as restarted:
        stub = await peers.stub("client", "ada", restarted.address)
        assert await listed(stub, "bank") == {}  # empty: NO_INSTANCE until heartbeats refill
        assert await client.best("bank") == "127.0.0.1:7001"
        assert await client.resolve("bank", "alpha") == "127.0.0.1:7001"


async def test_client_does_not_hammer_an_unreachable_balancer(pki: Pki, peers: Peers) -> None:
    clock = FakeClock()
    address = free_address()
    client = BalancerClient(
        await peers.pool("gateway", "gw-1"), address, probe_interval_s=1.0, clock=clock
    )
    with pytest.raises(Unavailable) as first:
        await client.resolve("bank", "alpha")
    assert "failed to connect" in first.value.message
    async with (
        running_balancer(pki.identity("balancer", "lb-1"), listen=address),
        Heartbeat(
            await peers.pool("bank", "alpha"),
            address,
            service="bank",
            instance="alpha",
            address="127.0.0.1:7001",
        ) as heartbeat,
    ):
        assert await heartbeat.wait_registered(TIMEOUT_S)
        with pytest.raises(Unavailable) as skipped:
            await client.resolve("bank", "alpha")
        assert "not asking again yet" in skipped.value.message
        clock.now_s += 1.0
        assert await client.resolve("bank", "alpha") == "127.0.0.1:7001"
