"""`strife-balancer`: service registry and look-aside load balancer."""

from __future__ import annotations

from typing import Any

import click

from strife.balancer.policies import POLICY_NAMES, PolicyName
from strife.balancer.registry import LeaseConfig
from strife.balancer.service import BalancerServer, BalancerSettings
from strife.rpc.cli import server_config, server_options
from strife.rpc.server import AddressInUseError, ServerConfig, run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@server_options
@click.option(
    "--policy",
    type=click.Choice(POLICY_NAMES),
    default="round_robin",
    show_default=True,
    help="GetBestServer policy when a request names none.",
)
@click.option(
    "--heartbeat-interval",
    "heartbeat_interval_s",
    type=click.FloatRange(min=0.01, max=3600),
    default=1.0,
    show_default=True,
    help="Seconds between the load reports instances are asked to send.",
)
@click.option(
    "--lease-ttl",
    "lease_ttl_s",
    type=click.FloatRange(min=0.02, max=7200),
    default=3.0,
    show_default=True,
    help="Seconds without a heartbeat before an instance is evicted (>= 2 intervals).",
)
def main(
    policy: PolicyName, heartbeat_interval_s: float, lease_ttl_s: float, **options: Any
) -> None:
    """Keep the registry of banks and gateways and answer GetBestServer."""
    try:
        leases = LeaseConfig(heartbeat_interval_s=heartbeat_interval_s, lease_ttl_s=lease_ttl_s)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--lease-ttl") from exc
    config = server_config("balancer", options, identity="balancer")
    settings = BalancerSettings(policy=policy, leases=leases)
    try:
        run(lambda: _serve(config, settings))
    except AddressInUseError as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve(config: ServerConfig, settings: BalancerSettings) -> None:
    balancer = BalancerServer(config, settings)
    # Handlers first: a SIGTERM that arrives while starting still stops gracefully.
    requested = balancer.server.install_signal_handlers()
    await balancer.start()
    await balancer.serve_until_signal(requested)
