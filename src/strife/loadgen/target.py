"""Where the load goes: a running cluster, or one the load generator starts itself.

Either way the result is a `Target`: the balancer's address, the client and
admin identities (the admin one reads the banks' books for the audit), the
customers to log in as, and the cluster's process ids for memory and CPU
sampling when they are known.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from strife.cluster.supervisor import Supervisor, read_state
from strife.cluster.topology import Topology, load_topology
from strife.loadgen._model import Customer
from strife.loadgen.config import ConfigError
from strife.loadgen.customers import from_topology, from_usernames
from strife.rpc.addresses import free_port

Say = Callable[[str], None]


def _no_pids() -> dict[str, int]:
    return {}


@dataclass
class Target:
    balancer: str
    client_certs: Path
    admin_certs: Path
    customers: list[Customer]
    pids: Callable[[], Mapping[str, int]] = _no_pids
    topology: Topology | None = None
    notes: dict[str, str] = field(default_factory=dict)


def identities(certs: Path, admin_certs: Path | None) -> tuple[Path, Path]:
    """`certs` is a cluster's certificate folder (client-default/, admin/) or one identity."""
    if (certs / "ca.crt").is_file():
        client = certs
        admin = admin_certs or certs.parent / "admin"
    else:
        client = certs / "client-default"
        admin = admin_certs or certs / "admin"
    for role, folder in (("client", client), ("admin", admin)):
        if not (folder / "ca.crt").is_file():
            raise ConfigError(
                f"no {role} identity at {folder} (ca.crt, tls.crt, tls.key); the audit reads"
                " the banks' books as admin: pass --admin-certs"
            )
    return client, admin


def running_cluster(
    balancer: str,
    certs: Path,
    *,
    admin_certs: Path | None = None,
    config: Path | None = None,
    usernames: str | None = None,
) -> Target:
    """A cluster started elsewhere (e.g. `strife cluster up`); customers from --config or a list."""
    client, admin = identities(certs, admin_certs)
    if (config is None) == (usernames is None):
        raise ConfigError("name the customers with exactly one of --config or --customers")
    topology = load_topology(config) if config is not None else None
    customers = (
        from_topology(topology)
        if topology is not None
        else from_usernames((usernames or "").split(","))
    )
    target = Target(balancer, client, admin, customers, topology=topology)
    if topology is not None:
        root = topology.data_dir.resolve()

        def pids() -> dict[str, int]:
            state = read_state(root) or {}
            found = {str(c["name"]): int(c["pid"]) for c in state.get("children", [])}
            if state.get("supervisor_pid"):
                found["supervisor"] = int(state["supervisor_pid"])
            return found

        target.pids = pids
    return target


def sized_topology(
    topology: Topology, clients: int, customers_per_bank: int | None, data_dir: Path
) -> Topology:
    """The topology with enough generated customers for `clients`, on a free balancer port."""
    per_bank = customers_per_bank or math.ceil(clients / len(topology.banks))
    banks = tuple(
        bank if bank.seed is not None else replace(bank, customers=max(bank.customers, per_bank))
        for bank in topology.banks
    )
    replicated = tuple(
        bank if bank.seed is not None else replace(bank, customers=max(bank.customers, per_bank))
        for bank in topology.replicated
    )
    return replace(
        topology,
        data_dir=data_dir,
        balancer_listen=f"127.0.0.1:{free_port()}",
        banks=banks,
        replicated=replicated,
    )


@asynccontextmanager
async def own_cluster(
    topology: Topology, say: Say, *, on_lost: Callable[[], None] | None = None
) -> AsyncIterator[Target]:
    """Start `topology` under a Supervisor in this process; stop it on the way out.

    The supervisor restarts crashed children as usual. If it stops by
    itself (SIGINT/SIGTERM reach it) `on_lost` is called, so the caller can
    cancel the load rather than hammer a cluster that is going away.
    """
    supervisor = Supervisor(topology, say=say)
    await supervisor.up()
    supervising = asyncio.create_task(supervisor.supervise(), name="supervisor")
    leaving = False

    def lost(_: asyncio.Task[None]) -> None:
        if not leaving and on_lost is not None:
            on_lost()

    supervising.add_done_callback(lost)
    try:
        yield Target(
            balancer=supervisor.child("balancer").address,
            client_certs=supervisor.certs_dir / "client-default",
            admin_certs=supervisor.certs_dir / "admin",
            customers=from_topology(topology),
            pids=lambda: {c.name: c.pid for c in supervisor.children},
            topology=topology,
            notes={"data_dir": str(supervisor.root)},
        )
    finally:
        leaving = True
        supervisor.stop()
        await supervising
