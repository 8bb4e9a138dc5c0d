"""Outgoing calls: long-lived mTLS channels, and no call without a deadline.

A new channel per call costs a TLS handshake (about 6x the call itself), so
channels are pooled per target for the life of the process. A call without a
deadline can hang forever on a dead peer, so the channel refuses it before
anything is sent.

Each channel also names whom it must reach (a `Peer`: a role, and the
instance's name when it is known). The TLS handshake then checks the server's
certificate for that identity's host name (`certs.identity_host`), so a call
never sends a byte, a password least of all, to a peer of another identity.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strife.observability import context as request_context
from strife.rpc.interceptors import REQUEST_ID_KEY
from strife.security import certs as _certs
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


@dataclass(frozen=True, slots=True)
class Peer:
    """Whom a channel must reach: `role`, and instance `name` when the caller knows it."""

    role: str
    name: str | None = None

    def host(self, trust_domain: str) -> str:
        """The host name the server's certificate must carry for the handshake to pass."""
        if self.name:
            return _certs.identity_host(trust_domain, self.role, self.name)
        return _certs.role_host(trust_domain, self.role)

    def __str__(self) -> str:
        return f"{self.role}/{self.name or '*'}"


ANY_GATEWAY = Peer("gateway")
ANY_BALANCER = Peer("balancer")


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


class HealthStub(Protocol):
    """The standard health service's stub on a grpc.aio channel, as far as Strife
    calls it (grpcio-health-checking's type stubs declare the class without its methods)."""

    Check: grpc.aio.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    ]


def health_stub(channel: grpc.aio.Channel) -> HealthStub:
    """`grpc.health.v1.Health` on `channel`."""
    return cast(HealthStub, health_pb2_grpc.HealthStub(channel))


# Longer than any call Strife makes on a pooled channel (each has a deadline).
DISCARD_GRACE_S = 10.0


class ChannelPool:
    """One channel per target and peer, created inside the running loop, closed together.

    `certs` is an identity folder (ca.crt, tls.crt, tls.key); `insecure`
    dials plaintext and exists only for debugging. `peer` is whom a channel
    must reach when `get` names nobody (a client's pool: any gateway). With
    neither, a channel checks only the CA and the target's host name, which
    every service certificate carries: for tests and tools, never for a call
    that sends anything secret.
    """

    def __init__(
        self,
        certs: str | Path | TlsFiles | None,
        *,
        insecure: bool = False,
        peer: Peer | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        if certs is None and not insecure:
            raise ValueError("an identity folder is required unless insecure=True")
        self._credentials = None
        self._trust_domain = _certs.DEFAULT_TRUST_DOMAIN
        if not insecure:
            assert certs is not None  # refused above unless insecure
            material = TlsMaterial.load(certs)
            self._credentials = material.channel_credentials()
            own = material.spiffe_id()
            with contextlib.suppress(ValueError):
                self._trust_domain = _certs.parse_spiffe_id(own or "").trust_domain
        self._peer = peer
        self._options = CHANNEL_OPTIONS
        if max_message_bytes != MAX_MESSAGE_BYTES:  # a replica's links to its peers
            self._options = (
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                *CHANNEL_OPTIONS[2:],
            )
        self._channels: dict[tuple[str, Peer | None], CheckedChannel] = {}
        self._closing: dict[asyncio.Future[Any], CheckedChannel] = {}

    def get(self, target: str, peer: Peer | None = None) -> grpc.aio.Channel:
        """The channel to `target` that reaches only `peer` (default: the pool's);
        a `CheckedChannel`: calls without a timeout are refused."""
        peer = peer or self._peer
        channel = self._channels.get((target, peer))
        if channel is None:
            if self._credentials is None:
                raw = grpc.aio.insecure_channel(target, options=self._options)
            else:
                options = self._options
                if peer is not None:
                    # The handshake fails unless the certificate carries this name.
                    name = peer.host(self._trust_domain)
                    options = (*options, ("grpc.ssl_target_name_override", name))
                raw = grpc.aio.secure_channel(target, self._credentials, options=options)
            channel = self._channels[(target, peer)] = CheckedChannel(raw)
        # Typed as what it stands in for, so generated stubs over it are the async ones.
        return cast(grpc.aio.Channel, channel)

    async def discard(self, target: str) -> None:
        """Forget the target's channels, e.g. after the instance moved: the next
        call dials afresh. The old channel is closed with a grace period, not at
        once: other tasks may have calls on it (a heartbeat, a settler), and a
        channel closed under a call cancels it, which its caller sees as
        `CancelledError`, as if it had been cancelled itself, ending loops meant
        to run for the life of the process."""
        for key in [key for key in self._channels if key[0] == target]:
            channel = self._channels.pop(key)
            closing = asyncio.ensure_future(channel.close(DISCARD_GRACE_S))
            self._closing[closing] = channel
            closing.add_done_callback(lambda done: self._closing.pop(done, None))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        channels += self._closing.values()  # discarded ones: no more grace now
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> ChannelPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
