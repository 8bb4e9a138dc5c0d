"""Gateway replicas: the real `PaymentCoordinator` and servicers over a simulated store.

`Replica` is one gateway process: on each start it builds a fresh
`PaymentCoordinator` over the same rows, runs `recover()` before accepting
calls, then the settler, as `strife.gateway.main` does. Its bank stubs send
every call over the simulated network to the bank server's real `BankHost`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

from strife.gateway.coordinator import CoordinatorConfig, PaymentCoordinator
from strife.gateway.service import CoordinatorServicer, GatewayServicer
from strife.gateway.store import PaymentRecord
from strife.observability import context as request_context
from strife.observability.context import RequestInfo
from strife.simulation.disk import Disk
from strife.simulation.gateway_store import SimGatewayStore
from strife.simulation.network import Inbound, Network
from strife.simulation.nodes import Node, require_alive
from strife.simulation.rpc import RpcAbort, SimContext
from strife.simulation.scenario import Scenario
from strife.simulation.trace import Trace


class SimBankStub:
    """A `BankServiceStub` whose calls travel over the simulated network."""

    def __init__(self, network: Network, address: str) -> None:
        self._network = network
        self._address = address

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        network, address = self._network, self._address

        # A stub's signature: the deadline is grpc's `timeout=` keyword.
        async def call(request: Any, *, timeout: float | None = None, **_: Any) -> Any:  # noqa: ASYNC109
            return await network.call(address, method, request, deadline_s=timeout)

        return call


class SimBanks:
    """`strife.gateway.banks.Banks` over a static directory of simulated servers."""

    def __init__(self, network: Network, addresses: dict[str, str]) -> None:
        self._addresses = dict(addresses)
        self._stubs = {a: SimBankStub(network, a) for a in sorted(set(addresses.values()))}

    async def address(self, bank: str) -> str | None:
        return self._addresses.get(bank)

    def at(self, address: str) -> Any:
        return self._stubs[address]

    async def exists(self, bank: str) -> bool:
        return bank in self._addresses

    async def stub(self, bank: str) -> Any | None:
        address = self._addresses.get(bank)
        return None if address is None else self._stubs[address]


class Replica:
    """One gateway process: durable rows, and a coordinator per incarnation."""

    def __init__(
        self,
        name: str,
        scenario: Scenario,
        network: Network,
        trace: Trace,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.rows: dict[str, PaymentRecord] = {}
        self.disk = Disk(name, rng)
        self._scenario = scenario
        self._network = network
        self._trace = trace
        self._rng = rng
        self._clock = clock
        self.node: Node | None = None
        self.coordinator: PaymentCoordinator | None = None
        self._accepting = False
        self._servicers: list[Any] = []
        self._incarnations = itertools.count(1)
        self._requests = itertools.count(1)

    def config(self) -> CoordinatorConfig:
        s = self._scenario
        return CoordinatorConfig(
            name=self.name,
            prepare_timeout_s=s.prepare_timeout_s,
            decision_timeout_s=s.decision_timeout_s,
            max_in_flight=s.max_in_flight,
            settle_interval_s=s.settle_interval_s,
            reply_after=s.reply_after,
        )

    def serving(self) -> Node | None:
        node = self.node
        return node if self._accepting and node is not None and node.alive else None

    @property
    def up(self) -> bool:
        return self.node is not None and self.node.alive

    def start(self) -> None:
        node = self.node = Node(self.name, next(self._incarnations))
        self._trace(self.name, f"start #{node.incarnation}")
        store = cast(Any, SimGatewayStore(self.rows, self.disk, self._clock, self._rng))
        banks = cast(Any, SimBanks(self._network, self._scenario.banks))
        coordinator = self.coordinator = PaymentCoordinator(self.config(), store, banks)
        # Tokens and the login throttle serve Login only, which runs no payment.
        self._servicers = [
            GatewayServicer(store, coordinator, banks, cast(Any, None), cast(Any, None)),
            CoordinatorServicer(coordinator),
        ]
        self.disk.start(node)
        node.spawn(self._boot(coordinator))

    async def _boot(self, coordinator: PaymentCoordinator) -> None:
        """As `strife-gateway` starts: recover, then serve, then settle forever."""
        recovered = await coordinator.recover()
        self._accepting = True
        self._trace(self.name, f"serving (recovered {recovered})")
        await coordinator.settle_forever()

    def crash(self) -> None:
        if self.node is None or not self.node.alive:
            return
        self._trace(self.name, "crash")
        self._accepting = False
        self.node.crash()
        self.disk.crash()

    async def dispatch(self, call: Inbound) -> Any:
        require_alive()
        for servicer in self._servicers:
            handler = getattr(servicer, call.method, None)
            if handler is not None:
                break
        else:
            raise RpcAbort(grpc.StatusCode.UNIMPLEMENTED, f"no method {call.method}", ())
        # What the interceptors establish: the peer's name and the caller's token.
        request_context.begin(
            RequestInfo(
                request_id=str(next(self._requests)),
                method=call.method,
                peer_name=call.peer,
                principal=call.principal,
            )
        )
        return await handler(call.request, SimContext(call.peer))
