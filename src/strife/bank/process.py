"""The bank process minus its command line: stores, server, heartbeats, resolvers.

`strife-bank` parses options into `BankSettings` and runs one `BankProcess`;
a test builds the same object in its own event loop. `async with` opens and
starts everything or nothing: whatever fails half-way (a database that will
not open, a port in use) is closed again before the error leaves, because an
open SQLite connection's thread would keep a process that no longer serves
alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Gauge, Histogram

from strife.bank.host import BankHost
from strife.bank.resolver import Resolver, cancel, registry_lookup, static_lookup
from strife.bank.seed import SeedRow
from strife.bank.service import AUTHZ, SERVICE, BankServicer
from strife.bank.store import BankIdentity, BankStore, StoreConfig
from strife.observability.logging import get_logger
from strife.observability.metrics import REGISTRY as METRICS
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient, Heartbeat
from strife.rpc.server import ServerConfig, StrifeServer
from strife.rpc.serving import ServerProcess
from strife.security.passwords import hash_password
from strife.security.tls import TlsFiles
from strife.storage.sqlite import CommitLane, Synchronous, watch_file
from strife.v1 import bank_pb2_grpc

BATCH_SIZE = Histogram(
    "strife_bank_group_commit_batch_size",
    "Operations committed per SQLite transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=METRICS,
)
PREPARED = Gauge(
    "strife_bank_prepared_transfers",
    "Legs voted YES and not yet decided: their funds are held",
    ["bank"],
    registry=METRICS,
)
IN_DOUBT = Gauge(
    "strife_bank_in_doubt_transfers",
    "Prepared legs undecided past --in-doubt-timeout, being asked about at their coordinator",
    ["bank"],
    registry=METRICS,
)
_log = get_logger("strife.bank")
# How often each database file's identity is checked (one stat).
WATCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class BankSettings:
    """What one bank process serves and how; `banks` share its port."""

    name: str
    banks: tuple[str, ...]
    databases: Mapping[str, Path]
    # The identity each bank registers and asks coordinators with.
    identities: Mapping[str, Path | TlsFiles | None]
    seeds: Mapping[str, Sequence[SeedRow]] = field(default_factory=dict)
    cluster: str = ""
    coordinators: Mapping[str, str] = field(default_factory=dict)
    balancer: str | None = None
    synchronous: Synchronous = "FULL"
    max_batch: int = 256
    max_queue: int = 8192
    # A memory budget for the process, shared equally among its banks.
    resident_transfers: int = 20_000
    in_doubt_s: float = 5.0
    init: bool = False


class BankProcess(ServerProcess):
    """One `strife-bank`: build it inside the running event loop, then
    `async with` it and `await serve()` until it is asked to stop."""

    def __init__(self, config: ServerConfig, settings: BankSettings) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self.stores: dict[str, BankStore] = {}
        self.server = StrifeServer(config, AUTHZ)
        # Several banks' writers share one commit thread: a call that reaches
        # five banks then costs one thread hop, not five.
        self._lane = CommitLane() if len(settings.banks) > 1 else None
        self._pools: dict[str, ChannelPool] = {}
        self._heartbeats: list[Heartbeat] = []
        self._resolvers: list[asyncio.Task[None]] = []
        self._watches: dict[str, asyncio.Task[str]] = {}

    @property
    def address(self) -> str:
        return self.server.address

    async def serve(self) -> int:
        """Serve until asked to stop (0), or until a store fails or a database
        file is lost (1, with its log line)."""
        stop_wait = asyncio.create_task(self._requested.wait())
        writers = [store.writer_task for store in self.stores.values()]
        try:
            await asyncio.wait(
                {stop_wait, *writers, *self._watches.values()},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop_wait.cancel()
        failed = [bank for bank, store in self.stores.items() if store.writer_task.done()]
        lost = {bank: task.result() for bank, task in self._watches.items() if task.done()}
        if failed:
            # The healthy banks close cleanly; the failed one recovers from disk.
            _log.error(
                "storage_failed",
                banks=failed,
                error="; ".join(repr(self.stores[bank].writer_failure) for bank in failed),
                detail="stopping; state is recovered from disk on restart",
            )
            return 1
        if lost:
            _log.error(
                "database_lost",
                banks=sorted(lost),
                error="; ".join(lost.values()),
                detail="stopping; restore the database before starting again",
            )
            return 1
        return 0

    async def _start(self) -> None:
        settings = self.settings
        await self._open_stores()
        check = not self.config.insecure
        servicers = {b: BankServicer(b, s, check_coordinator=check) for b, s in self.stores.items()}
        host = BankHost(servicers, check_coordinator=check)
        self.server.add_service(
            SERVICE, lambda s: bank_pb2_grpc.add_BankServiceServicer_to_server(host, s)
        )
        await self.server.start()
        _log.info(
            "banks_hosted", name=settings.name, banks=list(settings.banks), address=self.address
        )
        # Each bank speaks for itself: the balancer lets only a bank's own
        # certificate register it, and a coordinator sees which bank asks.
        insecure = self.config.insecure
        for bank, store in self.stores.items():
            pool = self._pools[bank] = ChannelPool(settings.identities[bank], insecure=insecure)
            lookup = static_lookup(dict(settings.coordinators))
            if settings.balancer:
                # One registration per bank, all at the shared address:
                # gateways find banks by name, and batch by address.
                heartbeat = Heartbeat(
                    pool, settings.balancer, service="bank", instance=bank, address=self.address
                )
                await heartbeat.start()
                self._heartbeats.append(heartbeat)
                balancer = BalancerClient(pool, settings.balancer)
                lookup = registry_lookup(balancer, dict(settings.coordinators))
            resolver = Resolver(store, pool, lookup, in_doubt_s=settings.in_doubt_s)
            _export(resolver, bank)
            self._resolvers.append(asyncio.create_task(resolver.run(), name=f"resolver-{bank}"))
            # A database deleted or replaced under a running bank: what it
            # acknowledges from then on would be gone at its next start.
            self._watches[bank] = asyncio.create_task(_watch(store), name=f"db-watch-{bank}")

    async def _open_stores(self) -> None:
        """Every bank's store, opened and seeded side by side; if one cannot
        open, its error is raised once the others are open (and closed by the caller)."""
        banks = self.settings.banks
        results = await asyncio.gather(
            *(self._open_store(bank) for bank in banks), return_exceptions=True
        )
        for bank, result in zip(banks, results, strict=True):
            if isinstance(result, BankStore):
                self.stores[bank] = result
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure

    async def _open_store(self, bank: str) -> BankStore:
        settings = self.settings
        store = await BankStore.open(
            StoreConfig(
                path=settings.databases[bank],
                synchronous=settings.synchronous,
                max_batch=settings.max_batch,
                max_queue=settings.max_queue,
                resident_transfers=settings.resident_transfers // len(settings.banks),
                identity=BankIdentity(bank, settings.cluster),
                init=settings.init,
            ),
            on_batch=BATCH_SIZE.observe,
            lane=self._lane,
        )
        try:
            opened = await store.seed(list(settings.seeds.get(bank, ())), hash_password)
        except BaseException:
            await store.close()
            raise
        _log.info("seeded", bank=bank, accounts_opened=opened)
        return store

    async def _close(self) -> None:
        """Stop whatever started, in reverse order; safe on a half-started process."""
        heartbeats, self._heartbeats = self._heartbeats, []
        await asyncio.gather(*(heartbeat.stop() for heartbeat in heartbeats))
        await self.server.stop()
        resolvers, self._resolvers = self._resolvers, []
        for resolver in resolvers:
            await cancel(resolver)
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            watch.cancel()
        await asyncio.gather(*watches.values(), return_exceptions=True)
        pools, self._pools = self._pools, {}
        await asyncio.gather(*(pool.close() for pool in pools.values()))
        # Every store, failed or not: an open connection's thread would keep
        # the process alive after it stopped serving.
        stores, self.stores = self.stores, {}
        await asyncio.gather(*(store.close() for store in stores.values()))
        if self._lane is not None:
            self._lane.close()
            self._lane = None


def _export(resolver: Resolver, bank: str) -> None:
    """The resolver's counts of its last pass, read whenever /metrics is scraped."""
    PREPARED.labels(bank).set_function(lambda: resolver.prepared)
    IN_DOUBT.labels(bank).set_function(lambda: resolver.in_doubt)


async def _watch(store: BankStore) -> str:
    identity = store.file_identity
    if identity is None:  # gone already
        return f"database {store.config.path} was deleted"
    return await watch_file(store.config.path, identity, WATCH_INTERVAL_S)
