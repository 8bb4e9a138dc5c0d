"""`strife bft`: the Byzantine fault tolerance tools, each loaded when named."""

from __future__ import annotations

import click

from strife.bft.generals_cli import generals
from strife.bft.status_cli import replicas


@click.group()
def bft() -> None:
    """Byzantine fault tolerance: the generals, and a replicated bank's replicas."""


bft.add_command(generals)
bft.add_command(replicas)
