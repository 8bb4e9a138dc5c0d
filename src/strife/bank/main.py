"""`strife-bank`: one bank's ledger server and two-phase-commit participant,
or several banks' behind one port (`--bank`, see docs/bank.md)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import Gauge, Histogram

from strife.bank.host import BankHost
from strife.bank.resolver import Resolver, cancel, registry_lookup, static_lookup
from strife.bank.seed import SeedError, SeedRow, load_seed
from strife.bank.service import AUTHZ, SERVICE, BankServicer
from strife.bank.store import BankIdentity, BankStore, StoreConfig
from strife.observability.logging import get_logger
from strife.program import entry as program_entry
from strife.rpc.channels import ChannelPool
from strife.rpc.cli import named_addresses, require_identity_hosts, server_config, server_options
from strife.rpc.discovery import BalancerClient, Heartbeat
from strife.rpc.server import AddressInUseError, StrifeServer, run
from strife.security.passwords import PASSWORD_CHECKS, hash_password
from strife.security.tls import TlsFiles, TlsMaterial
from strife.storage.sqlite import CommitLane, StorageError, watch_file
from strife.v1 import bank_pb2_grpc

BATCH_SIZE = Histogram(
    "strife_bank_group_commit_batch_size",
    "Operations committed per SQLite transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
PREPARED = Gauge(
    "strife_bank_prepared_transfers",
    "Legs voted YES and not yet decided: their funds are held",
    ["bank"],
)
IN_DOUBT = Gauge(
    "strife_bank_in_doubt_transfers",
    "Prepared legs undecided past --in-doubt-timeout, being asked about at their coordinator",
    ["bank"],
)
_log = get_logger("strife.bank")
# How often each database file's identity is checked (one stat).
WATCH_INTERVAL_S = 1.0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--name", "--bank-name", "name", required=True,
    help="Process name and identity (certs/bank-NAME); also the bank when no --bank.",
)  # fmt: skip
@click.option(
    "--bank", "banks", multiple=True,
    help="A bank this process serves, each with its own database; repeatable.  [default: NAME]",
)  # fmt: skip
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file of the one bank served.  [default: DATA_DIR/bank-BANK.db]",
)  # fmt: skip
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
    show_default=True, help="Where each bank's database is: DATA_DIR/bank-BANK.db.",
)  # fmt: skip
@click.option(
    "--seed", "seeds", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Seed file (CSV or JSON); repeatable: each bank loads its rows from all of them.",
)  # fmt: skip
@click.option(
    "--init", is_flag=True,
    help="Create the bank's database if it is missing or empty (first start). Without it a "
    "missing or empty database stops the process: a lost database must be restored, not "
    "recreated. On an existing database of the same bank it changes nothing.",
)  # fmt: skip
@click.option(
    "--coordinator",
    "coordinators",
    multiple=True,
    help="NAME=HOST:PORT of a gateway, for resolving in-doubt transfers.",
)
@click.option(
    "--synchronous",
    type=click.Choice(["FULL", "NORMAL", "EXTRA"]),
    default="FULL",
    show_default=True,
    help="SQLite durability; FULL fsyncs every commit.",
)
@click.option("--balancer", default=None, help="Balancer HOST:PORT: register, find gateways.")
@click.option(
    "--bank-certs", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="With several banks: the folder of their own identities (bank-BANK/), under which "
    "each registers and asks coordinators.  [default: the folder holding --certs]",
)  # fmt: skip
@click.option("--max-batch", default=256, show_default=True, help="Group-commit batch cap.")
@click.option("--max-queue", default=8192, show_default=True, help="Write queue bound.")
@click.option(
    "--resident-transfers", default=20_000, show_default=True, type=click.IntRange(min=100),
    help="Finished transfers kept in memory by the process, shared equally among its banks "
    "(older ones are read back from disk when asked for).",
)  # fmt: skip
@click.option("--in-doubt-timeout", "in_doubt_s", default=5.0, show_default=True)
@click.option(
    "--max-password-checks", default=PASSWORD_CHECKS.max_pending, show_default=True,
    type=click.IntRange(min=1),
    help="Password checks running or queued at once; more are refused (RESOURCE_EXHAUSTED).",
)  # fmt: skip
@server_options
def main(**options: Any) -> None:
    """Serve one bank, or several (--bank) behind one port: accounts, holds,
    ledger, two-phase-commit participant."""
    name: str = options["name"]
    banks: tuple[str, ...] = options["banks"] or (name,)
    if not name or not all(banks):
        raise click.BadParameter("bank and process names must not be empty")
    if len(set(banks)) != len(banks):
        raise click.BadParameter("a bank is listed twice", param_hint="--bank")
    if options["db"] is not None and len(banks) > 1:
        raise click.UsageError(
            "--db names one database, but this process serves several banks; "
            "each bank's is DATA_DIR/bank-BANK.db (set --data-dir)"
        )
    config = server_config(name, options, identity=f"bank-{name}")
    PASSWORD_CHECKS.max_pending = options["max_password_checks"]
    dbs = {bank: options["db"] or options["data_dir"] / f"bank-{bank}.db" for bank in banks}
    for db in dbs.values():
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        seeds = {bank: _seed_rows(options["seeds"], bank) for bank in banks}
    except (SeedError, OSError, ValueError) as exc:
        raise click.ClickException(f"seed: {exc}") from exc
    coordinators = named_addresses(options["coordinators"])
    own = _bank_identities(banks, name, config.certs, options["bank_certs"])
    if config.certs is not None and banks != (name,):
        # Gateways dial each bank by its name: this host's certificate must say
        # it serves them all, or their handshakes fail.
        require_identity_hosts(config.certs, serves=banks)
    cluster = _cluster_id(config.certs)

    # Several banks' writers share one commit thread (CommitLane): a call that
    # reaches five banks then costs one thread hop, not five.
    lane = CommitLane() if len(banks) > 1 else None

    async def open_bank(bank: str) -> BankStore:
        store = await BankStore.open(
            StoreConfig(
                path=dbs[bank],
                synchronous=options["synchronous"],
                max_batch=options["max_batch"],
                max_queue=options["max_queue"],
                # A memory budget for the process, not for each bank it serves.
                resident_transfers=options["resident_transfers"] // len(banks),
                identity=BankIdentity(bank, cluster),
                init=options["init"],
            ),
            on_batch=BATCH_SIZE.observe,
            lane=lane,
        )
        try:
            opened = await store.seed(seeds[bank], hash_password)
        except BaseException:
            await store.close()
            raise
        _log.info("seeded", bank=bank, accounts_opened=opened)
        return store

    async def serve() -> None:
        try:
            stores = await _open_all(banks, open_bank)
        except StorageError as exc:
            _log.error("storage_failed", error=str(exc), detail="not starting")
            sys.exit(1)
        try:
            code = await serve_banks(stores)
        finally:
            # Every store, failed or not: an open connection's thread would
            # keep the process alive after it stopped serving.
            await asyncio.gather(*(store.close() for store in stores.values()))
            if lane is not None:
                lane.close()
        if code:
            sys.exit(code)

    async def serve_banks(stores: dict[str, BankStore]) -> int:
        """Serve until asked to stop (0) or until storage fails (1)."""
        server = StrifeServer(config, AUTHZ)
        check = not config.insecure
        servicers = {b: BankServicer(b, s, check_coordinator=check) for b, s in stores.items()}
        host = BankHost(servicers, check_coordinator=check)
        server.add_service(
            SERVICE, lambda s: bank_pb2_grpc.add_BankServiceServicer_to_server(host, s)
        )
        requested = server.install_signal_handlers()
        try:
            await server.start()
        except AddressInUseError as exc:
            _log.error("listen_failed", address=config.listen, error=str(exc))
            return 1
        _log.info("banks_hosted", name=name, banks=list(banks), address=server.address)
        # Each bank speaks for itself: the balancer lets only a bank's own
        # certificate register it, and a coordinator sees which bank asks.
        pools = {bank: ChannelPool(own[bank], insecure=config.insecure) for bank in banks}
        heartbeats: list[Heartbeat] = []
        resolvers: list[asyncio.Task[None]] = []
        for bank, store in stores.items():
            lookup = static_lookup(coordinators)
            if options["balancer"]:
                # One registration per bank, all at the shared address: gateways
                # find banks by name, and batch by address.
                heartbeat = Heartbeat(
                    pools[bank], options["balancer"], service="bank", instance=bank,
                    address=server.address,
                )  # fmt: skip
                await heartbeat.start()
                heartbeats.append(heartbeat)
                balancer = BalancerClient(pools[bank], options["balancer"])
                lookup = registry_lookup(balancer, coordinators)
            runner = Resolver(store, pools[bank], lookup, in_doubt_s=options["in_doubt_s"])
            _export(runner, bank)
            resolvers.append(asyncio.create_task(runner.run(), name=f"resolver-{bank}"))
        stop_wait = asyncio.create_task(requested.wait())
        writers = [store.writer_task for store in stores.values()]
        # A database deleted or replaced under a running bank: what it
        # acknowledges from then on would be gone at its next start.
        watches = {
            bank: asyncio.create_task(_watch(store), name=f"db-watch-{bank}")
            for bank, store in stores.items()
        }
        await asyncio.wait(
            {stop_wait, *writers, *watches.values()}, return_when=asyncio.FIRST_COMPLETED
        )
        failed = [bank for bank, store in stores.items() if store.writer_task.done()]
        lost = {bank: task.result() for bank, task in watches.items() if task.done()}
        await asyncio.gather(*(heartbeat.stop() for heartbeat in heartbeats))
        await server.stop()
        for resolver in resolvers:
            await cancel(resolver)
        for watch in watches.values():
            watch.cancel()
        await asyncio.gather(*watches.values(), return_exceptions=True)
        stop_wait.cancel()
        await asyncio.gather(*(pool.close() for pool in pools.values()))
        if failed:
            # The healthy banks close cleanly; the failed one recovers from disk.
            _log.error(
                "storage_failed",
                banks=failed,
                error="; ".join(repr(stores[bank].writer_failure) for bank in failed),
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

    run(serve)


def _export(resolver: Resolver, bank: str) -> None:
    """The resolver's counts of its last pass, read whenever /metrics is scraped."""
    PREPARED.labels(bank).set_function(lambda: resolver.prepared)
    IN_DOUBT.labels(bank).set_function(lambda: resolver.in_doubt)


