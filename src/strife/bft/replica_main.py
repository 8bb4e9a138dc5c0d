"""`strife-bank-replica`: one replica of a PBFT-replicated bank (docs/bft.md).

A separate command rather than `strife-bank --replica`: a replica shares the
ledger model with a plain bank and nothing else (no BankService, no group
commit, no resolver, its own journal and its own protocol service), and
`strife-bank`'s options (several banks per port, --db per bank, the balancer)
mean nothing to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from strife.bank.seed import SeedError, load_seed
from strife.bft.faults import NAMES
from strife.bft.group import Group, GroupError, load_signing_key
from strife.bft.replica_process import ReplicaProcess, ReplicaSettings
from strife.bft.signing import replica_identity
from strife.rpc.cli import named_addresses, server_config, server_options
from strife.rpc.serving import run_process


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--group", "group_file", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The group file (TOML): replicas, addresses, public keys, tunables.",
)  # fmt: skip
@click.option(
    "--replica", "name", required=True,
    help="This replica's name in the group file (its certificate's name, certs/bank-NAME).",
)  # fmt: skip
@click.option(
    "--signing-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
    help="This replica's Ed25519 private key (PEM); its public key is in the group file.",
)  # fmt: skip
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path),
    help="The replica's journal.  [default: data/replica-NAME.db]",
)  # fmt: skip
@click.option(
    "--seed", "seeds", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Seed file(s): the group bank's accounts, the same at every replica (genesis state).",
)  # fmt: skip
@click.option(
    "--byzantine", type=click.Choice(NAMES), default=None,
    help="Misbehave on purpose (tests and the demo): see strife.bft.faults.",
)  # fmt: skip
@click.option(
    "--coordinator", "coordinators", multiple=True,
    help="NAME=HOST:PORT of a gateway, for resolving in-doubt transfers.",
)  # fmt: skip
@click.option("--balancer", default=None, help="Balancer HOST:PORT: where to find gateways.")
@click.option("--in-doubt-timeout", "in_doubt_s", default=5.0, show_default=True)
@click.option(
    "--synchronous", type=click.Choice(["FULL", "NORMAL", "EXTRA"]), default="FULL",
    show_default=True, help="SQLite durability of the journal.",
)  # fmt: skip
@server_options
def main(**options: Any) -> None:
    """Serve one replica of a replicated bank."""
    try:
        group = Group.load(options["group_file"])
    except GroupError as exc:
        raise click.ClickException(str(exc)) from exc
    name: str = options["name"]
    index = group.index_of(name)
    if index is None:
        raise click.BadParameter(
            f"{name!r} is not in {options['group_file']}", param_hint="--replica"
        )
    if options["insecure"]:
        # Peers and clients are known by their certificates: without them nobody is.
        raise click.UsageError("a replica needs its certificate (--certs); --insecure is refused")
    if options["listen"] == "127.0.0.1:0" and options["port"] is None:
        options["listen"] = group.replicas[index].address
    config = server_config(name, options, identity=f"bank-{name}")
    try:
        seed = [row for path in options["seeds"] for row in load_seed(path, bank=group.bank)]
        signer = load_signing_key(options["signing_key"], replica_identity(index))
    except (SeedError, GroupError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if signer.key.public_key().public_bytes_raw() != group.replicas[index].public_key:
        raise click.ClickException(f"--signing-key is not the key the group lists for {name}")
    settings = ReplicaSettings(
        group=group,
        index=index,
        signer=signer,
        db=options["db"] or Path("data") / f"replica-{name}.db",
        seed=seed,
        byzantine=options["byzantine"],
        synchronous=options["synchronous"],
        coordinators=named_addresses(options["coordinators"]),
        balancer=options["balancer"],
        in_doubt_s=options["in_doubt_s"],
    )
    run_process(lambda: ReplicaProcess(config, settings), listen=config.listen, logger="strife.bft")
