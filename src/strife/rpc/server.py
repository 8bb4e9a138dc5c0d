"""The one way a Strife process serves gRPC.

mTLS with client certificates required, one interceptor (logging -> peer
authentication -> authorization -> the service's checks), health and reflection,
message-size limits, a port that cannot be shared by accident, and a graceful
stop on SIGTERM/SIGINT when the server runs as its process's program
(`strife.program`); a server started in-process by other code leaves the
host's signals alone.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from strife.observability.logging import get_logger
from strife.observability.metrics import serve_metrics
from strife.program import owns_signals
from strife.rpc.addresses import join_host_port, split_host_port
from strife.rpc.authz import AuthzTable
from strife.rpc.channels import MAX_MESSAGE_BYTES
from strife.rpc.interceptors import CallCheck, ServerGuard
from strife.rpc.limits import connection_cap, raise_open_files_limit
from strife.security.certs import DEFAULT_TRUST_DOMAIN
from strife.security.tls import TlsFiles, TlsMaterial

_log = get_logger("strife.server")


class AddressInUseError(OSError):
    """The listen address is taken; a second instance must not share it silently."""


@dataclass(frozen=True)
class ServerConfig:
    name: str
    listen: str
    certs: Path | TlsFiles | None
    insecure: bool = False
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    grace_s: float = 5.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int | None = None
    metrics_listen: str | None = None
    # Plaintext grpc.health.v1 only, for probes that cannot present a client
    # certificate (Kubernetes' native gRPC probes, a container health check).
    health_listen: str | None = None
    # A connection must finish TLS and HTTP/2 set-up within this, or is closed.
    handshake_timeout_s: float = 5.0
    # Incoming connections at once; None: below the open-file limit (rpc.limits).
    max_connections: int | None = None
    # A connection with no call for this long is closed (its client reconnects).
    max_connection_idle_s: float = 900.0


class StrifeServer:
    """A grpc.aio server with Strife's security and plumbing; add services, then start.

    Build it inside the running event loop: grpc.aio objects bind to the loop
    that exists when they are created.
    """

    def __init__(
        self,
        config: ServerConfig,
        authz: AuthzTable,
        checks: Sequence[CallCheck] = (),
    ) -> None:
        if config.certs is None and not config.insecure:
            raise ValueError("--certs is required (or --insecure for debugging)")
        self.config = config
        self.open_files = raise_open_files_limit()
        self.max_connections = max_connections = config.max_connections or connection_cap(
            self.open_files
        )
        self.server = grpc.aio.server(
            interceptors=[
                ServerGuard(authz, config.trust_domain, insecure=config.insecure, checks=checks)
            ],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # A client pinging more often than that is sent away.
                ("grpc.http2.max_ping_strikes", 2),
                # Connections that never finish their handshake, go quiet, or
                # stop answering pings give their descriptor back.
                ("grpc.server_handshake_timeout_ms", int(config.handshake_timeout_s * 1000)),
                ("grpc.max_connection_idle_ms", int(config.max_connection_idle_s * 1000)),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                *(
                    [("grpc.max_allowed_incoming_connections", max_connections)]
                    if max_connections
                    else []
                ),
            ],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        ]
        self.port = 0
        self.health_port = 0
        self._health_server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()

    def add_service(self, full_name: str, register: Callable[[grpc.aio.Server], None]) -> None:
        """Register a servicer; `full_name` is announced by health and reflection."""
        register(self.server)
        self._service_names.append(full_name)

    async def start(self) -> int:
        host, port = split_host_port(self.config.listen)
        address = join_host_port(host, port)
        try:
            if self.config.insecure:
                _log.warning("insecure_server", detail="plaintext, no peer authentication")
                self.port = self.server.add_insecure_port(address)
            else:
                assert self.config.certs is not None
                creds = TlsMaterial.load(self.config.certs).server_credentials()
                self.port = self.server.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise AddressInUseError(f"cannot listen on {address}: {exc}") from exc
        if self.port == 0:
            raise AddressInUseError(f"cannot listen on {address}: address in use")
        reflection.enable_server_reflection(
            [*self._service_names, reflection.SERVICE_NAME], self.server
        )
        await self.server.start()
        for name in self._service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.config.health_listen:
            await self._start_health(self.config.health_listen)
        if self.config.metrics_listen:
            metrics_port = serve_metrics(self.config.metrics_listen)
            _log.info("metrics_listening", port=metrics_port)
        _settle_gc()
        _log.info(
            "server_started",
            name=self.config.name,
            address=join_host_port(host, self.port),
            open_files=self.open_files,
            max_connections=self.max_connections,
        )
        return self.port

    async def _start_health(self, listen: str) -> None:
        """The health service alone on its own plaintext port: it tells only
        SERVING or NOT_SERVING, the same answers as the mTLS port's."""
        host, port = split_host_port(listen)
        address = join_host_port(host, port)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            self.health_port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise AddressInUseError(f"cannot listen on {address}: {exc}") from exc
        if self.health_port == 0:
            raise AddressInUseError(f"cannot listen on {address}: address in use")
        await server.start()
        self._health_server = server
        _log.info("health_listening", port=self.health_port)

    @property
    def address(self) -> str:
        host, _ = split_host_port(self.config.listen)
        return join_host_port("127.0.0.1" if host in ("0.0.0.0", "::") else host, self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking calls, let running ones finish for the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_s if grace_s is None else grace_s)
        if self._health_server is not None:
            await self._health_server.stop(None)
        self._stopped.set()
        _log.info("server_stopped", name=self.config.name)

    def install_signal_handlers(self) -> asyncio.Event:
        """An event set by SIGTERM or SIGINT (instead of the default kill).

        Only in a Strife program's main thread; elsewhere the host keeps its
        signals (SIGTERM still ends the host) and the event is set only by
        whoever holds it.
        """
        return install_stop_signals()

    async def wait_for_signal(self, requested: asyncio.Event | None = None) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        requested = requested or self.install_signal_handlers()
        try:
            await requested.wait()
            _log.info("shutdown_requested", name=self.config.name)
            await self.stop()
        finally:
            remove_stop_signals()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop_signals(requested: asyncio.Event | None = None) -> asyncio.Event:
    """Make SIGTERM/SIGINT set `requested`, if this process is a Strife program.

    A host that calls a command in-process (a test, another program) keeps
    its own handling: a server must never be what keeps it alive.
    """
    requested = requested or asyncio.Event()
    if owns_signals():
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, requested.set)
    return requested


def remove_stop_signals() -> None:
    if owns_signals():
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _settle_gc() -> None:
    """Move start-up objects out of the collector's sight and collect less often.

    Every call allocates, and the default generation-0 threshold (700) made
    the cycle collector walk the whole young heap hundreds of times a second
    under load; what is left after start-up (modules, the server, caches)
    lives as long as the process. Measured with 100 clients: about 7% more
    payments per second (benchmarks/bench_load.py, docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a process's main coroutine: on uvloop in a Strife program.

    In-process (not a Strife program) it runs on the stdlib loop, where an
    exception from the host's own signal handler (pytest-timeout's SIGALRM,
    KeyboardInterrupt) ends the run; uvloop would log it and keep serving.
    """
    if not owns_signals():
        asyncio.run(main())
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(main())
    else:
        uvloop.run(main())
