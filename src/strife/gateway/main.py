"""`strife-gateway`: a payment gateway replica and two-phase-commit coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from strife.gateway.banks import REPLICATED
from strife.gateway.process import GatewayProcess, GatewaySettings
from strife.rpc.cli import named_addresses, server_config, server_options
from strife.rpc.serving import run_process
from strife.security.tls import TlsFiles, TlsMaterial


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
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file.  [default: data/gateway-NAME.db]",
)
@click.option(
    "--bank",
    "banks",
    multiple=True,
    help="NAME=HOST:PORT of a bank, or NAME=bft:GROUP.toml of a replicated one (docs/bft.md).",
)
@click.option(
    "--bft-signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="This gateway's Ed25519 key for replicated banks (their group files list its public key).",
)
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
    "--settle-interval",
    "settle_interval_s",
    default=0.5,
    show_default=True,
    help="Seconds between resends of undelivered decisions (doubles while failing).",
)
@click.option(
    "--reply-after",
    type=click.Choice(["decision", "settled"]),
    default="decision",
    show_default=True,
    help="Answer a payment once its decision is durable (banks hear it right after),"
    " or only once every bank acknowledged it.",
)
@click.option("--retention", "retention_s", default=86_400.0, show_default=True)
@click.option(
    "--synchronous",
    type=click.Choice(["FULL", "NORMAL", "EXTRA"]),
    default="FULL",
    show_default=True,
)
@click.option("--max-batch", default=256, show_default=True)
@server_options
def main(**options: Any) -> None:
    """Serve the customer API and coordinate payments with two-phase commit."""
    config = server_config(options["name"], options, identity=f"gateway-{options['name']}")
    _require_own_name(config.certs, options["name"])
    db: Path = options["db"] or Path("data") / f"gateway-{options['name']}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    key_path = options["token_key"]
    if key_path is None:
        if config.certs is None:
            raise click.UsageError("--token-key is required with --insecure")
        anchor = config.certs if isinstance(config.certs, Path) else config.certs.cert.parent
        key_path = anchor.parent / "token-signing.key"

    banks = named_addresses(options["banks"])
    if any(a.startswith(REPLICATED) for a in banks.values()) and not options["bft_signing_key"]:
        raise click.UsageError("a replicated bank (NAME=bft:GROUP.toml) needs --bft-signing-key")
    settings = GatewaySettings(
        name=options["name"],
        db=db,
        token_key=key_path,
        banks={n: a for n, a in banks.items() if not a.startswith(REPLICATED)},
        replicated={
            n: Path(a.removeprefix(REPLICATED))
            for n, a in banks.items()
            if a.startswith(REPLICATED)
        },
        bft_signing_key=options["bft_signing_key"],
        balancer=options["balancer"],
        token_ttl_s=options["token_ttl_s"],
        prepare_timeout_s=options["prepare_timeout_s"],
        decision_timeout_s=options["decision_timeout_s"],
        max_in_flight=options["max_in_flight"],
        settle_interval_s=options["settle_interval_s"],
        reply_after=options["reply_after"],
        retention_s=options["retention_s"],
        synchronous=options["synchronous"],
        max_batch=options["max_batch"],
    )

    run_process(
        lambda: GatewayProcess(config, settings), listen=config.listen, logger="strife.gateway"
    )
