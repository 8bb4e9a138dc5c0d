"""A flood of TCP connections that never send a byte, against a real gateway.

The gateway runs with a small open-file limit (STRIFE_MAX_OPEN_FILES=200), so
a bounded flood of 256 idle connections from this process is more than it
could hold. It must close them once their handshake time is up, never take
more than its connection cap, and keep serving good clients meanwhile. The
flood targets only 127.0.0.1, stops by itself and closes every socket.
"""

from __future__ import annotations

import asyncio
import resource
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from strife.rpc.channels import ChannelPool

from .cluster_fixtures import Cluster, Customer, cluster
from .conftest import Pki
from .processes import ServiceProcess

FLOOD = 256
OPEN_FILES = 200
HANDSHAKE_TIMEOUT_S = 5.0  # the servers' default
FLOOD_DEADLINE_S = 30.0


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """Up to `count` TCP connections to 127.0.0.1:port that send nothing; all closed after."""
    sockets: list[socket.socket] = []
    deadline = time.monotonic() + 10
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.settimeout(2.0)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                continue  # refused or backlog full: the flood is bounded either way
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed (or reset) this connection."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


async def until_served(client: Customer, username: str, within_s: float) -> Any:
    """Log in, retrying while the gateway cannot be reached (as a client does)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await client.login(username)
        except grpc.aio.AioRpcError as exc:
            retryable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if exc.code() not in retryable or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
def running(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(
        pki,
        tmp_path_factory.mktemp("flood"),
        gateway_env={"STRIFE_MAX_OPEN_FILES": str(OPEN_FILES)},
    ) as c:
        yield c


def test_servers_raise_their_open_file_limit_and_cap_connections(running: Cluster) -> None:
    gateway = started(running.gateways["gw-1"])
    assert gateway["open_files"] == OPEN_FILES
    cap = gateway["max_connections"]
    assert isinstance(cap, int) and 0 < cap < OPEN_FILES
    # Without STRIFE_MAX_OPEN_FILES the soft limit is raised to the hard one.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        assert started(running.banks["alpha"])["open_files"] == hard


def started(process: ServiceProcess) -> dict[str, object]:
    return [e for e in process.log_events() if e.get("event") == "server_started"][-1]


async def test_idle_connection_flood_does_not_lock_out_good_clients(
    pki: Pki, running: Cluster
) -> None:
    address = running.gateways["gw-1"].address
    port = int(address.rsplit(":", 1)[1])
    async with (
        ChannelPool(pki.identity("client", "default")) as before,
        ChannelPool(pki.identity("client", "default")) as during,
    ):
        known = Customer(before, address)
        await known.login("ada")  # connected before the flood
        started = time.monotonic()
        with idle_connections(port, FLOOD) as flood:
            assert time.monotonic() - started < FLOOD_DEADLINE_S
            # A client with a connection keeps being served at once.
            assert (await known.balance("alpha", "ada-usd"))[0] > 0
            # A new client gets in within the handshake timeout and its reconnect backoff.
            newcomer = Customer(during, address)
            reply = await until_served(newcomer, "bob", within_s=20)
            assert reply.customer_id == "c-bob"
            # Every flood connection is closed by the server once its handshake time is up.
            deadline = started + HANDSHAKE_TIMEOUT_S + 10
            while time.monotonic() < deadline:
                open_ = [s for s in flood if not closed_by_server(s)]
                if not open_:
                    break
                await asyncio.sleep(0.5)
            assert [s for s in flood if not closed_by_server(s)] == []
            assert time.monotonic() - started < FLOOD_DEADLINE_S
        # And after it, as before.
        assert (await known.balance("alpha", "ada-usd"))[0] > 0
