"""One run: build the world a seed describes, run it with faults, heal it, check it.

Phases, all in virtual time:

1. faults: clients pay their intents while the nemesis and the network do
   their worst, until every client is done or `fault_phase_s` has passed;
2. heal: no more faults; every process down is restarted, every partition
   healed;
3. quiescence: run until nothing is pending (clients done, no PREPARED
   transfer at any bank, every record at every replica decided and
   settled, no message on its way), at most `QUIESCENCE_S`;
4. the final checks (`Checker.final`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from strife.bank.ledger import Account, Ledger
from strife.gateway.store import PaymentState
from strife.simulation.bank import BankServer
from strife.simulation.bank_store import SimBankStore
from strife.simulation.clients import Client
from strife.simulation.faults import FaultMix
from strife.simulation.gateway import Replica
from strife.simulation.invariants import Checker
from strife.simulation.nemesis import Nemesis
from strife.simulation.network import Network
from strife.simulation.scenario import CURRENCY, Scenario
from strife.simulation.trace import Trace

QUIESCENCE_S = 600.0
POLL_S = 0.25


class World:
    def __init__(self, seed: int, scenario: Scenario, mix: FaultMix, trace: Trace) -> None:
        self.seed = seed
        self.scenario = scenario
        self.mix = mix
        self.trace = trace
        clock = self._clock

        def stream(name: str) -> random.Random:
            return random.Random(f"{seed}/{name}")

        self.stores: dict[str, SimBankStore] = {}
        self.checker = Checker(self.ledgers, trace, clock)
        self.network = Network(stream("network"), mix, trace, self.checker.unexpected)
        for bank in scenario.banks:
            accounts = [
                Account(a.account_id, a.customer_id, CURRENCY, a.balance_minor)
                for a in scenario.accounts
                if a.bank == bank
            ]
            self.stores[bank] = SimBankStore(
                bank, accounts, stream(f"disk/{bank}"), self.checker.applied, self.checker.broken
            )
        self.checker.opening_total = self.checker.total_balances()
        self.servers = [
            BankServer(
                address,
                {bank: self.stores[bank] for bank in banks},
                self.network,
                trace,
                in_doubt_s=scenario.in_doubt_s,
                clock=clock,
            )
            for address, banks in scenario.hosts.items()
        ]
        self.replicas = [
            Replica(name, scenario, self.network, trace, stream(f"disk/{name}"), clock)
            for name in scenario.gateways
        ]
        self.clients = [
            Client(
                name,
                intents,
                scenario.gateways,
                self.network,
                self.checker,
                trace,
                stream(name),
                lambda: self.network.mix,
            )
            for name, intents in scenario.clients.items()
        ]
        for server in self.servers:
            self.network.register(server.name, server)
        for replica in self.replicas:
            self.network.register(replica.name, replica)
        self.nemesis = Nemesis(
            stream("nemesis"),
            mix,
            self.network,
            trace,
            gateways=self.replicas,
            banks=self.servers,
            clients=[c.name for c in self.clients],
            disks=[r.disk for r in self.replicas] + [s.disk for s in self.stores.values()],
        )
        self.quiet = False

    @staticmethod
    def _clock() -> float:
        return asyncio.get_running_loop().time()

    def ledgers(self) -> dict[str, Ledger]:
        return {bank: store.ledger for bank, store in self.stores.items()}

    async def main(self) -> None:
        for server in self.servers:
            server.start()
        for replica in self.replicas:
            replica.start()
        for client in self.clients:
            client.start()
        nemesis = asyncio.ensure_future(self.nemesis.run())
        await self._until(lambda: all(c.done for c in self.clients), self.scenario.fault_phase_s)
        nemesis.cancel()
        self.network.mix = self.mix.calm()
        self.nemesis.calm()
        self.trace("sim", "heal: no more faults")
        self.quiet = await self._until(lambda: not self.pending(), QUIESCENCE_S)
        self.trace("sim", "quiescent" if self.quiet else "not quiescent")
        self.checker.final({r.name: list(r.rows.values()) for r in self.replicas}, self.pending())

    async def _until(self, condition: Callable[[], bool], within_s: float) -> bool:
        for _ in range(int(within_s / POLL_S) + 1):
            if condition():
                return True
            await asyncio.sleep(POLL_S)
        return condition()

    def pending(self) -> list[str]:
        """What has not settled yet; empty at quiescence."""
        waiting = [f"{c.name} still paying" for c in self.clients if not c.done]
        for replica in self.replicas:
            if replica.serving() is None:
                waiting.append(f"{replica.name} not serving")
            for record in replica.rows.values():
                if record.state == PaymentState.PENDING:
                    waiting.append(f"{replica.name}: {record.transfer_id} undecided")
                elif not record.settled:
                    waiting.append(
                        f"{replica.name}: {record.state} {record.transfer_id} not settled"
                    )
        for bank, store in self.stores.items():
            waiting += [f"{bank}: {t.transfer_id} PREPARED" for t in store.prepared()]
        if self.network.in_flight:
            waiting.append(f"{self.network.in_flight} messages on their way")
        return waiting

    def stop(self) -> None:
        """End every process (the run is over)."""
        for server in self.servers:
            server.crash()
        for replica in self.replicas:
            replica.crash()
        for client in self.clients:
            client.node.crash()
