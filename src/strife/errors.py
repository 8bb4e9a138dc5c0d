"""Canonical gRPC errors with a `google.rpc.ErrorInfo`, both ways.

Servers abort with a status code, an UPPER_SNAKE reason in domain "strife" and
optional metadata; clients turn any `grpc.RpcError` back into a typed
exception whose class says what the caller needs to decide: retry or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, NoReturn, TypeAlias, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from strife.observability import context as request_context

DOMAIN = "strife"

# The server side of a call, whatever its messages: what a helper takes that only
# aborts the call or reads its metadata, for the handlers of every method.
AnyContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class Reason(StrEnum):
    """Every reason Strife sends. Clients match on these, never on messages."""

    INVALID_AMOUNT = "INVALID_AMOUNT"
    INVALID_CURRENCY = "INVALID_CURRENCY"
    INVALID_REQUEST = "INVALID_REQUEST"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    AMOUNT_OVERFLOW = "AMOUNT_OVERFLOW"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"
    TRANSFER_ID_REUSED = "TRANSFER_ID_REUSED"
    TRANSFER_NOT_FOUND = "TRANSFER_NOT_FOUND"
    TRANSFER_ABORTED = "TRANSFER_ABORTED"
    TRANSFER_COMMITTED = "TRANSFER_COMMITTED"
    NOT_COORDINATOR = "NOT_COORDINATOR"
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
    PEER_NOT_AUTHENTICATED = "PEER_NOT_AUTHENTICATED"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_NOT_BOUND_TO_PEER = "TOKEN_NOT_BOUND_TO_PEER"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    NOT_ACCOUNT_OWNER = "NOT_ACCOUNT_OWNER"
    LOGIN_THROTTLED = "LOGIN_THROTTLED"
    PASSWORD_CHECKS_BUSY = "PASSWORD_CHECKS_BUSY"
    TOO_MANY_IN_FLIGHT = "TOO_MANY_IN_FLIGHT"
    QUEUE_FULL = "QUEUE_FULL"
    BANK_UNAVAILABLE = "BANK_UNAVAILABLE"
    BANK_NOT_FOUND = "BANK_NOT_FOUND"
    BANK_REQUIRED = "BANK_REQUIRED"
    INVALID_IDEMPOTENCY_KEY = "INVALID_IDEMPOTENCY_KEY"
    COORDINATOR_RESTARTED = "COORDINATOR_RESTARTED"
    PREPARE_TIMEOUT = "PREPARE_TIMEOUT"
    NO_INSTANCE = "NO_INSTANCE"
    REGISTRY_FULL = "REGISTRY_FULL"
    NOT_INSTANCE_OWNER = "NOT_INSTANCE_OWNER"
    INSTANCE_LIVE = "INSTANCE_LIVE"
    INSTANCE_DOWN = "INSTANCE_DOWN"
    NOT_READY = "NOT_READY"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    INTERNAL = "INTERNAL"


def make_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    retry_delay_s: float | None = None,
) -> grpc.Status:
    """A `grpc.Status` whose trailers carry ErrorInfo (and RetryInfo).

    Messages and metadata often quote the caller's input; each is cut to a
    bound, so an oversized field is answered with its own refusal and never
    overflows the trailers (which would turn the answer into RESOURCE_EXHAUSTED).
    """
    info = error_details_pb2.ErrorInfo(
        reason=str(reason),
        domain=DOMAIN,
        metadata={_bounded(k, 64): _bounded(v, 256) for k, v in (metadata or {}).items()},
    )
    message = _bounded(message, 1024)
    details = [_pack(info)]
    if retry_delay_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(0, round(retry_delay_s * 1000)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def abort(
    context: AnyContext,
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    retry_delay_s: float | None = None,
) -> NoReturn:
    """End the RPC with a canonical status and ErrorInfo; never returns."""
    info = request_context.current()
    if info is not None:
        info.error_reason = str(reason)
    status = make_status(code, reason, message, metadata, retry_delay_s)
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover


# --- client side -------------------------------------------------------------


class StrifeError(Exception):
    """A failed Strife call: the gRPC code plus the ErrorInfo reason."""

    retryable = False

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(
            f"{code.name} {reason}: {message}" if reason else f"{code.name}: {message}"
        )
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s


class InvalidArgument(StrifeError):
    pass


class NotFound(StrifeError):
    pass


class AlreadyExists(StrifeError):
    pass


class FailedPrecondition(StrifeError):
    pass


class Aborted(StrifeError):
    pass


class Unauthenticated(StrifeError):
    pass


class PermissionDenied(StrifeError):
    pass


class ResourceExhausted(StrifeError):
    retryable = True


class Unavailable(StrifeError):
    retryable = True


class DeadlineExceeded(StrifeError):
    retryable = True


class Internal(StrifeError):
    pass


class InsufficientFunds(FailedPrecondition):
    pass


class CurrencyMismatch(FailedPrecondition):
    pass


class AccountNotFound(NotFound):
    pass


class IdempotencyKeyReused(InvalidArgument):
    pass


class RequestInProgress(Aborted):
    """The same idempotency key is still being processed; ask again later."""

    retryable = True


_BY_CODE: dict[grpc.StatusCode, type[StrifeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

_BY_REASON: dict[str, type[StrifeError]] = {
    Reason.INSUFFICIENT_FUNDS: InsufficientFunds,
    Reason.CURRENCY_MISMATCH: CurrencyMismatch,
    Reason.ACCOUNT_NOT_FOUND: AccountNotFound,
    Reason.IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReused,
    Reason.REQUEST_IN_PROGRESS: RequestInProgress,
}


# The trailer that carries a google.rpc.Status (grpc_status's GRPC_DETAILS_METADATA_KEY,
# which its type stubs leave out).
_DETAILS_KEY = "grpc-status-details-bin"


def from_rpc_error(error: grpc.RpcError) -> StrifeError:
    """The typed exception for a failed call, reading ErrorInfo from trailers."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason, metadata, retry_after_s = "", {}, None
    # Trailers iterate as (key, value) pairs: grpc.aio.Metadata, and the sync API's
    # _Metadatum namedtuples, which grpcio's type stubs give only .key and .value.
    trailers = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in trailers:
        if key != _DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after_s = retry.retry_delay.ToMilliseconds() / 1000
    if code is grpc.StatusCode.UNAVAILABLE and _PEER_NAME_CHECK in message:
        message += (
            " (the server's certificate is not the identity this call must reach: another "
            "service, or a certificate from an older strife-certs that must be re-issued)"
        )
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, Internal)
    return cls(code, reason, message, metadata, retry_after_s)


# What gRPC says when the server's certificate lacks the name a channel checks.
_PEER_NAME_CHECK = "Hostname Verification Check failed"
