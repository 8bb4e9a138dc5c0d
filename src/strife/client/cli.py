"""`strife`: the customer command line."""

from __future__ import annotations

import click

from strife.rpc.cli import not_yet_available


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Pay, check balances and history, and manage the offline outbox."""


@main.command()
def login() -> None:
    """Log in to a bank through a gateway."""
    not_yet_available("strife login", "the client issue")


@main.command()
def pay() -> None:
    """Send a payment (queued in the outbox first)."""
    not_yet_available("strife pay", "the client issue")


@main.group()
def cluster() -> None:
    """Run a local cluster."""


@cluster.command()
def up() -> None:
    """Start a local cluster of balancer, banks and gateways."""
    not_yet_available("strife cluster up", "the cluster issue")


@main.command()
def demo() -> None:
    """Start a local cluster and make real payments."""
    not_yet_available("strife demo", "the cluster issue")
