"""`strife-balancer`: service registry and look-aside load balancer."""

from __future__ import annotations

import click

from strife.rpc.cli import not_yet_available


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--listen", default="127.0.0.1:0", show_default=True)
@click.option("--certs", type=click.Path(file_okay=False), help="Identity folder.")
@click.option(
    "--policy",
    type=click.Choice(["pick_first", "round_robin", "least_load", "power_of_two"]),
    default="round_robin",
    show_default=True,
)
def main(**_: object) -> None:
    """Keep the registry of banks and gateways and answer GetBestServer."""
    not_yet_available("strife-balancer", "the balancer issue")
