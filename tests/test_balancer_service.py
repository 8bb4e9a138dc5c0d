"""The balancer over real mTLS: who may write, policies on the wire, leases, restarts.

In-loop servers for the RPC behaviour; real processes where a process must be
frozen (SIGSTOP) or killed (SIGKILL). Leases are short (0.2 s heartbeats,
0.6 s TTL) so the file runs in seconds; every wait polls a condition with a
deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from strife.balancer.main import main as balancer_main
from strife.balancer.policies import PolicyName
from strife.balancer.registry import LeaseConfig
from strife.balancer.service import BalancerServer, BalancerSettings
from strife.errors import StrifeError, from_rpc_error
from strife.observability.logging import configure_logging
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import Heartbeat
from strife.rpc.server import ServerConfig
from strife.v1 import balancer_pb2, balancer_pb2_grpc

from .conftest import Pki
from .support import until

POLL_S = 0.02  # fine enough to time an eviction
TIMEOUT_S = 5.0
INTERVAL_S = 0.2
TTL_S = 0.6
# Allowance for a TLS handshake and scheduling on a shared two-core machine.
SLACK_S = 0.3
SERVICE = "strife.v1.LoadBalancer"


@asynccontextmanager
async def running_balancer(
    certs: Path,
    *,
    policy: PolicyName = "round_robin",
    listen: str = "127.0.0.1:0",
    seed: int = 0,
) -> AsyncIterator[BalancerServer]:
    server = BalancerServer(
        ServerConfig(name="balancer", listen=listen, certs=certs, grace_s=0.5),
        BalancerSettings(policy, LeaseConfig(heartbeat_interval_s=INTERVAL_S, lease_ttl_s=TTL_S)),
        rng=random.Random(seed),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


class Peers:
    """One ChannelPool per identity, all closed at the end of the test."""

    def __init__(self, pki: Pki, stack: AsyncExitStack) -> None:
        self._pki = pki
        self._stack = stack
        self._pools: dict[tuple[str, str], ChannelPool] = {}

    async def pool(self, role: str, name: str) -> ChannelPool:
        key = (role, name)
        if key not in self._pools:
            pool = ChannelPool(self._pki.identity(role, name))
            self._pools[key] = await self._stack.enter_async_context(pool)
        return self._pools[key]

    async def stub(self, role: str, name: str, address: str) -> Any:
        pool = await self.pool(role, name)
        return balancer_pb2_grpc.LoadBalancerStub(pool.get(address))


@pytest.fixture
async def peers(pki: Pki) -> AsyncIterator[Peers]:
    async with AsyncExitStack() as stack:
        yield Peers(pki, stack)


@pytest.fixture
async def balancer(pki: Pki) -> AsyncIterator[BalancerServer]:
    async with running_balancer(pki.identity("balancer", "lb-1")) as server:
        yield server


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    yield stream
    configure_logging("json")


def log_events(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == event]


async def failure(call: Awaitable[Any]) -> StrifeError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return from_rpc_error(caught.value)


async def listed(stub: Any, service: str) -> dict[str, balancer_pb2.ServerInstance]:
    reply = await stub.ListServers(
        balancer_pb2.ListServersRequest(service=service), timeout=TIMEOUT_S
    )
    return {server.instance: server for server in reply.servers}


async def register(stub: Any, service: str, instance: str, port: int = 5000) -> Any:
    return await stub.Register(
        balancer_pb2.RegisterRequest(
            service=service, instance=instance, address=f"127.0.0.1:{port}", metadata={"v": "1"}
        ),
        timeout=TIMEOUT_S,
    )


async def report(
    stub: Any,
    service: str,
    instance: str,
    in_flight: int,
    port: int = 5000,
    latency_ms: float = 5.0,
) -> Any:
    return await stub.ReportServerLoad(
        balancer_pb2.ReportServerLoadRequest(
            service=service,
            instance=instance,
            address=f"127.0.0.1:{port}",
            load=balancer_pb2.ServerLoad(in_flight=in_flight, latency_ms_ewma=latency_ms),
        ),
        timeout=TIMEOUT_S,
    )


async def best(stub: Any, service: str = "bank", **fields: Any) -> str:
    reply = await stub.GetBestServer(
        balancer_pb2.GetBestServerRequest(service=service, **fields), timeout=TIMEOUT_S
    )
    return str(reply.server.instance)


# --- registration and who may do it -----------------------------------------


async def test_a_service_registers_and_anyone_can_list_it(
    balancer: BalancerServer, peers: Peers
) -> None:
    alpha = await peers.stub("bank", "alpha", balancer.address)
    reply = await register(alpha, "bank", "alpha", port=7001)
    assert (reply.lease_ttl_ms, reply.heartbeat_interval_ms) == (600, 200)
    await report(alpha, "bank", "alpha", in_flight=3, port=7001)

    client = await peers.stub("client", "ada", balancer.address)
    servers = await listed(client, "bank")
    assert list(servers) == ["alpha"]
    assert servers["alpha"].address == "127.0.0.1:7001"
    assert dict(servers["alpha"].metadata) == {}  # the heartbeat's (empty) metadata won
    assert servers["alpha"].load.in_flight == 3
    assert servers["alpha"].last_heartbeat_unix_ms >= servers["alpha"].registered_at_unix_ms
    assert await best(client) == "alpha"


async def test_a_client_certificate_cannot_write_the_registry(
    balancer: BalancerServer, peers: Peers
) -> None:
    mallory = await peers.stub("client", "mallory", balancer.address)
    for call in (
        register(mallory, "client", "mallory"),
        report(mallory, "client", "mallory", in_flight=0),
        mallory.Deregister(
            balancer_pb2.DeregisterRequest(service="client", instance="mallory"),
            timeout=TIMEOUT_S,
        ),
    ):
        error = await failure(call)
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
        assert error.reason == "ROLE_NOT_ALLOWED"
    assert await listed(mallory, "client") == {}


async def test_an_instance_cannot_deregister_another(
    balancer: BalancerServer, peers: Peers
) -> None:
    alpha = await peers.stub("bank", "alpha", balancer.address)
    beta = await peers.stub("bank", "beta", balancer.address)
    await register(alpha, "bank", "alpha")
    await register(beta, "bank", "beta", port=5001)

    error = await failure(
        alpha.Deregister(
            balancer_pb2.DeregisterRequest(service="bank", instance="beta"), timeout=TIMEOUT_S
        )
    )
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "NOT_INSTANCE_OWNER"
    assert error.metadata["peer"] == "spiffe://strife.local/bank/alpha"
    assert set(await listed(alpha, "bank")) == {"alpha", "beta"}

    reply = await alpha.Deregister(
        balancer_pb2.DeregisterRequest(service="bank", instance="alpha"), timeout=TIMEOUT_S
    )
    assert reply.removed is True
    assert set(await listed(alpha, "bank")) == {"beta"}


async def test_an_instance_cannot_register_or_renew_as_another(
    balancer: BalancerServer, peers: Peers
) -> None:
    alpha = await peers.stub("bank", "alpha", balancer.address)
    beta = await peers.stub("bank", "beta", balancer.address)
    await register(beta, "bank", "beta", port=5001)

    for call in (
        register(alpha, "bank", "beta", port=6666),
        report(alpha, "bank", "beta", in_flight=0, port=6666),
    ):
        error = await failure(call)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_INSTANCE_OWNER",
        )
    # The role must be the service: a gateway cannot pose as a bank of its name.
    gateway = await peers.stub("gateway", "gw-1", balancer.address)
    error = await failure(register(gateway, "bank", "gw-1"))
    assert error.reason == "NOT_INSTANCE_OWNER"
    servers = await listed(alpha, "bank")
    assert list(servers) == ["beta"]
    assert servers["beta"].address == "127.0.0.1:5001"


async def test_bad_requests_are_invalid_argument(balancer: BalancerServer, peers: Peers) -> None:
    alpha = await peers.stub("bank", "alpha", balancer.address)
    cases: list[tuple[Awaitable[Any], str]] = [
        (
            alpha.Register(
                balancer_pb2.RegisterRequest(service="bank", instance="alpha", address="nowhere"),
                timeout=TIMEOUT_S,
            ),
            "address",
        ),
        (report(alpha, "bank", "alpha", in_flight=-1), "load.in_flight"),
        (
            alpha.GetBestServer(balancer_pb2.GetBestServerRequest(), timeout=TIMEOUT_S),
            "service",
        ),
        (
            alpha.GetBestServer(
                balancer_pb2.GetBestServerRequest(
                    service="bank", policy=balancer_pb2.Policy.ValueType(99)
                ),
                timeout=TIMEOUT_S,
            ),
            "policy",
        ),
        (alpha.ListServers(balancer_pb2.ListServersRequest(), timeout=TIMEOUT_S), "service"),
    ]
    for call, field in cases:
        error = await failure(call)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert error.metadata == {"field": field}
    assert await listed(alpha, "bank") == {}


async def test_an_empty_pool_is_unavailable_with_a_retry_hint(
    balancer: BalancerServer, peers: Peers
) -> None:
    client = await peers.stub("client", "ada", balancer.address)
    error = await failure(
        client.GetBestServer(balancer_pb2.GetBestServerRequest(service="bank"), timeout=TIMEOUT_S)
    )
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "NO_INSTANCE")
    assert error.retryable and error.retry_after_s == INTERVAL_S

    error = await failure(
        client.GetBestServer(
            balancer_pb2.GetBestServerRequest(service="bank", instance="alpha"), timeout=TIMEOUT_S
        )
    )
    assert error.reason == "NO_INSTANCE"
    assert error.metadata == {"service": "bank", "instance": "alpha"}


# --- policies on the wire ----------------------------------------------------


async def three_banks(peers: Peers, address: str) -> None:
    """alpha, beta, gamma in that order, with in-flight 40, 1, 2 and equal latency."""
    for port, (name, in_flight) in enumerate((("alpha", 40), ("beta", 1), ("gamma", 2))):
        stub = await peers.stub("bank", name, address)
        await register(stub, "bank", name, port=6000 + port)
        await report(stub, "bank", name, in_flight=in_flight, port=6000 + port)


async def test_policies_choose_over_the_wire(balancer: BalancerServer, peers: Peers) -> None:
    await three_banks(peers, balancer.address)
    client = await peers.stub("client", "ada", balancer.address)

    assert [await best(client) for _ in range(4)] == ["alpha", "beta", "gamma", "alpha"]
    assert [await best(client, exclude=["beta"]) for _ in range(2)] == ["gamma", "alpha"]
    pick_first = balancer_pb2.POLICY_PICK_FIRST
    assert [await best(client, policy=pick_first) for _ in range(3)] == ["alpha"] * 3
    assert await best(client, policy=pick_first, exclude=["alpha"]) == "beta"
    # Every answer so far counts as a call at its instance until the next
    # report: in-flight is now alpha 40 + 6, beta 1 + 2, gamma 2 + 2.
    least = balancer_pb2.POLICY_LEAST_LOAD
    assert [await best(client, policy=least) for _ in range(3)] == ["beta", "gamma", "beta"]
    assert await best(client, policy=least, exclude=["beta"]) == "gamma"
    two = balancer_pb2.POLICY_POWER_OF_TWO
    picks = {await best(client, policy=two) for _ in range(30)}
    assert picks == {"beta", "gamma"}  # alpha, the busiest, never wins a pair
    assert await best(client, instance="gamma") == "gamma"


async def test_the_balancer_default_policy_applies_when_none_is_asked(
    pki: Pki, peers: Peers
) -> None:
    async with running_balancer(pki.identity("balancer", "lb-1"), policy="least_load") as lb:
        await three_banks(peers, lb.address)
        client = await peers.stub("client", "ada", lb.address)
        assert [await best(client) for _ in range(3)] == ["beta", "gamma", "beta"]


async def test_least_load_counts_its_answers_until_the_next_report(
    balancer: BalancerServer, peers: Peers
) -> None:
    """Equal instances share the calls of one heartbeat interval; a report resets the count."""
    stubs = {}
    for port, (name, in_flight) in enumerate((("alpha", 3), ("beta", 0))):
        stubs[name] = stub = await peers.stub("bank", name, balancer.address)
        await register(stub, "bank", name, port=6000 + port)
        await report(stub, "bank", name, in_flight=in_flight, port=6000 + port)
    client = await peers.stub("client", "ada", balancer.address)
    least = balancer_pb2.POLICY_LEAST_LOAD

    picks = [await best(client, policy=least) for _ in range(9)]
    # beta catches up with alpha's 3, then they alternate.
    assert picks[:3] == ["beta"] * 3
    assert Counter(picks) == {"beta": 6, "alpha": 3}
    listed = await client.ListServers(
        balancer_pb2.ListServersRequest(service="bank"), timeout=TIMEOUT_S
    )
    assert {s.instance: s.load.in_flight for s in listed.servers} == {"alpha": 3, "beta": 0}

    await report(stubs["alpha"], "bank", "alpha", in_flight=3, port=6000)
    await report(stubs["beta"], "bank", "beta", in_flight=0, port=6001)
    assert [await best(client, policy=least) for _ in range(3)] == ["beta"] * 3


async def test_least_load_and_power_of_two_avoid_a_slow_instance_with_few_calls(
    balancer: BalancerServer, peers: Peers
) -> None:
    """The case that misled `(in_flight + 1) x latency`: (89 + 1) x 121 > (16 + 1) x 491."""
    for port, (name, in_flight, latency_ms) in enumerate(
        (("slow", 16, 491.0), ("fast", 89, 121.0))
    ):
        stub = await peers.stub("gateway", name, balancer.address)
        await register(stub, "gateway", name, port=6000 + port)
        await report(stub, "gateway", name, in_flight, port=6000 + port, latency_ms=latency_ms)
    client = await peers.stub("client", "ada", balancer.address)
    for policy in (balancer_pb2.POLICY_LEAST_LOAD, balancer_pb2.POLICY_POWER_OF_TWO):
        picks = {await best(client, "gateway", policy=policy) for _ in range(20)}
        assert picks == {"fast"}


# --- leases ------------------------------------------------------------------


async def test_a_silent_instance_is_evicted_when_its_lease_runs_out(
    balancer: BalancerServer, peers: Peers, log_stream: io.StringIO
) -> None:
    alpha = await peers.stub("bank", "alpha", balancer.address)
    started = time.monotonic()
    await register(alpha, "bank", "alpha")

    async def gone() -> bool:
        return "alpha" not in await listed(alpha, "bank")

    await until(gone, "alpha evicted", within_s=TTL_S + SLACK_S, every_s=POLL_S)
    assert time.monotonic() - started >= TTL_S

    async def logged() -> bool:
        return bool(log_events(log_stream, "instance_evicted"))

    await until(logged, "the eviction is logged", within_s=INTERVAL_S + SLACK_S, every_s=POLL_S)
    (evicted,) = log_events(log_stream, "instance_evicted")
    assert (evicted["service"], evicted["instance"], evicted["level"]) == (
        "bank",
        "alpha",
        "warning",
    )
    assert evicted["silent_ms"] >= TTL_S * 1000


# --- processes: SIGSTOP / SIGCONT, SIGKILL and restart -------------------------

INSTANCE_SCRIPT = """
import asyncio, signal, sys
from strife.rpc.discovery import Heartbeat
from strife.observability.logging import configure_logging
from strife.rpc.channels import ChannelPool

