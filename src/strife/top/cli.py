"""`strife top`: watch a running cluster, live or as one plain-text screen."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import click

from strife.cluster.topology import TopologyError, default_topology, load_topology
from strife.top.render import as_rich, as_text
from strife.top.scrape import Scrape, scrape_all
from strife.top.snapshot import snapshot
from strife.top.targets import NoTargets, Target, from_cluster_state, from_options

Discover = Callable[[], list[Target]]


def _discovery(
    config: Path | None,
    data_dir: Path | None,
    given: tuple[str, ...],
    registry: tuple[str, Path | None, int] | None,
) -> Discover:
    """Addresses given are fixed; the registry and a local cluster's state are
    read again before every scrape, so restarts and new replicas show up."""
    if given:
        try:
            fixed = from_options(given)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--target") from exc
        return lambda: fixed
    if registry is not None:
        balancer, certs, port = registry
        if certs is None:
            raise click.UsageError("--balancer needs --certs: an identity the balancer accepts")
        return lambda: _registered(balancer, certs, port)
    try:
        topology = load_topology(config) if config else default_topology()
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
    root = (data_dir or topology.data_dir).resolve()
    return lambda: from_cluster_state(root)


def _registered(balancer: str, certs: Path, port: int) -> list[Target]:
    from strife.errors import StrifeError
    from strife.top.registry import list_registered

    try:
        return asyncio.run(list_registered(balancer, certs, port))
    except StrifeError as exc:
        raise NoTargets(f"the balancer at {balancer} did not answer: {exc}") from exc


def _targets(discover: Discover) -> list[Target]:
    try:
        return discover()
    except NoTargets as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("top")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The topology TOML the cluster was started with (finds its data folder).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The cluster's data folder (default: .strife/cluster).",
)
@click.option(
    "--target",
    "given",
    multiple=True,
    metavar="NAME=HOST:PORT",
    help="A process's /metrics address, instead of a local cluster's; repeatable.",
)
@click.option(
    "--balancer",
    default=None,
    metavar="HOST:PORT",
    help="Find the banks and gateways in this balancer's registry instead; each serves "
    "/metrics on --metrics-port of its registered host.",
)
@click.option(
    "--certs",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --balancer: an identity folder to ask it with (e.g. a client's).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=7402,
    show_default=True,
    help="With --balancer: the port every process serves /metrics on.",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between scrapes; rates are over this interval.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds to wait for one process's /metrics.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Scrape twice, --interval apart, print one plain-text screen and exit.",
)
def top(
    config: Path | None,
    data_dir: Path | None,
    given: tuple[str, ...],
    balancer: str | None,
    certs: Path | None,
    metrics_port: int,
    interval_s: float,
    timeout_s: float,
    once: bool,
) -> None:
    """Per process RPC rate, in flight, in doubt, RSS, and the balancer's picks.

    Reads every process's Prometheus /metrics: a local cluster's from its
    state file (`strife cluster up`), the addresses given with --target, or
    those of the processes in a balancer's registry (--balancer).
    """
    registry = (balancer, certs, metrics_port) if balancer else None
    discover = _discovery(config, data_dir, given, registry)
    if once:
        first = scrape_all(_targets(discover), timeout_s)
        time.sleep(interval_s)
        click.echo(as_text(snapshot(first, scrape_all(_targets(discover), timeout_s))), nl=False)
        return
    try:
        from rich.live import Live
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"the live view needs {exc.name}: pip install 'strife[loadgen]' (or use --once)"
        ) from exc
    with contextlib.suppress(KeyboardInterrupt), Live(auto_refresh=False) as live:
        before: list[Scrape] = []
        while True:
            after = scrape_all(_targets(discover), timeout_s)
            title = f"strife top · {len(after)} processes · {time.strftime('%H:%M:%S')}"
            # The first screen has the gauges; rates need a second scrape.
            live.update(as_rich(snapshot(before, after), title), refresh=True)
            before = after
            time.sleep(interval_s)


def entry() -> None:
    top(prog_name="strife top")
