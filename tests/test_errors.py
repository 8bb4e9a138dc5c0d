"""Status + ErrorInfo on the wire, and back to typed exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from strife.errors import (
    IdempotencyKeyReused,
    InsufficientFunds,
    Internal,
    RequestInProgress,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
    make_status,
)


@dataclass(frozen=True)
class PlainStatus:
    """A status without trailers: what a call that failed without ErrorInfo ends with."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[()] = ()


class FakeRpcError(grpc.RpcError):
    """What a client sees: code, details and trailers of a finished call."""

    def __init__(self, status: grpc.Status | PlainStatus) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def test_reason_and_metadata_round_trip() -> None:
    status = make_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
        "available 5.00 USD < 12.00 USD",
        {"account": "alpha/acc-1"},
    )
    error = from_rpc_error(FakeRpcError(status))
    assert isinstance(error, InsufficientFunds)
    assert not error.retryable
    assert error.reason == "INSUFFICIENT_FUNDS"
    assert error.metadata == {"account": "alpha/acc-1"}
    assert error.message == "available 5.00 USD < 12.00 USD"


def test_retry_info_is_carried() -> None:
    status = make_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED", "slow down", retry_delay_s=2.5
    )
    error = from_rpc_error(FakeRpcError(status))
    assert isinstance(error, ResourceExhausted)
    assert error.retryable
    assert error.retry_after_s == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("code", "reason", "cls", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED", IdempotencyKeyReused, False),
        (grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS", RequestInProgress, True),
        (grpc.StatusCode.UNAVAILABLE, "", Unavailable, True),
        (grpc.StatusCode.DATA_LOSS, "", Internal, False),
    ],
)
def test_classes(code: grpc.StatusCode, reason: str, cls: type, retryable: bool) -> None:
    plain = PlainStatus(code, "m")
    status = make_status(code, reason, "m") if reason else plain
    error = from_rpc_error(FakeRpcError(status))
    assert type(error) is cls
    assert error.retryable is retryable


def test_a_status_quoting_oversized_input_stays_small() -> None:
    """Refusals quote the caller's input; a huge field must not make the answer
    itself too large for gRPC's trailers."""
    status = make_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_CURRENCY",
        "unsupported " + "U" * 100_000,
        {"currency": "U" * 100_000},
    )
    assert len(status.details) <= 1024
    assert sum(len(value) for _, value in status.trailing_metadata) < 4096
