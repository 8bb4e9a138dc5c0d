"""mTLS, peer authentication and authorization on a real in-loop server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from strife import program
from strife.errors import PermissionDenied, Unauthenticated, from_rpc_error
from strife.rpc.channels import ChannelPool, MissingDeadlineError, health_stub
from strife.rpc.server import AddressInUseError
from strife.security.tls import TlsMaterial
from strife.v1 import coordinator_pb2, coordinator_pb2_grpc, gateway_pb2, gateway_pb2_grpc

from .conftest import Pki
from .support import COORDINATOR, running_server

TIMEOUT_S = 5.0


async def decide(pool: ChannelPool, address: str, transfer_id: str = "c-1") -> int:
    stub = coordinator_pb2_grpc.CoordinatorStub(pool.get(address))
    reply = await stub.GetDecision(
        coordinator_pb2.GetDecisionRequest(transfer_id=transfer_id), timeout=TIMEOUT_S
    )
    return int(reply.decision)


async def test_bank_may_ask_for_a_decision(pki: Pki) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("bank", "alpha")) as pool,
    ):
        assert await decide(pool, server.address, "c-7") == coordinator_pb2.DECISION_COMMIT
        assert await decide(pool, server.address, "x-7") == coordinator_pb2.DECISION_ABORT


async def test_wrong_role_is_permission_denied(pki: Pki) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("client", "mallory")) as pool,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(pool, server.address)
        error = from_rpc_error(caught.value)
        assert isinstance(error, PermissionDenied)
        assert error.reason == "ROLE_NOT_ALLOWED"
        assert error.metadata == {"role": "client", "method": f"/{COORDINATOR}/GetDecision"}


async def test_method_missing_from_table_is_denied(pki: Pki) -> None:
    """Deny by default: GetBalance is served but nobody was granted it."""
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("admin", "root")) as pool,
    ):
        stub = gateway_pb2_grpc.PaymentGatewayStub(pool.get(server.address))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetBalance(gateway_pb2.GetBalanceRequest(), timeout=TIMEOUT_S)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def _bad_client_fails_and_good_client_works(
    server_address: str, bad: Path, good: Path
) -> None:
    async with ChannelPool(bad) as bad_pool, ChannelPool(good) as good_pool:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(bad_pool, server_address)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await decide(good_pool, server_address) == coordinator_pb2.DECISION_COMMIT


async def test_certificate_from_another_ca_is_refused(pki: Pki, foreign_identity: Path) -> None:
    async with running_server(pki.identity("gateway", "gw-1")) as server:
        await _bad_client_fails_and_good_client_works(
            server.address, foreign_identity, pki.identity("bank", "alpha")
        )


async def test_expired_certificate_is_refused(pki: Pki, expired_identity: Path) -> None:
    async with running_server(pki.identity("gateway", "gw-1")) as server:
        await _bad_client_fails_and_good_client_works(
            server.address, expired_identity, pki.identity("bank", "alpha")
        )


async def test_no_client_certificate_is_refused(pki: Pki) -> None:
    material = TlsMaterial.load(pki.identity("bank", "alpha"))
    async with running_server(pki.identity("gateway", "gw-1")) as server:
        channel = grpc.aio.secure_channel(
            server.address, grpc.ssl_channel_credentials(root_certificates=material.ca)
        )
        try:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetDecision(
                    coordinator_pb2.GetDecisionRequest(transfer_id="c-1"), timeout=TIMEOUT_S
                )
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close()
        async with ChannelPool(pki.identity("bank", "alpha")) as pool:
            assert await decide(pool, server.address) == coordinator_pb2.DECISION_COMMIT


async def test_plaintext_client_is_refused(pki: Pki) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(None, insecure=True) as pool,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(pool, server.address)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_other_trust_domain_is_unauthenticated(pki: Pki) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1"), trust_domain="payments.example") as server,
        ChannelPool(pki.identity("bank", "alpha")) as pool,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(pool, server.address)
        error = from_rpc_error(caught.value)
        assert isinstance(error, Unauthenticated)
        assert error.reason == "PEER_NOT_AUTHENTICATED"


async def test_call_without_deadline_is_refused_before_sending(pki: Pki) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("bank", "alpha")) as pool,
    ):
        stub = coordinator_pb2_grpc.CoordinatorStub(pool.get(server.address))
        with pytest.raises(MissingDeadlineError):
            await stub.GetDecision(coordinator_pb2.GetDecisionRequest(transfer_id="c-1"))


async def test_second_server_on_a_taken_port_fails_loudly(pki: Pki) -> None:
    async with running_server(pki.identity("gateway", "gw-1")) as first:
        with pytest.raises(AddressInUseError):
            async with running_server(pki.identity("gateway", "gw-2"), listen=first.address):
                pass


async def test_health_and_reflection_answer_over_mtls(pki: Pki) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("client", "default")) as pool,
    ):
        channel = pool.get(server.address)
        health = health_stub(channel)
        for service in ("", COORDINATOR):
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(
                health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT_S
            )
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND

        # What reflection_pb2_grpc.ServerReflectionStub makes, whose type stubs are untyped.
        reflect: grpc.aio.StreamStreamMultiCallable[
            reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
        ] = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = reflect(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT_S
        )
        names = set()
        async for response in call:
            names |= {s.name for s in response.list_services_response.service}
        assert {COORDINATOR, "strife.v1.PaymentGateway", "grpc.health.v1.Health"} <= names


async def test_a_server_in_someone_elses_process_leaves_its_signals_alone(pki: Pki) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    async with running_server(pki.identity("gateway", "gw-1")) as server:
        requested = server.install_signal_handlers()
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        assert not requested.is_set()


async def test_sigterm_stops_the_server_gracefully(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(program, "_claimed", True)  # as a console script's process
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("bank", "alpha")) as pool,
    ):
        assert await decide(pool, server.address) == coordinator_pb2.DECISION_COMMIT
        requested = server.install_signal_handlers()
        waiter = asyncio.create_task(server.wait_for_signal(requested))
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(waiter, TIMEOUT_S)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(pool, server.address)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
