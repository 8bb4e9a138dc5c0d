"""Server interceptors, in this order: logging -> peer authentication -> authorization.

`intercept_service` only sees the method name and metadata, so each
interceptor wraps the handler it returns; the wrapper runs inside the RPC's
task, where `context.auth_context()` holds the verified peer certificate.
"""

from __future__ import annotations

import inspect
import time
import uuid
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
from grpc.aio import ServerInterceptor

from strife.errors import Reason, abort
from strife.observability import context as request_context
from strife.observability.logging import get_logger
from strife.observability.metrics import IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS
from strife.rpc.authz import AuthzTable
from strife.security.identity import identity_from_auth_context

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
# Entered before the handler and left after it; raising (e.g. via `abort`)
# in __aenter__ stops the call.
Around = Callable[[Any], AbstractAsyncContextManager[None]]

_log = get_logger("strife.rpc")
REQUEST_ID_KEY = "x-request-id"


def _wrap(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """A copy of handler whose behaviour runs inside `around`, keeping its kind.

    grpc.aio drives a streaming handler differently when it is an async
    generator, so the wrapper is a generator exactly when the wrapped
    behaviour is one.
    """
    attr, factory = next((a, f) for a, f in _FACTORIES if getattr(handler, a) is not None)
    inner = getattr(handler, attr)
    if inspect.isasyncgenfunction(inner):

        async def behavior_gen(request: Any, context: Any) -> AsyncIterator[Any]:
            async with around(context):
                async for item in inner(request, context):
                    yield item

        behavior: Any = behavior_gen
    else:

        async def behavior_coro(request: Any, context: Any) -> Any:
            async with around(context):
                return await inner(request, context)

        behavior = behavior_coro
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


_FACTORIES: tuple[tuple[str, Any], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


class WrappingInterceptor(ServerInterceptor):
    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(handler, self._around_for(handler_call_details))

    @abstractmethod
    def _around_for(self, details: grpc.HandlerCallDetails) -> Around:
        """The context manager that runs around one call of this method."""


def _status_code(raw: Any) -> grpc.StatusCode | None:
    if raw is None or isinstance(raw, grpc.StatusCode):
        return raw
    return _CODES.get(raw, grpc.StatusCode.UNKNOWN)


class LoggingInterceptor(WrappingInterceptor):
    """One log line and the RPC metrics per call, with the facts handlers noted."""

    def _around_for(self, details: grpc.HandlerCallDetails) -> Around:
        method: str = details.method
        request_id = ""
        for key, value in details.invocation_metadata or ():
            if key == REQUEST_ID_KEY and isinstance(value, str) and len(value) <= 64:
                request_id = value
        request_id = request_id or uuid.uuid4().hex[:16]

        @asynccontextmanager
        async def around(context: Any) -> AsyncIterator[None]:
            info = request_context.RequestInfo(
                request_id=request_id, method=method, peer_address=context.peer()
            )
            request_context.begin(info)
            started = time.perf_counter()
            failed = False
            IN_FLIGHT.enter()
            try:
                yield
            except BaseException:
                failed = True
                raise
            finally:
                IN_FLIGHT.leave()
                elapsed = time.perf_counter() - started
                code = _status_code(context.code()) or (
                    grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
                )
                RPC_REQUESTS.labels(method, code.name).inc()
                RPC_LATENCY.labels(method).observe(elapsed)
                level = "error" if code in _SERVER_FAULTS else "info"
                getattr(_log, level)(
                    "rpc",
                    method=method,
                    peer=info.peer,
                    peer_address=info.peer_address,
                    customer=info.customer or None,
                    request_id=info.request_id,
                    code=code.name,
                    reason=info.error_reason or None,
                    duration_ms=round(elapsed * 1000, 3),
                    **info.fields,
                )

        return around


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


class PeerAuthInterceptor(WrappingInterceptor):
    """Establish the caller's SPIFFE identity from the verified certificate."""

    def __init__(self, trust_domain: str, insecure: bool = False) -> None:
        self._trust_domain = trust_domain
        self._insecure = insecure

    def _around_for(self, details: grpc.HandlerCallDetails) -> Around:
        @asynccontextmanager
        async def around(context: Any) -> AsyncIterator[None]:
            info = request_context.current()
            if self._insecure:
                if info is not None:
                    info.peer, info.role = "insecure", "insecure"
            else:
                identity = identity_from_auth_context(context.auth_context(), self._trust_domain)
                if identity is None:
                    await abort(
                        context,
                        grpc.StatusCode.UNAUTHENTICATED,
                        Reason.PEER_NOT_AUTHENTICATED,
                        "the client certificate carries no SPIFFE id of this trust domain",
                    )
                if info is not None:
                    info.peer = identity.spiffe_id
                    info.role, info.peer_name = identity.role, identity.name
            yield

        return around


class AuthzInterceptor(WrappingInterceptor):
    """Refuse methods the caller's role may not call (deny by default)."""

    def __init__(self, table: AuthzTable, insecure: bool = False) -> None:
        self._table = table
        self._insecure = insecure

    def _around_for(self, details: grpc.HandlerCallDetails) -> Around:
        method = details.method
        allowed = self._table.allowed_roles(method)

        @asynccontextmanager
        async def around(context: Any) -> AsyncIterator[None]:
            info = request_context.current()
            role = info.role if info is not None else ""
            if not self._insecure and role not in allowed:
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    Reason.ROLE_NOT_ALLOWED,
                    f"role {role or 'unknown'!r} may not call {method}",
                    {"role": role, "method": method},
                )
            yield

        return around
