"""gRPC at the edges of a handler, without gRPC: the server context and the errors.

A real handler ends a call with `context.abort(code, details,
trailing_metadata)`; `SimContext` turns that into `RpcAbort`, and the network
hands the caller the `grpc.aio.AioRpcError` a real channel would raise, with
the same status code and the same `google.rpc.ErrorInfo` in its trailers, so
`strife.errors.from_rpc_error` reads it as it reads a real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message as Proto

from strife.errors import make_status

Message = TypeVar("Message", bound=Proto)


class RpcAbort(Exception):
    """A handler ended its call with a status (what `context.abort` does)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, Any]]
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)

    def to_error(self) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(
            self.code, grpc.aio.Metadata(), grpc.aio.Metadata(*self.trailing), self.details
        )


class SimContext:
    """The few `grpc.aio.ServicerContext` methods Strife's handlers call."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, Any]] = (),
    ) -> NoReturn:
        raise RpcAbort(code, details, trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass

    def peer(self) -> str:
        return f"sim:{self._peer}"

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return ()


def rpc_error(code: grpc.StatusCode, reason: str, message: str) -> grpc.aio.AioRpcError:
    """The error a client sees for a status carrying ErrorInfo (`reason` may be empty:
    a transport failure has none)."""
    if not reason:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), message)
    status = make_status(code, reason, message)
    return RpcAbort(status.code, status.details, status.trailing_metadata).to_error()


def copied(message: Message) -> Message:
    """What the other side receives: a copy, as if serialised (never a shared object)."""
    duplicate: Message = type(message)()
    duplicate.CopyFrom(message)
    return duplicate
