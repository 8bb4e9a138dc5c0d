"""`strife bft replicas`: what each replica of a replicated bank says about itself.

Asks every replica in a group file for its `Status` (as an admin identity) and
prints one line each: view, whether it is in it or changing views, what it
executed, its stable checkpoint, its state digest and what it dropped. Honest
replicas that executed the same sequence numbers show the same digest; a
replica far behind, in another view, or with another digest stands out.
A replica's answer is its own word: this is a diagnosis, not a proof.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import grpc

from strife.bft.group import Group, GroupError
from strife.bft.node import STATUS
from strife.rpc.channels import ChannelPool, Peer

__all__ = ["replicas"]

TIMEOUT_S = 3.0


async def statuses(group: Group, certs: Path) -> list[dict[str, Any] | str]:
    """Each replica's status, or why it could not be had."""
    async with ChannelPool(certs) as pool:

        async def one(name: str, address: str) -> dict[str, Any] | str:
            call: Any = pool.get(address, Peer("bank", name)).unary_unary(STATUS)
            try:
                status: dict[str, Any] = json.loads(await call(b"", timeout=TIMEOUT_S))
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
            return status

        return list(await asyncio.gather(*(one(r.name, r.address) for r in group.replicas)))


def lines(group: Group, found: list[dict[str, Any] | str]) -> list[str]:
    out = [f"{group.bank}: n={group.config.n} f={group.f}"]
    for entry, status in zip(group.replicas, found, strict=True):
        if isinstance(status, str):
            out.append(f"  {entry.name:<12} {entry.address:<22} unreachable ({status})")
            continue
        mode = "active" if status["active"] else "changing view"
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(status["dropped"].items())) or "-"
        out.append(
            f"  {entry.name:<12} {entry.address:<22} view {status['view']} ({mode}),"
            f" executed {status['last_executed']}, stable {status['stable']},"
            f" state {status['state_digest'][:12]}, {status['behaviour']}; dropped: {dropped}"
        )
    return out


@click.command()
@click.option(
    "--group", "group_file", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path), help="The group file.",
)  # fmt: skip
@click.option(
    "--certs", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="An admin identity folder (ca.crt, tls.crt, tls.key).",
)  # fmt: skip
def replicas(group_file: Path, certs: Path) -> None:
    """Show what each replica of a replicated bank reports."""
    try:
        group = Group.load(group_file)
    except GroupError as exc:
        raise click.ClickException(str(exc)) from exc
    found = asyncio.run(statuses(group, certs))
    for line in lines(group, found):
        click.echo(line)
    if any(isinstance(s, str) for s in found):
        raise SystemExit(3)
