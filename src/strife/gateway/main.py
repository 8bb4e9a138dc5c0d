"""`strife-gateway`: a payment gateway replica and two-phase-commit coordinator."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from typing import Any

import click
from prometheus_client import Counter, Gauge, Histogram

from strife.balancer.registry import INCARNATION
from strife.gateway.auth import GATEWAY_SERVICE, TokenCheck
from strife.gateway.banks import BankDirectory, Banks, RegistryDirectory, StaticDirectory
from strife.gateway.coordinator import CoordinatorConfig, PaymentCoordinator
from strife.gateway.service import (
    AUTHZ,
    COORDINATOR_SERVICE,
    CoordinatorServicer,
    GatewayServicer,
)
from strife.gateway.store import GatewayStore, PaymentRecord, now_ms
from strife.gateway.throttle import LoginThrottle
from strife.gateway.tokens import TokenAuthority, load_or_create_key
from strife.observability.logging import get_logger
from strife.program import entry as program_entry
from strife.rpc.channels import ChannelPool
from strife.rpc.cli import named_addresses, server_config, server_options
from strife.rpc.discovery import BalancerClient, Heartbeat
from strife.rpc.server import AddressInUseError, StrifeServer, run
from strife.security.tls import TlsFiles, TlsMaterial
from strife.storage.sqlite import StorageError, watch_file
from strife.v1 import coordinator_pb2_grpc, gateway_pb2_grpc

OUTCOMES = Counter("strife_payment_outcomes", "Decided payments", ["state", "reason"])
BATCH_SIZE = Histogram(
    "strife_gateway_group_commit_batch_size",
    "Writes committed per SQLite transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
IN_FLIGHT = Gauge(
    "strife_gateway_payments_in_flight",
    "Payments this coordinator is deciding or delivering (bounded by --max-in-flight)",
)
UNSETTLED = Gauge(
    "strife_gateway_payments_unsettled",
    "Payments not yet acknowledged by every bank, as of the settler's last pass (at most 1000)",
)
_log = get_logger("strife.gateway")
# How often the database file's identity is checked (one stat).
WATCH_INTERVAL_S = 1.0


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


def _require_own_name(certs: Path | TlsFiles | None, name: str) -> None:
    """A coordinator's name is what banks record and check against its
    certificate: a gateway running under another name would act as a
    coordinator it is not (or two processes as one)."""
    if certs is None:
        return
    found = TlsMaterial.load(certs).spiffe_id()
    expected = f"/gateway/{name}"
    if found is None or not found.endswith(expected) or found.count("/") != 4:
        raise click.UsageError(
            f"--name {name!r} does not match this gateway's certificate"
            f" ({found or 'no SPIFFE id'}); use the certificate of gateway {name!r}"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--name", default="gw-1", show_default=True, help="Replica name; must match its certificate."
)
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file.  [default: data/gateway-NAME.db]",
)  # fmt: skip
@click.option("--bank", "banks", multiple=True, help="NAME=HOST:PORT of a bank.")
@click.option("--balancer", default=None, help="Balancer HOST:PORT: register, and find banks.")
@click.option(
    "--token-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 key shared by all replicas (created if missing)."
    " Default: token-signing.key beside the --certs folder.",
)
@click.option("--token-ttl", "token_ttl_s", default=900.0, show_default=True)
@click.option("--prepare-timeout", "prepare_timeout_s", default=2.0, show_default=True)
@click.option("--decision-timeout", "decision_timeout_s", default=1.0, show_default=True)
@click.option("--max-in-flight", default=256, show_default=True, help="Concurrent 2PC payments.")
@click.option(
    "--settle-interval", "settle_interval_s", default=0.5, show_default=True,
    help="Seconds between resends of undelivered decisions (doubles while failing).",
)  # fmt: skip
@click.option(
    "--reply-after", type=click.Choice(["decision", "settled"]), default="decision",
    show_default=True,
    help="Answer a payment once its decision is durable (banks hear it right after),"
    " or only once every bank acknowledged it.",
)  # fmt: skip
@click.option("--retention", "retention_s", default=86_400.0, show_default=True)
@click.option(
    "--synchronous", type=click.Choice(["FULL", "NORMAL", "EXTRA"]), default="FULL",
    show_default=True,
)  # fmt: skip
@click.option("--max-batch", default=256, show_default=True)
@server_options
def main(**options: Any) -> None:
    """Serve the customer API and coordinate payments with two-phase commit."""
    config = server_config(options["name"], options, identity=f"gateway-{options['name']}")
    _require_own_name(config.certs, options["name"])
    db: Path = options["db"] or Path("data") / f"gateway-{options['name']}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    bank_addresses = named_addresses(options["banks"])
    key_path = options["token_key"]
    if key_path is None:
        if config.certs is None:
            raise click.UsageError("--token-key is required with --insecure")
        anchor = config.certs if isinstance(config.certs, Path) else config.certs.cert.parent
        key_path = anchor.parent / "token-signing.key"

    async def serve() -> None:
        try:
            store = await GatewayStore.open(
                db,
                synchronous=options["synchronous"],
                max_batch=options["max_batch"],
                on_batch=BATCH_SIZE.observe,
            )
        except StorageError as exc:
            _log.error("storage_failed", error=str(exc), detail="not starting")
            sys.exit(1)
        try:
            code = await serve_with(store)
        finally:
            # Failed or not: an open connection's thread would keep the
            # process alive after it stopped serving.
            await store.close()
        if code:
            sys.exit(code)

    async def serve_with(store: GatewayStore) -> int:
        """Serve until asked to stop (0), or until storage fails or another
        process takes this name (1)."""
        pool = ChannelPool(config.certs, insecure=config.insecure)
        try:
            return await serve_payments(store, pool)
        finally:
            await pool.close()

    async def serve_payments(store: GatewayStore, pool: ChannelPool) -> int:
        directory: BankDirectory = StaticDirectory(bank_addresses)
        if options["balancer"]:
            directory = RegistryDirectory(BalancerClient(pool, options["balancer"]), bank_addresses)
        banks = Banks(directory, pool)
        coordinator = PaymentCoordinator(
            CoordinatorConfig(
                name=options["name"],
                prepare_timeout_s=options["prepare_timeout_s"],
                decision_timeout_s=options["decision_timeout_s"],
                max_in_flight=options["max_in_flight"],
                settle_interval_s=options["settle_interval_s"],
                reply_after=options["reply_after"],
            ),
            store,
            banks,
        )
        coordinator.on_outcome(_count)
        IN_FLIGHT.set_function(lambda: coordinator.in_flight)
        UNSETTLED.set_function(lambda: coordinator.unsettled)
        await coordinator.recover()
        tokens = TokenAuthority(load_or_create_key(key_path), ttl_s=options["token_ttl_s"])
        server = StrifeServer(config, AUTHZ, checks=[TokenCheck(tokens)])
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
        requested = server.install_signal_handlers()
        try:
            await server.start()
        except AddressInUseError as exc:
            _log.error("listen_failed", address=config.listen, error=str(exc))
            await coordinator.close()
            return 1
        heartbeat = None
        conflict: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if options["balancer"]:
            heartbeat = Heartbeat(
                pool, options["balancer"], service="gateway", instance=options["name"],
                address=server.address, metadata={INCARNATION: uuid.uuid4().hex},
            )  # fmt: skip
            await heartbeat.start()
            conflict = asyncio.ensure_future(heartbeat.conflict.wait())
            # Payments wait until the registry confirms no other process runs
            # under this name: two coordinators named alike would decide each
            # other's transfers.
            servicer.ready.clear()
            ready = asyncio.ensure_future(_ready_when_registered(heartbeat, servicer))
            background_ready = [ready]
        else:
            background_ready = []
        # A database deleted or replaced under a running gateway: every
        # payment it records from then on would be gone at its next start.
        watch = asyncio.create_task(_watch(store, db), name="db-watch")
        background = [
            asyncio.create_task(coordinator.settle_forever(), name="settler"),
            asyncio.create_task(_sweep_forever(store, options["retention_s"]), name="sweeper"),
            *background_ready,
        ]
        stop_wait = asyncio.create_task(requested.wait())
        await asyncio.wait(
            {stop_wait, store.writer_task, conflict, watch}, return_when=asyncio.FIRST_COMPLETED
        )
        cloned = conflict.done()
        conflict.cancel()
        failed = store.writer_task.done()
        lost = watch.result() if watch.done() else None
        if heartbeat is not None:
            await heartbeat.stop()
        await server.stop()
        for task in [*background, stop_wait, watch]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await coordinator.close()
        if failed:
            _log.error(
                "storage_failed", error=repr(store.writer_failure),
                detail="stopping; recovery runs on restart",
            )  # fmt: skip
            return 1
        if lost is not None:
            _log.error(
                "database_lost", error=lost,
                detail="stopping; restore the database before starting again",
            )  # fmt: skip
            return 1
        if cloned:
            _log.error(
                "name_in_use", name=options["name"],
                detail="another live gateway process runs under this name; stopping",
            )  # fmt: skip
            return 1
        return 0

    run(serve)


# The console script: this process is the program (signals, uvloop).
entry = program_entry(main)
