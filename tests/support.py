"""What many tests share: polling for a condition, and a real in-loop Strife
server with small test servicers behind the real plumbing."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from strife.errors import Reason, abort
from strife.observability import context as request_context
from strife.observability.logging import get_logger
from strife.rpc.authz import AuthzTable
from strife.rpc.server import ServerConfig, StrifeServer
from strife.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

COORDINATOR = "strife.v1.Coordinator"
GATEWAY = "strife.v1.PaymentGateway"
_log = get_logger("tests.servicer")


async def until(
    predicate: Callable[[], Awaitable[bool] | bool],
    what: str,
    *,
    within_s: float = 20.0,
    every_s: float = 0.05,
) -> float:
    """Poll `predicate` until it holds; the seconds that took. Fails, naming
    `what`, after `within_s`: a test waits for a condition, never a bare sleep."""
    started = time.monotonic()
    while True:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return time.monotonic() - started
        if time.monotonic() - started > within_s:
            pytest.fail(f"timed out after {within_s:g} s waiting for {what}")
        await asyncio.sleep(every_s)


class DecisionServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """Answers COMMIT for ids starting with "c", ABORT otherwise."""

    async def GetDecision(
        self,
        request: coordinator_pb2.GetDecisionRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.GetDecisionRequest, coordinator_pb2.GetDecisionResponse
        ],
    ) -> coordinator_pb2.GetDecisionResponse:
        if not request.transfer_id:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.INVALID_REQUEST,
                "transfer_id is required",
                {"field": "transfer_id"},
            )
        decision = (
            coordinator_pb2.DECISION_COMMIT
            if request.transfer_id.startswith("c")
            else coordinator_pb2.DECISION_ABORT
        )
        return coordinator_pb2.GetDecisionResponse(
            transfer_id=request.transfer_id, decision=decision
        )


class CarelessGatewayServicer(gateway_pb2_grpc.PaymentGatewayServicer):
    """Logs its request carelessly, to prove redaction holds anyway."""

    async def Login(
        self,
        request: gateway_pb2.LoginRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.LoginRequest, gateway_pb2.LoginResponse],
    ) -> gateway_pb2.LoginResponse:
        metadata = dict(context.invocation_metadata() or ())
        request_context.note(amount_minor=1234)
        info = request_context.current()
        if info is not None:
            info.customer = "cust-42"
        _log.info(
            "login_attempt",
            username=request.username,
            password=request.password,
            authorization=metadata.get("authorization"),
            headers=metadata,
            note=f"got {metadata.get('authorization')!s}",
        )
        if request.password != "right":
            await abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.INVALID_CREDENTIALS,
                "wrong username or password",
            )
        return gateway_pb2.LoginResponse(customer_id="cust-42", access_token="tok")


def authz_table() -> AuthzTable:
    return AuthzTable(
        {
            f"/{COORDINATOR}/GetDecision": ["bank"],
            f"/{GATEWAY}/Login": ["client", "admin"],
        }
    )


@asynccontextmanager
async def running_server(
    certs: Path | None, *, trust_domain: str = "strife.local", listen: str = "127.0.0.1:0"
) -> AsyncIterator[StrifeServer]:
    server = StrifeServer(
        ServerConfig(
            name="test", listen=listen, certs=certs, trust_domain=trust_domain, grace_s=1.0
        ),
        authz_table(),
    )
    server.add_service(
        COORDINATOR,
        lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(DecisionServicer(), s),
    )
    server.add_service(
        GATEWAY,
        lambda s: gateway_pb2_grpc.add_PaymentGatewayServicer_to_server(
            # Login only: the other methods answer UNIMPLEMENTED, as the generated base does.
            CarelessGatewayServicer(),  # type: ignore[abstract]
            s,
        ),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(1.0)  # lets handlers finish their log lines
