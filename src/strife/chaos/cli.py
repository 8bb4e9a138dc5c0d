"""`strife chaos`: run the chaos test and print its verdict."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click

from strife.chaos.nemesis import ALL_KINDS
from strife.observability.logging import configure_logging
from strife.program import owns_signals

# 300 s at 60 payments/s asked: about 12,000 payments and 120 faults on a
# 2-core machine (docs/chaos.md).
FULL = {"duration_s": 300.0, "payments": 30_000, "rate_per_s": 60.0, "faults": 120}


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".strife/chaos"),
    show_default=True,
    help="Cluster data, outboxes, report.json, history.jsonl and timeline.png.",
)
@click.option("--customers", default=100, show_default=True)
@click.option("--banks", default=3, show_default=True)
@click.option("--gateways", default=3, show_default=True)
@click.option(
    "--duration",
    "duration_s",
    default=60.0,
    show_default=True,
    help="Seconds of load under faults, before quiescence.",
)
@click.option("--payments", default=10_000, show_default=True, help="Upper bound of payments.")
@click.option(
    "--rate",
    "rate_per_s",
    default=60.0,
    show_default=True,
    help="Payments per second asked of all customers together.",
)
@click.option("--faults", default=30, show_default=True, help="Faults injected, spread evenly.")
@click.option("--kinds", default=",".join(ALL_KINDS), show_default=True)
@click.option(
    "--netns/--no-netns",
    default=None,
    help="Processes in network namespaces (default: when running as root).",
)
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--full", is_flag=True, help="The full run: 300 s of load, 120 faults, over 10,000 payments."
)
def chaos(
    out: Path,
    customers: int,
    banks: int,
    gateways: int,
    duration_s: float,
    payments: int,
    rate_per_s: float,
    faults: int,
    kinds: str,
    netns: bool | None,
    seed: int,
    full: bool,
) -> None:
    """A Jepsen-style bank test: payments under kills, pauses, partitions, full
    disks and short deadlines, checked per intent at quiescence."""
    from strife.chaos.runner import ChaosConfig, run_chaos  # matplotlib: only when run

    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if unknown := set(wanted) - set(ALL_KINDS):
        raise click.BadParameter(f"unknown kinds: {', '.join(sorted(unknown))}")
    if banks < 1 or gateways < 1 or customers < 2:
        raise click.BadParameter("need a bank, a gateway and two customers at least")
    config = ChaosConfig(
        out=out,
        customers=customers,
        banks=banks,
        gateways=gateways,
        duration_s=duration_s,
        payments=payments,
        rate_per_s=rate_per_s,
        faults=faults,
        kinds=wanted,
        netns=netns,
        seed=seed,
    )
    if full:
        config = ChaosConfig(**{**config.__dict__, **FULL})
    configure_logging("console", "error")
    report = asyncio.run(
        _cancellable(run_chaos(config, say=lambda line: click.echo(line, err=True)))
    )
    click.echo(report["headline"])
    click.echo(json.dumps(report["checker"]["violations"] or "no violations"))
    click.echo(f"report: {report['files']['report']}  plot: {report['files']['plot']}")
    if not report["passed"]:
        raise SystemExit(1)


async def _cancellable(run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run the chaos test so that SIGTERM stops it the way Ctrl-C does.

    The run owns namespaces, a bridge, tmpfs mounts and child processes; only
    an unwinding run gives them back. SIGTERM's default action would end the
    process on the spot and leave them all behind.
    """
    task = asyncio.ensure_future(run)
    if owns_signals():
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        click.echo("chaos run stopped by a signal; everything it started is stopped", err=True)
        raise SystemExit(130) from None
