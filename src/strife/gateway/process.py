"""The gateway process minus its command line: decision log, coordinator, server.

`strife-gateway` parses options into `GatewaySettings` and runs one
`GatewayProcess`; a test builds the same object in its own event loop.
`async with` opens and starts everything or nothing: whatever fails half-way
(a database that will not open, a port in use) is closed again before the
error leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter, Gauge, Histogram

from strife.balancer.registry import INCARNATION
from strife.gateway.auth import GATEWAY_SERVICE, TokenCheck
from strife.gateway.banks import BankDirectory, Banks, RegistryDirectory, StaticDirectory
from strife.gateway.coordinator import CoordinatorConfig, PaymentCoordinator
from strife.gateway.service import AUTHZ, COORDINATOR_SERVICE, CoordinatorServicer, GatewayServicer
from strife.gateway.store import GatewayStore, PaymentRecord, now_ms
from strife.gateway.throttle import LoginThrottle
from strife.gateway.tokens import TokenAuthority, load_or_create_key
from strife.observability.logging import get_logger
from strife.observability.metrics import REGISTRY as METRICS
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient, Heartbeat
from strife.rpc.server import ServerConfig, StrifeServer
from strife.rpc.serving import ServerProcess
from strife.storage.sqlite import Synchronous, watch_file
from strife.v1 import coordinator_pb2_grpc, gateway_pb2_grpc

OUTCOMES = Counter(
    "strife_payment_outcomes", "Decided payments", ["state", "reason"], registry=METRICS
)
BATCH_SIZE = Histogram(
    "strife_gateway_group_commit_batch_size",
    "Writes committed per SQLite transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=METRICS,
)
IN_FLIGHT = Gauge(
    "strife_gateway_payments_in_flight",
    "Payments this coordinator is deciding or delivering (bounded by --max-in-flight)",
    registry=METRICS,
)
UNSETTLED = Gauge(
    "strife_gateway_payments_unsettled",
    "Payments not yet acknowledged by every bank, as of the settler's last pass (at most 1000)",
    registry=METRICS,
)
_log = get_logger("strife.gateway")
# How often the database file's identity is checked (one stat).
WATCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class GatewaySettings:
    """One gateway replica: its name is its coordinator identity."""

    name: str
    db: Path
    token_key: Path
    banks: dict[str, str] = field(default_factory=dict)  # static NAME -> HOST:PORT
    # Replicated banks: NAME -> group file, called through the f + 1 client
    # signing with `bft_signing_key` (docs/bft.md).
    replicated: dict[str, Path] = field(default_factory=dict)
    bft_signing_key: Path | None = None
    balancer: str | None = None
    token_ttl_s: float = 900.0
    prepare_timeout_s: float = 2.0
    decision_timeout_s: float = 1.0
    max_in_flight: int = 256
    settle_interval_s: float = 0.5
    reply_after: Literal["decision", "settled"] = "decision"
    retention_s: float = 86_400.0
    synchronous: Synchronous = "FULL"
    max_batch: int = 256


class GatewayProcess(ServerProcess):
    """One `strife-gateway`: build it inside the running event loop, then
    `async with` it and `await serve()` until it is asked to stop."""

    def __init__(self, config: ServerConfig, settings: GatewaySettings) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self.server: StrifeServer | None = None  # built once the token key is loaded
        self.store: GatewayStore | None = None
        self.coordinator: PaymentCoordinator | None = None
        self._pool: ChannelPool | None = None
        self._heartbeat: Heartbeat | None = None
        self._conflict: asyncio.Future[Any] | None = None
        self._watch: asyncio.Task[str] | None = None
        self._background: list[asyncio.Task[Any]] = []

    @property
    def address(self) -> str:
        assert self.server is not None, "not started"
        return self.server.address

    async def serve(self) -> int:
        """Serve until asked to stop (0), or until storage fails, the database
        file is lost, or another live process takes this name (1)."""
        assert self.store is not None and self._watch is not None and self._conflict is not None
        stop_wait = asyncio.create_task(self._requested.wait())
        try:
            await asyncio.wait(
                {stop_wait, self.store.writer_task, self._conflict, self._watch},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop_wait.cancel()
        if self.store.writer_task.done():
            _log.error(
                "storage_failed",
                error=repr(self.store.writer_failure),
                detail="stopping; recovery runs on restart",
            )
            return 1
        if self._watch.done():
            _log.error(
                "database_lost",
                error=self._watch.result(),
                detail="stopping; restore the database before starting again",
            )
            return 1
        if self._conflict.done():
            _log.error(
                "name_in_use",
                name=self.settings.name,
                detail="another live gateway process runs under this name; stopping",
            )
            return 1
        return 0

    def _replicated(self, pool: ChannelPool) -> dict[str, Any]:
        """The f + 1 client of each replicated bank (none unless configured)."""
        settings = self.settings
        if not settings.replicated:
            return {}
        from strife.bft.bank_client import connect  # only a gateway configured with one

        assert settings.bft_signing_key is not None
        identity = f"gateway/{settings.name}"
        return {
            bank: connect(group, identity, settings.bft_signing_key, pool)
            for bank, group in settings.replicated.items()
        }

    async def _start(self) -> None:
        settings = self.settings
        store = self.store = await GatewayStore.open(
            settings.db,
            synchronous=settings.synchronous,
            max_batch=settings.max_batch,
            on_batch=BATCH_SIZE.observe,
        )
        pool = self._pool = ChannelPool(self.config.certs, insecure=self.config.insecure)
        directory: BankDirectory = StaticDirectory(settings.banks)
        if settings.balancer:
            directory = RegistryDirectory(BalancerClient(pool, settings.balancer), settings.banks)
        banks = Banks(directory, pool, self._replicated(pool))
        coordinator = self.coordinator = PaymentCoordinator(
            CoordinatorConfig(
                name=settings.name,
                prepare_timeout_s=settings.prepare_timeout_s,
                decision_timeout_s=settings.decision_timeout_s,
                max_in_flight=settings.max_in_flight,
                settle_interval_s=settings.settle_interval_s,
                reply_after=settings.reply_after,
            ),
            store,
            banks,
        )
        coordinator.on_outcome(_count)
        IN_FLIGHT.set_function(lambda: coordinator.in_flight)
        UNSETTLED.set_function(lambda: coordinator.unsettled)
        await coordinator.recover()
        tokens = TokenAuthority(load_or_create_key(settings.token_key), ttl_s=settings.token_ttl_s)
        server = self.server = StrifeServer(self.config, AUTHZ, checks=[TokenCheck(tokens)])
        servicer = GatewayServicer(store, coordinator, banks, tokens, LoginThrottle())
        server.add_service(
            GATEWAY_SERVICE,
            lambda s: gateway_pb2_grpc.add_PaymentGatewayServicer_to_server(servicer, s),
        )
        server.add_service(
            COORDINATOR_SERVICE,
            lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
                CoordinatorServicer(coordinator), s
            ),
        )
        await server.start()
        self._conflict = asyncio.get_running_loop().create_future()
        if settings.balancer:
            heartbeat = self._heartbeat = Heartbeat(
                pool,
                settings.balancer,
                service="gateway",
                instance=settings.name,
                address=self.address,
                metadata={INCARNATION: uuid.uuid4().hex},
            )
            await heartbeat.start()
            self._conflict = asyncio.ensure_future(heartbeat.conflict.wait())
            # Payments wait until the registry confirms no other process runs
            # under this name: two coordinators named alike would decide each
            # other's transfers.
            servicer.ready.clear()
            self._background.append(
                asyncio.create_task(_ready_when_registered(heartbeat, servicer), name="ready")
            )
        # A database deleted or replaced under a running gateway: every
        # payment it records from then on would be gone at its next start.
        self._watch = asyncio.create_task(_watch(store, settings.db), name="db-watch")
        self._background += [
            asyncio.create_task(coordinator.settle_forever(), name="settler"),
            asyncio.create_task(_sweep_forever(store, settings.retention_s), name="sweeper"),
        ]

    async def _close(self) -> None:
        """Stop whatever started, in reverse order; safe on a half-started process."""
        if self._conflict is not None:
            self._conflict.cancel()
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            await heartbeat.stop()
        if self.server is not None:
            await self.server.stop()
        tasks = [*self._background, *([self._watch] if self._watch is not None else [])]
        self._background, self._watch = [], None
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        coordinator, self.coordinator = self.coordinator, None
        if coordinator is not None:
            await coordinator.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        # Failed or not: an open connection's thread would keep the process
        # alive after it stopped serving.
        store, self.store = self.store, None
        if store is not None:
            await store.close()


def _count(record: PaymentRecord) -> None:
    OUTCOMES.labels(str(record.state), record.abort_reason).inc()


async def _sweep_forever(store: GatewayStore, retention_s: float) -> None:
    interval_s = min(60.0, max(1.0, retention_s / 10))
    while True:
        await asyncio.sleep(interval_s)
        removed = await store.sweep(now_ms() - int(retention_s * 1000))
        if removed:
            _log.info("idempotency_records_swept", removed=removed)


async def _watch(store: GatewayStore, db: Path) -> str:
    if store.file_identity is None:  # gone already
        return f"database {db} was deleted"
    return await watch_file(db, store.file_identity, WATCH_INTERVAL_S)


async def _ready_when_registered(heartbeat: Heartbeat, servicer: GatewayServicer) -> None:
    if await heartbeat.first_answer():
        servicer.ready.set()
