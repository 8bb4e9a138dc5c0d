"""Processes found through the balancer's registry.

For deployments where every process serves /metrics on one agreed port (the
Kubernetes manifests use 7402): the registry knows each bank's and gateway's
gRPC address, and its host with that port is where its metrics are. Banks
served by one process register separately at one address; they are one
process here.
"""

from __future__ import annotations

from pathlib import Path

from strife.rpc.addresses import join_host_port, split_host_port
from strife.top.targets import NoTargets, Target


def _at(address: str, port: int) -> str:
    host, _ = split_host_port(address)
    return join_host_port(host, port)


async def list_registered(balancer: str, certs: Path, metrics_port: int) -> list[Target]:
    """The balancer itself, then every registered bank process and gateway."""
    from strife.rpc.channels import ChannelPool
    from strife.rpc.discovery import BalancerClient

    async with ChannelPool(certs) as pool:
        registry = BalancerClient(pool, balancer)
        banks: dict[str, list[str]] = {}
        for server in await registry.list("bank"):
            banks.setdefault(server.address, []).append(server.instance)
        gateways = await registry.list("gateway")
    if not banks and not gateways:
        raise NoTargets(f"the balancer at {balancer} has no bank or gateway registered")
    return [
        Target("balancer", _at(balancer, metrics_port), role="balancer"),
        *(
            Target("bank-" + "+".join(sorted(names)), _at(address, metrics_port), role="bank")
            for address, names in sorted(banks.items(), key=lambda item: sorted(item[1]))
        ),
        *(
            Target(f"gateway-{server.instance}", _at(server.address, metrics_port), role="gateway")
            for server in sorted(gateways, key=lambda server: server.instance)
        ),
    ]
