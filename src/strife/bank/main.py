"""`strife-bank`: one bank's ledger server and two-phase-commit participant,
or several banks' behind one port (`--bank`, see docs/bank.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from strife.bank.process import BankProcess, BankSettings
from strife.bank.seed import SeedError, SeedRow, load_seed
from strife.rpc.cli import named_addresses, require_identity_hosts, server_config, server_options
from strife.rpc.serving import run_process
from strife.security.passwords import PASSWORD_CHECKS
from strife.security.tls import TlsFiles, TlsMaterial


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--name",
    "--bank-name",
    "name",
    required=True,
    help="Process name and identity (certs/bank-NAME); also the bank when no --bank.",
)
@click.option(
    "--bank",
    "banks",
    multiple=True,
    help="A bank this process serves, each with its own database; repeatable.  [default: NAME]",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file of the one bank served.  [default: DATA_DIR/bank-BANK.db]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Where each bank's database is: DATA_DIR/bank-BANK.db.",
)
@click.option(
    "--seed",
    "seeds",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Seed file (CSV or JSON); repeatable: each bank loads its rows from all of them.",
)
@click.option(
    "--init",
    is_flag=True,
    help="Create the bank's database if it is missing or empty (first start). Without it a "
    "missing or empty database stops the process: a lost database must be restored, not "
    "recreated. On an existing database of the same bank it changes nothing.",
)
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
    "--bank-certs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With several banks: the folder of their own identities (bank-BANK/), under which "
    "each registers and asks coordinators.  [default: the folder holding --certs]",
)
@click.option("--max-batch", default=256, show_default=True, help="Group-commit batch cap.")
@click.option("--max-queue", default=8192, show_default=True, help="Write queue bound.")
@click.option(
    "--resident-transfers",
    default=20_000,
    show_default=True,
    type=click.IntRange(min=100),
    help="Finished transfers kept in memory by the process, shared equally among its banks "
    "(older ones are read back from disk when asked for).",
)
@click.option("--in-doubt-timeout", "in_doubt_s", default=5.0, show_default=True)
@click.option(
    "--max-password-checks",
    default=PASSWORD_CHECKS.max_pending,
    show_default=True,
    type=click.IntRange(min=1),
    help="Password checks running or queued at once; more are refused (RESOURCE_EXHAUSTED).",
)
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
    if config.certs is not None and banks != (name,):
        # Gateways dial each bank by its name: this host's certificate must say
        # it serves them all, or their handshakes fail.
        require_identity_hosts(config.certs, serves=banks)
    settings = BankSettings(
        name=name,
        banks=banks,
        databases=dbs,
        identities=_bank_identities(banks, name, config.certs, options["bank_certs"]),
        seeds=seeds,
        cluster=_cluster_id(config.certs),
        coordinators=named_addresses(options["coordinators"]),
        balancer=options["balancer"],
        synchronous=options["synchronous"],
        max_batch=options["max_batch"],
        max_queue=options["max_queue"],
        resident_transfers=options["resident_transfers"],
        in_doubt_s=options["in_doubt_s"],
        init=options["init"],
    )

    run_process(lambda: BankProcess(config, settings), listen=config.listen, logger="strife.bank")


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
