"""Outgoing calls: long-lived mTLS channels, and no call without a deadline.

A new channel per call costs a TLS handshake (about 6x the call itself), so
channels are pooled per target for the life of the process. A call without a
deadline can hang forever on a dead peer, so the channel refuses it before
anything is sent.
"""

from __future__ import annotations

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


def _with_request_id(metadata: Any) -> Any:
    """Forward the request id of the RPC being served, if any, to this call."""
    info = request_context.current()
    if info is None:
        return metadata
    items = list(metadata or ())
    if not any(key == REQUEST_ID_KEY for key, _ in items):
        items.append((REQUEST_ID_KEY, info.request_id))
    return tuple(items)


class _Checked:
    """A multicallable that refuses to send without a deadline.

    A plain wrapper rather than a grpc.aio client interceptor: interceptors
    run each call through extra tasks, ~140 µs per call here, on every hop
    of every payment.
    """

    __slots__ = ("_inner", "_method")

    def __init__(self, inner: Any, method: str) -> None:
        self._inner = inner
        self._method = method

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        if timeout is None:
            raise MissingDeadlineError(f"{self._method!r} called without a timeout")
        return self._inner(request, timeout=timeout, metadata=_with_request_id(metadata), **kwargs)


class CheckedChannel:
    """A grpc.aio channel whose calls all need a timeout; everything else passes through."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _Checked:
        return _Checked(self._channel.unary_unary(method, *args, **kwargs), method)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _Checked:
        return _Checked(self._channel.unary_stream(method, *args, **kwargs), method)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _Checked:
        return _Checked(self._channel.stream_unary(method, *args, **kwargs), method)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _Checked:
        return _Checked(self._channel.stream_stream(method, *args, **kwargs), method)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class ChannelPool:
    """One channel per target, created inside the running loop, closed together.

    `certs` is an identity folder (ca.crt, tls.crt, tls.key); `insecure`
    dials plaintext and exists only for debugging.
    """

    def __init__(self, certs: str | Path | TlsFiles | None, *, insecure: bool = False) -> None:
        if certs is None and not insecure:
            raise ValueError("an identity folder is required unless insecure=True")
        self._credentials = None if insecure else TlsMaterial.load(certs).channel_credentials()  # type: ignore[arg-type]
        self._channels: dict[str, Any] = {}

    def get(self, target: str) -> Any:
        """The target's channel (a `CheckedChannel`: calls without a timeout are refused)."""
        channel = self._channels.get(target)
        if channel is None:
            if self._credentials is None:
                raw = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            else:
                raw = grpc.aio.secure_channel(target, self._credentials, options=CHANNEL_OPTIONS)
            channel = self._channels[target] = CheckedChannel(raw)
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
