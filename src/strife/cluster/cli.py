"""`strife cluster up|status|down`: a local cluster from one command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from strife.cluster.supervisor import (
    ClusterError,
    Supervisor,
    read_state,
    stop_from_outside,
)
from strife.cluster.topology import Topology, TopologyError, default_topology, load_topology
from strife.observability.logging import configure_logging
from strife.rpc.addresses import free_port
from strife.rpc.server import run


def resolve_topology(config: Path | None, data_dir: Path | None) -> Topology:
    try:
        topology = load_topology(config) if config else default_topology()
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
    return topology.with_data_dir(data_dir) if data_dir else topology


def print_table(rows: list[tuple[Any, ...]], headers: tuple[str, ...]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for row in (headers, *rows):
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


_config = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Topology TOML (default: 1 balancer, 3 banks, 2 gateways).",
)
_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where certificates, databases and logs go (default: .strife/cluster).",
)


@click.group()
def cluster() -> None:
    """Run a local cluster: balancer, banks and gateways on 127.0.0.1."""


@cluster.command()
@_config
@_data_dir
@click.option(
    "--balancer-port",
    type=click.IntRange(0, 65535),
    help="The balancer's port on 127.0.0.1 (default: 7400, or the topology's "
    "[balancer] listen; 0: any free port).",
)
def up(config: Path | None, data_dir: Path | None, balancer_port: int | None) -> None:
    """Start the cluster and keep it running until Ctrl-C."""
    topology = resolve_topology(config, data_dir)
    if balancer_port is not None:
        port = balancer_port or free_port()  # children are told the address up front
        topology = replace(topology, balancer_listen=f"127.0.0.1:{port}")
    configure_logging("console", "warning")

    async def main() -> None:
        supervisor = Supervisor(topology, say=lambda line: click.echo(line, err=True))
        try:
            await supervisor.up()
        except ClusterError as exc:
            hint = ""
            if str(exc).startswith("balancer did not start") and "cannot listen" in str(exc):
                hint = " (another port: --balancer-port PORT, 0 for any)"
            raise click.ClickException(f"{exc}{hint}") from exc
        print_table(supervisor.table(), ("process", "address", "pid", "log"))
        click.echo(f"\nclient identity: {supervisor.certs_dir / 'client-default'}")
        click.echo("Ctrl-C (or `strife cluster down`) stops everything.")
        await supervisor.supervise()
        click.echo("cluster stopped")

    run(main)


@cluster.command()
@_config
@_data_dir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Show the running cluster's processes."""
    root = resolve_topology(config, data_dir).data_dir.resolve()
    state = read_state(root)
    if state is None:
        raise click.ClickException(f"no cluster running from {root}")
    if as_json:
        click.echo(json.dumps(state))
        return
    rows = [(c["name"], c["address"], c["pid"], c["restarts"], c["log"]) for c in state["children"]]
    print_table(rows, ("process", "address", "pid", "restarts", "log"))


@cluster.command()
@_config
@_data_dir
def down(config: Path | None, data_dir: Path | None) -> None:
    """Stop the cluster started by `strife cluster up` (from any terminal)."""
    root = resolve_topology(config, data_dir).data_dir.resolve()
    if read_state(root) is None:
        click.echo(f"no cluster running from {root}")
        return
    leftovers = stop_from_outside(root)
    if leftovers:
        click.echo(f"killed leftover processes: {', '.join(leftovers)}")
    click.echo("cluster stopped")
