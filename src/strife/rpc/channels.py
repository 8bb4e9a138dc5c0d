"""Outgoing calls: long-lived mTLS channels, and no call without a deadline.

A new channel per call costs a TLS handshake (about 6x the call itself), so
channels are pooled per target for the life of the process. A call without a
deadline can hang forever on a dead peer, so the interceptor refuses it
before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from strife.observability import context as request_context
from strife.rpc.interceptors import REQUEST_ID_KEY
from strife.security.tls import TlsFiles, TlsMaterial

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A restarted peer must be reachable again within seconds, not gRPC's default
    # backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # Retries are Strife's business (idempotency keys, outbox), not the channel's.
    ("grpc.enable_retries", 0),
)


class MissingDeadlineError(ValueError):
    """An outgoing call had no timeout; every Strife call must have one."""


def _with_call_metadata(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    if details.timeout is None:
        raise MissingDeadlineError(f"{details.method!r} called without a timeout")
    info = request_context.current()
    if info is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if REQUEST_ID_KEY not in metadata:
        metadata.add(REQUEST_ID_KEY, info.request_id)
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class DeadlineInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Require a timeout on every call and propagate the caller's request id."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_call_metadata(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_call_metadata(client_call_details), request)


class ChannelPool:
    """One channel per target, created inside the running loop, closed together.

    `certs` is an identity folder (ca.crt, tls.crt, tls.key); `insecure`
    dials plaintext and exists only for debugging.
    """

    def __init__(self, certs: str | Path | TlsFiles | None, *, insecure: bool = False) -> None:
        if certs is None and not insecure:
            raise ValueError("an identity folder is required unless insecure=True")
        self._credentials = None if insecure else TlsMaterial.load(certs).channel_credentials()  # type: ignore[arg-type]
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            interceptors = [DeadlineInterceptor()]
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(
                    target, options=CHANNEL_OPTIONS, interceptors=interceptors
                )
            else:
                channel = grpc.aio.secure_channel(
                    target, self._credentials, options=CHANNEL_OPTIONS, interceptors=interceptors
                )
            self._channels[target] = channel
        return channel

    async def discard(self, target: str) -> None:
        """Close one target's channel, e.g. after the instance moved."""
        channel = self._channels.pop(target, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> ChannelPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