async def _watch(store: BankStore) -> str:
    identity = store.file_identity
    if identity is None:  # gone already
        return f"database {store.config.path} was deleted"
    return await watch_file(store.config.path, identity, WATCH_INTERVAL_S)


def _cluster_id(certs: Path | TlsFiles | None) -> str:
    """The cluster a bank belongs to: its CA's SHA-256 fingerprint ("" without TLS)."""
    if certs is None:
        return ""
    ca = x509.load_pem_x509_certificate(TlsMaterial.load(certs).ca)
    return "sha256:" + ca.fingerprint(hashes.SHA256()).hex()


def _bank_identities(
    banks: tuple[str, ...], name: str, certs: Path | TlsFiles | None, folder: Path | None
) -> dict[str, Path | TlsFiles | None]:
    """The identity each bank calls out with: the process's own for its one bank,
    else `bank-BANK/` from --bank-certs (or beside the process's folder)."""
    if banks == (name,) or certs is None:
        return dict.fromkeys(banks, certs)
    if folder is None:
        if not isinstance(certs, Path):
            raise click.UsageError("several banks with --ssl-cert need --bank-certs DIR")
        folder = certs.parent
    missing = [bank for bank in banks if not (folder / f"bank-{bank}" / "tls.crt").is_file()]
    if missing:
        raise click.UsageError(
            f"no identity for {', '.join(missing)} in {folder} (bank-BANK/ folders; "
            "`strife-certs dev --bank BANK` writes them)"
        )
    return {bank: folder / f"bank-{bank}" for bank in banks}


def _seed_rows(paths: tuple[Path, ...], bank: str) -> list[SeedRow]:
    """`bank`'s rows from every seed file; an account listed twice is refused."""
    rows = [row for path in paths for row in load_seed(path, bank=bank)]
    if len({row.account_id for row in rows}) != len(rows):
        raise SeedError(f"an account of bank {bank!r} is listed in more than one seed file")
    return rows


async def _open_all(
    banks: tuple[str, ...], open_bank: Callable[[str], Awaitable[BankStore]]
) -> dict[str, BankStore]:
    """Every bank's store, opened and seeded side by side; if one cannot open,
    the others are closed again and its error raised."""
    results = await asyncio.gather(*(open_bank(bank) for bank in banks), return_exceptions=True)
    stores = {b: r for b, r in zip(banks, results, strict=True) if isinstance(r, BankStore)}
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        await asyncio.gather(*(store.close() for store in stores.values()))
        raise failure
    return stores


# The console script: this process is the program (signals, uvloop).
entry = program_entry(main)
