"""The bank's and the gateway's process objects, run in-process as the programs run them."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from strife.bank.process import BankProcess, BankSettings
from strife.gateway.process import GatewayProcess, GatewaySettings
from strife.rpc.channels import ChannelPool, Peer, health_stub
from strife.rpc.server import AddressInUseError, ServerConfig

from .conftest import Pki

TIMEOUT_S = 10.0


def _bank(pki: Pki, tmp: Path, listen: str = "127.0.0.1:0") -> BankProcess:
    identity = pki.identity("bank", "alpha")
    return BankProcess(
        ServerConfig(name="alpha", listen=listen, certs=identity, grace_s=0.5),
        BankSettings(
            name="alpha",
            banks=("alpha",),
            databases={"alpha": tmp / "bank-alpha.db"},
            identities={"alpha": identity},
            init=True,
        ),
    )


def _gateway(pki: Pki, tmp: Path, listen: str = "127.0.0.1:0") -> GatewayProcess:
    return GatewayProcess(
        ServerConfig(
            name="gw-1", listen=listen, certs=pki.identity("gateway", "gw-1"), grace_s=0.5
        ),
        GatewaySettings(name="gw-1", db=tmp / "gateway-gw-1.db", token_key=tmp / "token.key"),
    )


@asynccontextmanager
async def _serving(process: BankProcess | GatewayProcess) -> AsyncIterator[asyncio.Task[int]]:
    """The process started and serving; stopped (as SIGTERM would) when the block ends."""
    async with process:
        served = asyncio.create_task(process.serve())
        try:
            yield served
        finally:
            process.request_stop()
            await asyncio.wait_for(asyncio.shield(served), TIMEOUT_S)


async def _health(pki: Pki, address: str, peer: Peer) -> int:
    pool = ChannelPool(pki.identity("gateway", "gw-2"))
    try:
        stub = health_stub(pool.get(address, peer))
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        return int(reply.status)
    finally:
        await pool.close()


def _lingering(before: set[threading.Thread]) -> list[str]:
    """Threads started since `before` that would keep a program alive after its
    event loop ended (a closed database's thread is given a moment to finish)."""
    started = [t for t in threading.enumerate() if t not in before and not t.daemon]
    for thread in started:
        thread.join(TIMEOUT_S)
    return [t.name for t in started if t.is_alive()]


def _taken_port() -> tuple[socket.socket, str]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, f"127.0.0.1:{holder.getsockname()[1]}"


async def test_a_bank_process_serves_then_stops_with_status_0_and_nothing_left(
    pki: Pki, tmp_path: Path
) -> None:
    threads = set(threading.enumerate())
    bank = _bank(pki, tmp_path)
    async with _serving(bank) as served:
        assert await _health(pki, bank.address, Peer("bank", "alpha")) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        assert not served.done()
    assert served.result() == 0
    assert bank.stores == {}
    assert _lingering(threads) == []  # every SQLite thread ended


async def test_a_bank_whose_port_is_taken_fails_and_closes_its_databases(
    pki: Pki, tmp_path: Path
) -> None:
    threads = set(threading.enumerate())
    holder, taken = _taken_port()
    with holder, pytest.raises(AddressInUseError):
        async with _bank(pki, tmp_path, listen=taken):
            pytest.fail("started on a port another socket holds")
    assert _lingering(threads) == []


async def test_a_gateway_process_serves_then_stops_with_status_0(pki: Pki, tmp_path: Path) -> None:
    threads = set(threading.enumerate())
    gateway = _gateway(pki, tmp_path)
    async with _serving(gateway) as served:
        assert await _health(pki, gateway.address, Peer("gateway", "gw-1")) == (
            health_pb2.HealthCheckResponse.SERVING
        )
    assert served.result() == 0
    assert gateway.store is None and gateway.coordinator is None
    assert _lingering(threads) == []


async def test_a_gateway_whose_database_is_deleted_stops_with_status_1(
    pki: Pki, tmp_path: Path
) -> None:
    gateway = _gateway(pki, tmp_path)
    async with gateway:
        (tmp_path / "gateway-gw-1.db").unlink()
        assert await asyncio.wait_for(gateway.serve(), TIMEOUT_S) == 1


async def test_a_gateway_whose_port_is_taken_fails_and_closes_its_database(
    pki: Pki, tmp_path: Path
) -> None:
    threads = set(threading.enumerate())
    holder, taken = _taken_port()
    with holder, pytest.raises(AddressInUseError):
        async with _gateway(pki, tmp_path, listen=taken):
            pytest.fail("started on a port another socket holds")
    assert _lingering(threads) == []