async def main(certs, balancer, service, instance, address):
    configure_logging("json")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with ChannelPool(certs) as pool:
        heartbeat = Heartbeat(pool, balancer, service=service, instance=instance, address=address)
        await heartbeat.start()
        await stop.wait()
        await heartbeat.stop()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process a test starts; killed and reaped whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=TIMEOUT_S)


def spawn(
    processes: list[subprocess.Popen[bytes]], args: list[str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    processes.append(proc)
    return proc


async def logged_event(
    log: Path, event: str, proc: subprocess.Popen[bytes], timeout_s: float = 15.0
) -> dict[str, Any]:
    """The first JSON log line of `event` that `proc` wrote (it appends to `log`)."""
    found: dict[str, Any] = {}

    async def seen() -> bool:
        text = await asyncio.to_thread(log.read_text)
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}:\n{text}")
        for line in text.splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:  # not JSON, or a line still being written
                continue
            if isinstance(parsed, dict) and parsed.get("event") == event:
                found.update(parsed)
                return True
        return False

    await until(seen, f"{event} in {log.name}", within_s=timeout_s, every_s=POLL_S)
    return found


async def exit_code(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc` without blocking the loop (an in-loop server may have to answer it)."""

    async def exited() -> bool:
        return proc.poll() is not None

    await until(exited, "process exit", within_s=TIMEOUT_S, every_s=POLL_S)
    return proc.returncode


def start_balancer_process(
    processes: list[subprocess.Popen[bytes]], certs: Path, listen: str, log: Path
) -> subprocess.Popen[bytes]:
    log.write_bytes(b"")
    return spawn(
        processes,
        [
            str(Path(sys.executable).parent / "strife-balancer"),  # the console script
            "--listen",
            listen,
            "--certs",
            str(certs),
            "--heartbeat-interval",
            str(INTERVAL_S),
            "--lease-ttl",
            str(TTL_S),
            "--grace",
            "0.5",
        ],
        log,
    )


@pytest.mark.slow
async def test_a_stopped_instance_is_evicted_and_returns_after_sigcont(
    balancer: BalancerServer,
    peers: Peers,
    pki: Pki,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    log_stream: io.StringIO,
) -> None:
    client = await peers.stub("client", "ada", balancer.address)
    instance = spawn(
        processes,
        [
            "-c",
            INSTANCE_SCRIPT,
            str(pki.identity("bank", "alpha")),
            balancer.address,
            "bank",
            "alpha",
            "127.0.0.1:7001",
        ],
        tmp_path / "alpha.log",
    )

    async def present() -> bool:
        return "alpha" in await listed(client, "bank")

    async def absent() -> bool:
        return not await present()

    await until(present, "alpha registered", within_s=15.0, every_s=POLL_S)
    instance.send_signal(signal.SIGSTOP)
    took_s = await until(absent, "frozen alpha evicted", within_s=TTL_S + SLACK_S, every_s=POLL_S)
    # Its last heartbeat was at most one interval before the freeze.
    assert took_s >= TTL_S - INTERVAL_S - 0.05

    async def eviction_logged() -> bool:
        return bool(log_events(log_stream, "instance_evicted"))

    await until(
        eviction_logged, "the eviction is logged", within_s=INTERVAL_S + SLACK_S, every_s=POLL_S
    )
    assert [e["instance"] for e in log_events(log_stream, "instance_evicted")] == ["alpha"]

    instance.send_signal(signal.SIGCONT)
    await until(present, "alpha back after SIGCONT", within_s=INTERVAL_S + SLACK_S, every_s=POLL_S)
    comeback = log_events(log_stream, "instance_registered")[-1]
    assert (comeback["instance"], comeback["via"]) == ("alpha", "heartbeat")

    instance.send_signal(signal.SIGTERM)
    deregistered_at = time.monotonic()
    assert await exit_code(instance) == 0
    assert "alpha" not in await listed(client, "bank")
    assert time.monotonic() - deregistered_at < TTL_S  # removed, not left to expire
    (deregistered,) = log_events(log_stream, "instance_deregistered")
    assert (deregistered["instance"], deregistered["removed"]) == ("alpha", True)


@pytest.mark.slow
async def test_a_killed_balancer_is_whole_again_one_interval_after_restart(
    pki: Pki, peers: Peers, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    certs = pki.identity("balancer", "lb-1")
    log = tmp_path / "balancer.log"
    first = start_balancer_process(processes, certs, "127.0.0.1:0", log)
    address = (await logged_event(log, "server_started", first))["address"]

    expected = {
        "bank": {"alpha": "127.0.0.1:7001", "beta": "127.0.0.1:7002"},
        "gateway": {"gw-1": "127.0.0.1:7003"},
    }
    async with AsyncExitStack() as stack:
        for service, instances in expected.items():
            for name, instance_address in instances.items():
                pool = await peers.pool(service, name)
                heartbeat = Heartbeat(
                    pool, address, service=service, instance=name, address=instance_address
                )
                await stack.enter_async_context(heartbeat)

        async def whole(stub: Any) -> bool:
            for service, instances in expected.items():
                servers = await listed(stub, service)
                if {n: s.address for n, s in servers.items()} != instances:
                    return False
            return True

        before = await peers.stub("client", "ada", address)
        await until(lambda: whole(before), "registry filled", within_s=TIMEOUT_S, every_s=POLL_S)

        first.kill()
        first.wait(timeout=TIMEOUT_S)
        second = start_balancer_process(processes, certs, address, log)
        await logged_event(log, "server_started", second)
        # A new client: the old channel still waits out gRPC's reconnect backoff.
        async with ChannelPool(pki.identity("client", "bob")) as pool:
            after = balancer_pb2_grpc.LoadBalancerStub(pool.get(address))
            took_s = await until(
                lambda: whole(after),
                "registry whole after restart",
                within_s=INTERVAL_S + SLACK_S,
                every_s=POLL_S,
            )
    print(f"registry whole {took_s * 1000:.0f} ms after the restarted balancer listened")


# --- the command line --------------------------------------------------------


def test_cli_refuses_a_lease_shorter_than_two_heartbeats() -> None:
    result = CliRunner().invoke(
        balancer_main,
        ["--insecure", "--heartbeat-interval", "1", "--lease-ttl", "1.5"],
    )
    assert result.exit_code == 2
    assert "two heartbeat" in result.output


def test_cli_requires_certificates() -> None:
    # The working directory is the test's own (conftest): no ./certs/balancer to
    # fall back on, so the command refuses instead of starting a balancer here.
    assert not Path("certs").exists()
    result = CliRunner().invoke(balancer_main, ["--listen", "127.0.0.1:0"])
    assert result.exit_code == 2
    assert "--certs" in result.output


def test_balancer_process_stops_gracefully_on_sigterm(
    pki: Pki, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    log = tmp_path / "balancer.log"
    proc = start_balancer_process(processes, pki.identity("balancer", "lb-1"), "127.0.0.1:0", log)
    asyncio.run(logged_event(log, "balancer_ready", proc))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT_S) == 0
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events[-2:] == ["shutdown_requested", "server_stopped"]
