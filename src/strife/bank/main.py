"""`strife-bank`: one bank's ledger server and two-phase-commit participant."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from prometheus_client import Histogram

from strife.bank.resolver import Resolver, cancel, registry_lookup, static_lookup
from strife.bank.seed import SeedError, load_seed
from strife.bank.service import AUTHZ, SERVICE, BankServicer
from strife.bank.store import BankStore, StoreConfig
from strife.observability.logging import get_logger
from strife.rpc.channels import ChannelPool
from strife.rpc.cli import named_addresses, server_config, server_options
from strife.rpc.discovery import BalancerClient, Heartbeat
from strife.rpc.server import StrifeServer, run
from strife.security.passwords import hash_password
from strife.v1 import bank_pb2_grpc

BATCH_SIZE = Histogram(
    "strife_bank_group_commit_batch_size",
    "Operations committed per SQLite transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
_log = get_logger("strife.bank")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", "--bank-name", "name", required=True, help="Bank name, e.g. alpha.")
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file.  [default: data/bank-NAME.db]",
)  # fmt: skip
@click.option("--seed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
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
@click.option("--max-batch", default=256, show_default=True, help="Group-commit batch cap.")
@click.option("--max-queue", default=8192, show_default=True, help="Write queue bound.")
@click.option("--in-doubt-timeout", "in_doubt_s", default=5.0, show_default=True)
@server_options
def main(**options: Any) -> None:
    """Serve one bank: accounts, holds, ledger, two-phase-commit participant."""
    config = server_config(options["name"], options, identity=f"bank-{options['name']}")
    db: Path = options["db"] or Path("data") / f"bank-{options['name']}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        rows = load_seed(options["seed"], bank=options["name"]) if options["seed"] else []
    except (SeedError, OSError, ValueError) as exc:
        raise click.ClickException(f"seed: {exc}") from exc
    coordinators = named_addresses(options["coordinators"])

    async def serve() -> None:
        store = await BankStore.open(
            StoreConfig(
                path=db,
                synchronous=options["synchronous"],
                max_batch=options["max_batch"],
                max_queue=options["max_queue"],
            ),
            on_batch=BATCH_SIZE.observe,
        )
        opened = await store.seed(rows, hash_password)
        _log.info("seeded", bank=options["name"], accounts_opened=opened)
        server = StrifeServer(config, AUTHZ)
        servicer = BankServicer(options["name"], store, check_coordinator=not config.insecure)
        server.add_service(
            SERVICE, lambda s: bank_pb2_grpc.add_BankServiceServicer_to_server(servicer, s)
        )
        requested = server.install_signal_handlers()
        await server.start()
        pool = ChannelPool(config.certs, insecure=config.insecure)
        lookup = static_lookup(coordinators)
        heartbeat = None
        if options["balancer"]:
            heartbeat = Heartbeat(
                pool, options["balancer"], service="bank", instance=options["name"],
                address=server.address,
            )  # fmt: skip
            await heartbeat.start()
            lookup = registry_lookup(BalancerClient(pool, options["balancer"]), coordinators)
        resolver = Resolver(store, pool, lookup, in_doubt_s=options["in_doubt_s"])
        resolver_task = asyncio.create_task(resolver.run(), name="resolver")
        stop_wait = asyncio.create_task(requested.wait())
        await asyncio.wait({stop_wait, store.writer_task}, return_when=asyncio.FIRST_COMPLETED)
        failed = store.writer_task.done()
        if heartbeat is not None:
            await heartbeat.stop()
        await server.stop()
        await cancel(resolver_task)
        stop_wait.cancel()
        await pool.close()
        if failed:
            _log.error("storage_failed", detail="stopping; state is recovered from disk on restart")
            sys.exit(1)
        await store.close()

    run(serve)
