"""One replica of a replicated bank as a process object (`strife-bank-replica`).

As `BankProcess` does for a plain bank: build it inside the running event
loop, `async with` opens the journal, recovers the replica and starts the
server (or closes whatever had opened, if a step fails), `serve()` returns
when the process is asked to stop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from strife.bank.resolver import cancel, registry_lookup, static_lookup
from strife.bank.seed import SeedRow
from strife.bft.bank_machine import BankMachine, admits
from strife.bft.faults import behaviour as make_behaviour
from strife.bft.group import Group
from strife.bft.invoker import Invoker
from strife.bft.journal import Journal
from strife.bft.node import AUTHZ, SERVICE, ReplicaNode
from strife.bft.resolver import GroupResolver
from strife.bft.signing import Ed25519Signer
from strife.observability.logging import get_logger
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient
from strife.rpc.server import ServerConfig, StrifeServer
from strife.rpc.serving import ServerProcess

__all__ = ["ReplicaProcess", "ReplicaSettings"]

_log = get_logger("strife.bft")


@dataclass(frozen=True)
class ReplicaSettings:
    group: Group
    index: int
    signer: Ed25519Signer
    db: Path
    seed: Sequence[SeedRow] = ()
    byzantine: str | None = None
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    # Where coordinators are, for the resolver: by name, and through the balancer.
    coordinators: Mapping[str, str] = field(default_factory=dict)
    balancer: str | None = None
    in_doubt_s: float = 5.0


class ReplicaProcess(ServerProcess):
    """One replica of a replicated bank: its journal, its PBFT node and its resolver."""

    def __init__(self, config: ServerConfig, settings: ReplicaSettings) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self._wire_bytes = max(
            config.max_message_bytes, settings.group.config.largest_message_bytes
        )
        self.server = StrifeServer(replace(config, max_message_bytes=self._wire_bytes), AUTHZ)
        self._journal: Journal | None = None
        self._pool: ChannelPool | None = None
        self.node: ReplicaNode | None = None
        self._resolver: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.server.address

    async def serve(self) -> int:
        await self._requested.wait()
        return 0

    async def _start(self) -> None:
        s = self.settings
        self._journal = Journal(s.db, synchronous=s.synchronous)
        # Links to peers carry a view change's largest messages (Config.largest_message_bytes).
        self._pool = ChannelPool(
            self.config.certs,
            insecure=self.config.insecure,
            max_message_bytes=self._wire_bytes,
        )
        behaviour = None
        if s.byzantine:
            behaviour = make_behaviour(s.byzantine, s.group.config, s.index, s.signer)
        app = BankMachine.from_seed(s.seed, weak=s.group.config.weak)
        name = s.group.replicas[s.index].name
        voters = frozenset(r.name for r in s.group.replicas)
        self.node = ReplicaNode(
            s.group, s.index, s.signer, app, self._journal, self._pool, behaviour,
            functools.partial(admits, voters=voters),
        )  # fmt: skip
        self.node.recover()
        self.server.add_service(SERVICE, self.node.register)
        await self.server.start()
        self._resolver = asyncio.create_task(self._resolve(app, name), name="resolver")
        _log.info(
            "replica_serving",
            bank=s.group.bank,
            replica=s.index,
            name=s.group.replicas[s.index].name,
            address=self.address,
            byzantine=s.byzantine or "honest",
        )

    async def _resolve(self, app: BankMachine, name: str) -> None:
        """Each replica's resolver votes on the legs left in doubt (`strife.bft.resolver`)."""
        s = self.settings
        assert self._pool is not None
        lookup = static_lookup(dict(s.coordinators))
        if s.balancer:
            lookup = registry_lookup(BalancerClient(self._pool, s.balancer), dict(s.coordinators))
        invoker = Invoker(s.group, f"bank/{name}", s.signer.key, self._pool, lanes=8)
        resolver = GroupResolver(
            lambda: app, name, invoker, self._pool, lookup, in_doubt_s=s.in_doubt_s
        )
        await resolver.run()

    async def _close(self) -> None:
        if self._resolver is not None:
            await cancel(self._resolver)
            self._resolver = None
        await self.server.stop()
        if self.node is not None:
            await self.node.close()
            self.node = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
