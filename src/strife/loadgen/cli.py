"""`strife-loadgen`: drive payments through a cluster, measure them, audit the money.

    strife-loadgen --topology deploy/three-banks.toml --start --clients 100 --duration 10
    strife-loadgen --balancer 127.0.0.1:7400 --certs .strife/three-banks/certs \\
        --config deploy/three-banks.toml --clients 9 --rate 50 --duration 30

Exit status: 0 when the money check passed, 2 when it failed (money created,
destroyed, lost or duplicated, or a payment left without an answer), 1 when
the run could not happen at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from strife.cluster.topology import TopologyError, load_topology
from strife.loadgen.audit import AuditError
from strife.loadgen.config import ConfigError, LoadConfig
from strife.loadgen.engine import LoadError
from strife.loadgen.report import print_summary
from strife.loadgen.runner import LoadResult, run_load
from strife.loadgen.target import Target, own_cluster, running_cluster, sized_topology
from strife.rpc.discovery import POLICIES

EXIT_MONEY = 2


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--topology",
    "topology_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Topology TOML of a cluster to start (with --start).",
)
@click.option("--start", is_flag=True, help="Start the --topology cluster here, stop it after.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --start: keep the cluster's files here (default: a temporary folder).",
)
@click.option(
    "--customers-per-bank",
    type=click.IntRange(1, 2000),
    help="With --start: generated customers per bank (default: enough for --clients).",
)
@click.option("--balancer", help="Balancer HOST:PORT of a running cluster.")
@click.option(
    "--certs",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The running cluster's certificate folder (with client-default/ and admin/).",
)
@click.option(
    "--admin-certs",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Admin identity for the audit, if not beside --certs.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Topology TOML of the running cluster: its customers.",
)
@click.option(
    "--customers", "usernames", help="Customers of the running cluster: alpha-1,beta-2,..."
)
@click.option(
    "--clients",
    default=100,
    show_default=True,
    type=click.IntRange(1, 2000),
    help="Simulated customers, each logged in with its own token.",
)
@click.option(
    "--duration", "duration_s", type=float, help="Seconds of load [default: 10 unless --count]."
)
@click.option("--count", type=click.IntRange(1), help="Stop after this many payments.")
@click.option("--rate", "rate_per_s", type=float, help="Open loop: payments per second.")
@click.option("--concurrency", type=click.IntRange(1), help="Closed loop: payments in flight.")
@click.option(
    "--max-in-flight",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Open loop: payments outstanding at most; a due payment beyond it is SKIPPED.",
)
@click.option("--policy", type=click.Choice(list(POLICIES)), help="Balancer policy to ask for.")
@click.option(
    "--mix",
    type=click.Choice(["cross", "any"]),
    default="cross",
    show_default=True,
    help="cross: payee at another bank (2PC); any: any other account.",
)
@click.option(
    "--payees",
    type=click.Choice(["auto", "all"]),
    default="auto",
    show_default=True,
    help="auto: payers pay each other when they can (no drift); all: any known customer.",
)
@click.option(
    "--amount-max",
    "amount_minor_max",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Largest amount in minor units (uniform from 1).",
)
@click.option(
    "--warmup",
    "warmup_s",
    default=0.0,
    show_default=True,
    help="Seconds at the start made and audited but not measured.",
)
@click.option(
    "--gateway-ttl",
    "gateway_ttl_s",
    default=5.0,
    show_default=True,
    help="Seconds a customer keeps its gateway before asking the balancer again.",
)
@click.option(
    "--login-concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Logins at once (each costs the bank ~40 ms of scrypt).",
)
@click.option(
    "--timeout", "call_timeout_s", default=5.0, show_default=True, help="Deadline of each call (s)."
)
@click.option(
    "--settle-timeout",
    "settle_timeout_s",
    default=30.0,
    show_default=True,
    help="Seconds to wait for the banks' books to settle before the audit.",
)
@click.option("--seed", type=int, help="Random seed (payees, amounts) for a repeatable mix.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".strife/loadgen"),
    show_default=True,
    help="Where results.json and the plots go.",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (results.json only).")
@click.option("--no-progress", is_flag=True, help="No live progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout, no table.")
def main(
    topology_path: Path | None,
    start: bool,
    data_dir: Path | None,
    customers_per_bank: int | None,
    balancer: str | None,
    certs: Path | None,
    admin_certs: Path | None,
    config_path: Path | None,
    usernames: str | None,
    clients: int,
    duration_s: float | None,
    count: int | None,
    rate_per_s: float | None,
    concurrency: int | None,
    max_in_flight: int,
    policy: str | None,
    mix: str,
    payees: str,
    amount_minor_max: int,
    warmup_s: float,
    gateway_ttl_s: float,
    login_concurrency: int,
    call_timeout_s: float,
    settle_timeout_s: float,
    seed: int | None,
    out_dir: Path,
    no_plots: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Drive payments through a Strife cluster, measure them and audit the money."""
    from strife.observability.logging import configure_logging
    from strife.rpc.server import run

    configure_logging("console", "error")
    config = LoadConfig(
        clients=clients,
        duration_s=duration_s if duration_s is not None or count is not None else 10.0,
        count=count,
        rate_per_s=rate_per_s,
        concurrency=concurrency,
        max_in_flight=max_in_flight,
        policy=policy,
        mix="cross" if mix == "cross" else "any",
        payees="auto" if payees == "auto" else "all",
        amount_minor_max=amount_minor_max,
        warmup_s=warmup_s,
        gateway_ttl_s=gateway_ttl_s,
        login_concurrency=login_concurrency,
        call_timeout_s=call_timeout_s,
        settle_timeout_s=settle_timeout_s,
        seed=seed,
    )
    try:
        config.validate()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if start == (balancer is not None):
        raise click.UsageError("use either --topology FILE --start, or --balancer ADDR --certs DIR")
    if start and topology_path is None:
        raise click.UsageError("--start needs --topology FILE")
    if balancer is not None and certs is None:
        raise click.UsageError("--balancer needs --certs DIR")

    console = Console(stderr=True)
    show_progress = not no_progress and not as_json
    outcome: list[LoadResult] = []

    async def load() -> None:
        task = asyncio.current_task()
        assert task is not None

        def lost() -> None:
            console.print("[bold red]the cluster's supervisor stopped; abandoning the load")
            task.cancel()

        with contextlib.ExitStack() as files:
            if start:
                assert topology_path is not None
                root = data_dir or Path(
                    files.enter_context(tempfile.TemporaryDirectory(prefix="strife-loadgen-"))
                )
                topology = sized_topology(
                    load_topology(topology_path), clients, customers_per_bank, root
                )
                console.log(
                    f"starting {len(topology.banks)} banks and "
                    f"{len(topology.gateways)} gateways in {root}"
                )
                async with own_cluster(
                    topology, lambda line: console.log(line), on_lost=lost
                ) as target:
                    outcome.append(
                        await _run(config, target, out_dir, console, show_progress, not no_plots)
                    )
            else:
                assert balancer is not None and certs is not None
                target = running_cluster(
                    balancer,
                    certs,
                    admin_certs=admin_certs,
                    config=config_path,
                    usernames=usernames,
                )
                outcome.append(
                    await _run(config, target, out_dir, console, show_progress, not no_plots)
                )

    try:
        run(load)
    except (ConfigError, TopologyError, LoadError, AuditError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
    except (asyncio.CancelledError, KeyboardInterrupt):
        console.print("[bold red]interrupted[/]: no verdict on the money")
        sys.exit(1)
    result = outcome[0]
    if as_json:
        click.echo(json.dumps(result.results, indent=1))
    else:
        print_summary(Console(), result.results)
        if result.results_path is not None:
            plotted = f" and {len(result.plot_paths)} plots" if result.plot_paths else ""
            console.print(f"wrote {result.results_path}{plotted}")
    if not result.ok:
        console.print("[bold red]MONEY CHECK FAILED: see above and results.json (audit)[/]")
        sys.exit(EXIT_MONEY)


async def _run(
    config: LoadConfig, target: Target, out_dir: Path, console: Console, progress: bool, plot: bool
) -> LoadResult:
    return await run_load(
        config, target, out_dir=out_dir, console=console, progress=progress, plot=plot
    )
