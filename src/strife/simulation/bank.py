"""Banks: the real `BankHost`, `BankServicer`, `Ledger` and `Resolver`, over a simulated store.

`BankServer` is one bank process (it may host several banks): the real
`BankHost` routing each call by its `bank` field, each bank's real resolver
asking the coordinator named in an in-doubt transfer over the simulated
network.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

import grpc

from strife.bank.host import BankHost
from strife.bank.ledger import Transfer
from strife.bank.resolver import Resolver
from strife.bank.service import BankServicer
from strife.observability import context as request_context
from strife.observability.context import RequestInfo
from strife.simulation.bank_store import SimBankStore
from strife.simulation.network import Inbound, Network
from strife.simulation.nodes import Node, require_alive
from strife.simulation.rpc import RpcAbort, SimContext
from strife.simulation.trace import Trace
from strife.v1 import coordinator_pb2

_SERVICE = "/strife.v1.BankService/"


class SimResolver(Resolver):
    """The bank's real resolver; only its question to the coordinator travels
    over the simulated network instead of a channel."""

    def __init__(
        self,
        store: SimBankStore,
        network: Network,
        *,
        in_doubt_s: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(
            cast(Any, store), cast(Any, None), _unused_lookup, in_doubt_s=in_doubt_s, clock=clock
        )
        self._network = network

    async def _ask(self, transfer: Transfer) -> int | None:
        request = coordinator_pb2.GetDecisionRequest(transfer_id=transfer.transfer_id)
        try:
            reply = await self._network.call(
                transfer.coordinator, "GetDecision", request, deadline_s=self._rpc_timeout_s
            )
        except grpc.aio.AioRpcError:
            return None
        return int(reply.decision)


async def _unused_lookup(name: str) -> str | None:
    return name


class BankServer:
    """One bank process: its banks' stores (on disk), handlers and resolvers."""

    def __init__(
        self,
        address: str,
        stores: dict[str, SimBankStore],
        network: Network,
        trace: Trace,
        *,
        in_doubt_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.address = address
        self.stores = stores
        self._network = network
        self._trace = trace
        self._in_doubt_s = in_doubt_s
        self._clock = clock
        self.host = BankHost(
            {name: BankServicer(name, cast(Any, store)) for name, store in stores.items()}
        )
        self.node: Node | None = None
        self._incarnations = itertools.count(1)
        self._requests = itertools.count(1)

    @property
    def name(self) -> str:
        return self.address

    @property
    def up(self) -> bool:
        return self.node is not None and self.node.alive

    def serving(self) -> Node | None:
        node = self.node
        return node if node is not None and node.alive else None

    def start(self) -> None:
        node = self.node = Node(self.address, next(self._incarnations))
        self._trace(self.address, f"start #{node.incarnation}")
        for store in self.stores.values():
            store.restart(node)
            resolver = SimResolver(
                store, self._network, in_doubt_s=self._in_doubt_s, clock=self._clock
            )
            node.spawn(resolver.run())

    def crash(self) -> None:
        if self.node is None or not self.node.alive:
            return
        self._trace(self.address, "crash")
        self.node.crash()
        for store in self.stores.values():
            store.crash()

    async def dispatch(self, call: Inbound) -> Any:
        require_alive()
        handler = getattr(self.host, call.method, None)
        if handler is None:
            raise RpcAbort(grpc.StatusCode.UNIMPLEMENTED, f"no method {call.method}", ())
        # What the server's interceptors establish: the caller's verified name.
        request_context.begin(
            RequestInfo(
                request_id=str(next(self._requests)),
                method=_SERVICE + call.method,
                role="gateway",
                peer_name=call.peer,
            )
        )
        try:
            return await handler(call.request, SimContext(call.peer))
        except NotImplementedError:  # the generated base class: a method this server lacks
            raise RpcAbort(grpc.StatusCode.UNIMPLEMENTED, f"no method {call.method}", ()) from None
