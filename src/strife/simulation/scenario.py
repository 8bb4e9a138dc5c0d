"""One run's world before anything happens: who exists, who owns what, who wants to pay whom.

Drawn from the seed, like the fault mix: two or three gateway replicas, two
to four banks (sometimes two of them in one server process), a few accounts
per bank, and clients each paying from their own account to accounts at
other banks or at their own (one-phase). Amounts sometimes exceed what the
payer has, so refusals happen too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

CURRENCY = "USD"


@dataclass(frozen=True)
class AccountSpec:
    bank: str
    account_id: str
    customer_id: str
    balance_minor: int


@dataclass(frozen=True)
class Intent:
    """A payment a client wants made once: pay `amount_minor` from its account."""

    intent_id: int
    client: str
    payer: AccountSpec
    payee: AccountSpec
    amount_minor: int


@dataclass(frozen=True)
class Scenario:
    gateways: tuple[str, ...]
    hosts: dict[str, tuple[str, ...]]
    """Bank server (address) -> the banks it hosts."""
    accounts: tuple[AccountSpec, ...]
    clients: dict[str, tuple[Intent, ...]]
    prepare_timeout_s: float
    decision_timeout_s: float
    max_in_flight: int
    settle_interval_s: float
    reply_after: Literal["decision", "settled"]
    in_doubt_s: float
    fault_phase_s: float

    @property
    def banks(self) -> dict[str, str]:
        """Bank -> its server's address."""
        return {bank: host for host, banks in self.hosts.items() for bank in banks}

    @property
    def intents(self) -> list[Intent]:
        return [intent for intents in self.clients.values() for intent in intents]

    def describe(self) -> str:
        hosts = ", ".join(f"{h}=[{' '.join(b)}]" for h, b in self.hosts.items())
        return (
            f"{len(self.gateways)} gateways, {len(self.banks)} banks on {len(self.hosts)}"
            f" servers ({hosts}), {len(self.accounts)} accounts, {len(self.clients)} clients,"
            f" {len(self.intents)} intents; reply_after={self.reply_after}"
            f" prepare_timeout={self.prepare_timeout_s:g}s"
            f" decision_timeout={self.decision_timeout_s:g}s max_in_flight={self.max_in_flight}"
            f" settle_interval={self.settle_interval_s:g}s in_doubt={self.in_doubt_s:g}s"
        )

    @classmethod
    def draw(cls, rng: random.Random) -> Scenario:
        gateways = tuple(f"gw-{n}" for n in range(1, rng.randint(2, 3) + 1))
        bank_names = ["alpha", "beta", "gamma", "delta"][: rng.randint(2, 4)]
        hosts: dict[str, tuple[str, ...]] = {}
        if len(bank_names) >= 3 and rng.random() < 0.4:  # two banks share one server
            hosts["bank-1"] = (bank_names[0], bank_names[1])
            rest = bank_names[2:]
        else:
            rest = bank_names
        for bank in rest:
            hosts[f"bank-{len(hosts) + 1}"] = (bank,)

        accounts: list[AccountSpec] = []
        for bank in bank_names:
            for n in range(1, rng.randint(1, 3) + 1):
                accounts.append(
                    AccountSpec(bank, f"{bank}-{n}-usd", f"{bank}-{n}", rng.randint(0, 20) * 500)
                )
        clients: dict[str, tuple[Intent, ...]] = {}
        payers = rng.sample(accounts, k=min(len(accounts), rng.randint(2, 6)))
        next_id = 0
        for n, payer in enumerate(payers, start=1):
            name = f"client-{n}"
            intents = []
            for _ in range(rng.randint(1, 4)):
                others = [a for a in accounts if a != payer]
                if rng.random() > 0.25:  # mostly across banks: two-phase
                    others = [a for a in others if a.bank != payer.bank] or others
                payee = rng.choice(others)
                ceiling = max(payer.balance_minor, 1000)
                amount = rng.randint(1, ceiling // 2 if rng.random() < 0.8 else ceiling * 2)
                intents.append(Intent(next_id, name, payer, payee, amount))
                next_id += 1
            clients[name] = tuple(intents)

        prepare_timeout_s = rng.choice([0.05, 0.2, 0.5, 1.0, 2.0])
        return cls(
            gateways=gateways,
            hosts=hosts,
            accounts=tuple(accounts),
            clients=clients,
            prepare_timeout_s=prepare_timeout_s,
            decision_timeout_s=rng.choice([0.05, 0.2, 1.0]),
            max_in_flight=rng.choice([2, 4, 256]),
            settle_interval_s=rng.choice([0.1, 0.5]),
            reply_after=rng.choice(["decision", "decision", "settled"]),
            in_doubt_s=rng.choice([0.2, 1.0, 5.0]),
            fault_phase_s=rng.choice([5.0, 15.0, 30.0]),
        )
