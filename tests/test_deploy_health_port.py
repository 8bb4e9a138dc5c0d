"""The plaintext health port (--health-listen) that container and Kubernetes
probes use: it answers health, follows the server's shutdown, and serves
nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strife.deploy import probe
from strife.rpc.authz import AuthzTable
from strife.rpc.server import AddressInUseError, ServerConfig, StrifeServer
from strife.v1 import coordinator_pb2, coordinator_pb2_grpc

from .conftest import Pki

TIMEOUT_S = 5.0


def _server(pki: Pki, health_listen: str = "127.0.0.1:0") -> StrifeServer:
    config = ServerConfig(
        name="t",
        listen="127.0.0.1:0",
        certs=pki.identity("gateway", "gw-1"),
        grace_s=1.0,
        health_listen=health_listen,
    )
    return StrifeServer(config, AuthzTable())


async def _status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        return int(answer.status)


async def test_health_port_answers_without_a_certificate(pki: Pki) -> None:
    server = _server(pki)
    await server.start()
    try:
        assert server.health_port not in (0, server.port)
        assert await _status(server.health_port) == health_pb2.HealthCheckResponse.SERVING
        # The probe the image's HEALTHCHECK runs agrees (it blocks: run it aside).
        assert await asyncio.to_thread(probe.check, f"127.0.0.1:{server.health_port}")
    finally:
        await server.stop(0.5)


async def test_health_port_serves_nothing_else(pki: Pki) -> None:
    server = _server(pki)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetDecision(
                    coordinator_pb2.GetDecisionRequest(transfer_id="x"), timeout=TIMEOUT_S
                )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0.5)


async def test_health_port_stops_with_the_server(pki: Pki) -> None:
    server = _server(pki)
    await server.start()
    port = server.health_port
    await server.stop(0.5)
    assert not await asyncio.to_thread(probe.check, f"127.0.0.1:{port}", "", 1.0)
    assert probe.main([f"127.0.0.1:{port}"]) == 1


async def test_a_taken_health_port_is_refused(pki: Pki) -> None:
    first = _server(pki)
    await first.start()
    try:
        second = _server(pki, health_listen=f"127.0.0.1:{first.health_port}")
        with pytest.raises(AddressInUseError):
            await second.start()
        await second.stop(0.1)
    finally:
        await first.stop(0.5)
