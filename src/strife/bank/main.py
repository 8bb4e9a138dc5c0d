"""`strife-bank`: one bank's ledger server."""

from __future__ import annotations

import click

from strife.rpc.cli import not_yet_available


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", required=True, help="Bank name, e.g. alpha.")
@click.option("--listen", default="127.0.0.1:0", show_default=True)
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite file of this bank.")
@click.option("--seed", type=click.Path(dir_okay=False), help="CSV or JSON seed file.")
@click.option("--certs", type=click.Path(file_okay=False), help="Identity folder.")
@click.option("--balancer", default=None, help="Balancer HOST:PORT to register with.")
def main(**_: object) -> None:
    """Serve one bank: accounts, holds, ledger, two-phase-commit participant."""
    not_yet_available("strife-bank", "the bank server issue")
