"""The server's one interceptor: logging, peer authentication, authorization, checks.

Every call passes the same gates in this order: a request context and its
log line, the caller's SPIFFE identity from the verified certificate, the
method's allowed roles (deny by default), then the service's own checks
(a customer's bearer token on the gateway).

`intercept_service` only sees the method name and metadata, so the gates run
in a wrapper around the handler, inside the RPC's task, where
`context.auth_context()` holds the verified certificate. The wrapper is
built once per method and reused; per call there is one coroutine frame
and no closure, generator or context manager. Parsed identities are cached
by the verified certificate (its PEM, as gRPC hands it over).

A handler that fails with anything but a status of its own (an abort) ends
the call `INTERNAL` with a generic message; the exception is logged here and
its text never reaches the caller.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, cast

import grpc
from grpc.aio import ServerInterceptor

from strife.errors import AnyContext, Reason, abort
from strife.observability import context as request_context
from strife.observability.logging import get_logger, log_line
from strife.observability.metrics import IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS, SERVED
from strife.rpc.authz import AuthzTable
from strife.security.identity import VerifiedPeer, peer_certificate, peer_of_pem

# The interceptor wraps every method of every service: its messages are any.
# (Strings: grpc.RpcMethodHandler is generic only in its type stubs.)
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
Metadata = Collection[tuple[str, str | bytes]]

REQUEST_ID_KEY = "x-request-id"
_IDENTITY_CACHE_LIMIT = 4096
_HANDLER_CACHE_LIMIT = 1024
INTERNAL_MESSAGE = "internal error"
_log = get_logger("strife.rpc")


class CallRefusedError(Exception):
    """A check refused the call: it ends with this status and ErrorInfo reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class CallCheck(Protocol):
    """A service's own gate after authorization (e.g. the customer's bearer token)."""

    def applies_to(self, method: str) -> bool:
        """Decided once per method, when its wrapper is built."""

    def check(self, metadata: Metadata, info: request_context.RequestInfo) -> None:
        """Raise CallRefusedError to refuse; may record who the caller is in `info`."""


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str, meta: dict[str, str]):
        super().__init__(message)
        self.code, self.reason, self.message, self.meta = code, reason, message, meta

    async def send(self, context: AnyContext) -> None:
        await abort(context, self.code, self.reason, self.message, self.meta or None)


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
_FACTORIES: tuple[tuple[str, Callable[..., Handler]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _status_code(raw: Any) -> grpc.StatusCode | None:
    if raw is None or isinstance(raw, grpc.StatusCode):
        return raw
    return _CODES.get(raw, grpc.StatusCode.UNKNOWN)


class _Gate:
    """The per-method part: what was decided once when the method's wrapper was built."""

    __slots__ = ("_counts", "allowed", "checks", "latency", "method")

    def __init__(self, method: str, allowed: frozenset[str], checks: tuple[CallCheck, ...]):
        self.method = method
        self.allowed = allowed
        self.checks = checks
        self.latency = RPC_LATENCY.labels(method)
        self._counts: dict[str, Any] = {}

    def count(self, code: str) -> Any:
        """The request counter of this method and status code (children cached)."""
        child = self._counts.get(code)
        if child is None:
            child = self._counts[code] = RPC_REQUESTS.labels(self.method, code)
        return child


class ServerGuard(ServerInterceptor):
    """Logging -> peer identity -> authorization -> checks, in one pass per call."""

    def __init__(
        self,
        authz: AuthzTable,
        trust_domain: str,
        *,
        insecure: bool = False,
        checks: Sequence[CallCheck] = (),
    ) -> None:
        self._authz = authz
        self._trust_domain = trust_domain
        self._insecure = insecure
        self._checks = tuple(checks)
        self._handlers: dict[str, tuple[Handler, Handler]] = {}
        self._peers: dict[bytes, VerifiedPeer | None] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if len(self._handlers) < _HANDLER_CACHE_LIMIT:
            self._handlers[method] = (handler, wrapped)
        return wrapped

    # ------------------------------------------------------------ wrapping

    def _wrap(self, method: str, handler: Handler) -> Handler:
        """A copy of handler behind the gates, keeping its kind (grpc.aio drives an
        async-generator behaviour differently from a coroutine one)."""
        gate = _Gate(
            method,
            self._authz.allowed_roles(method),
            tuple(c for c in self._checks if c.applies_to(method)),
        )
        attr, factory = next((a, f) for a, f in _FACTORIES if getattr(handler, a) is not None)
        inner = getattr(handler, attr)
        enter, leave = self._enter, self._leave

        if inspect.isasyncgenfunction(inner):

            async def behavior_gen(request: Any, context: AnyContext) -> AsyncIterator[Any]:
                info, started, refusal = enter(gate, context)
                failed = True
                try:
                    if refusal is not None:
                        await refusal.send(context)
                    try:
                        async for item in inner(request, context):
                            yield item
                    except Exception as exc:
                        await _internal(context, exc)
                    failed = False
                finally:
                    leave(gate, info, context, started, failed)

            behavior: Any = behavior_gen
        else:

            async def behavior_coro(request: Any, context: AnyContext) -> Any:
                info, started, refusal = enter(gate, context)
                failed = True
                try:
                    if refusal is not None:
                        await refusal.send(context)
                    try:
                        result = await inner(request, context)
                    except Exception as exc:
                        await _internal(context, exc)
                    failed = False
                    return result
                finally:
                    leave(gate, info, context, started, failed)

            behavior = behavior_coro
        return factory(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # ---------------------------------------------------------- the gates

    def _enter(
        self, gate: _Gate, context: AnyContext
    ) -> tuple[request_context.RequestInfo, float, _Refusal | None]:
        metadata: Metadata = context.invocation_metadata() or ()
        request_id = ""
        for key, value in metadata:
            if key == REQUEST_ID_KEY and isinstance(value, str) and len(value) <= 64:
                request_id = value
        info = request_context.RequestInfo(
            request_id=request_id or uuid.uuid4().hex[:16],
            method=gate.method,
            peer_address=context.peer(),
        )
        request_context.begin(info)
        IN_FLIGHT.enter()
        refusal = None
        try:
            self._admit(gate, context, metadata, info)
        except _Refusal as refused:
            refusal = refused
        return info, time.perf_counter(), refusal

    def _admit(
        self,
        gate: _Gate,
        context: AnyContext,
        metadata: Metadata,
        info: request_context.RequestInfo,
    ) -> None:
        if self._insecure:
            info.peer, info.role = "insecure", "insecure"
        else:
            peer = self._peer(context)
            identity = None if peer is None else peer.identity
            if peer is None or identity is None:
                raise _Refusal(
                    grpc.StatusCode.UNAUTHENTICATED,
                    Reason.PEER_NOT_AUTHENTICATED,
                    "the client certificate carries no SPIFFE id of this trust domain",
                    {},
                )
            info.peer = identity.spiffe_id
            info.peer_cert_sha256 = peer.cert_sha256
            info.role, info.peer_name = identity.role, identity.name
            if identity.role not in gate.allowed:
                raise _Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    Reason.ROLE_NOT_ALLOWED,
                    f"role {identity.role!r} may not call {gate.method}",
                    {"role": identity.role, "method": gate.method},
                )
        for check in gate.checks:
            try:
                check.check(metadata, info)
            except CallRefusedError as exc:
                raise _Refusal(exc.code, exc.reason, exc.message, {}) from None

    def _peer(self, context: AnyContext) -> VerifiedPeer | None:
        """The verified certificate's identity and thumbprint, parsed once per
        certificate (a dict lookup by its PEM per call)."""
        # gRPC's auth context maps each property to a list; the stubs promise an Iterable.
        pem = peer_certificate(cast("Mapping[str, Sequence[bytes]]", context.auth_context()))
        if pem is None:
            return None
        if pem in self._peers:
            return self._peers[pem]
        peer = peer_of_pem(pem, self._trust_domain)
        if len(self._peers) < _IDENTITY_CACHE_LIMIT:
            self._peers[pem] = peer
        return peer

    @staticmethod
    def _leave(
        gate: _Gate,
        info: request_context.RequestInfo,
        context: AnyContext,
        started: float,
        failed: bool,
    ) -> None:
        IN_FLIGHT.leave()
        elapsed = time.perf_counter() - started
        code = _status_code(context.code()) or (
            grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        )
        gate.count(code.name).inc()
        gate.latency.observe(elapsed)
        SERVED.add(gate.method, elapsed)
        log_line(
            "strife.rpc",
            "error" if code in _SERVER_FAULTS else "info",
            "rpc",
            {
                "method": gate.method,
                "peer": info.peer,
                "peer_address": info.peer_address,
                "customer": info.customer or None,
                "code": code.name,
                "reason": info.error_reason or None,
                "duration_ms": round(elapsed * 1000, 3),
            },
            {"request_id": info.request_id, **info.fields},
        )


async def _internal(context: AnyContext, exc: Exception) -> None:
    """End the call INTERNAL for an exception the handler did not turn into a
    status. An abort already ended it (grpc.aio raises AbortError): let it pass."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    _log.error("rpc_failed", error_type=type(exc).__name__, exc_info=exc)
    await abort(context, grpc.StatusCode.INTERNAL, Reason.INTERNAL, INTERNAL_MESSAGE)
