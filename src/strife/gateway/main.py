"""`strife-gateway`: a payment gateway replica."""

from __future__ import annotations

import click

from strife.rpc.cli import not_yet_available


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", required=True, help="Replica name, e.g. gw-1.")
@click.option("--listen", default="127.0.0.1:0", show_default=True)
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite file of this replica.")
@click.option("--certs", type=click.Path(file_okay=False), help="Identity folder.")
@click.option("--balancer", default=None, help="Balancer HOST:PORT.")
@click.option("--bank", "banks", multiple=True, help="NAME=HOST:PORT, instead of --balancer.")
def main(**_: object) -> None:
    """Serve the customer API and coordinate payments with two-phase commit."""
    not_yet_available("strife-gateway", "the payment gateway issue")
