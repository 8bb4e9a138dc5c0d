"""Which customers to log in as, and whom they pay.

Customers come from a topology (its seed files, or the generated `<bank>-<n>`
customers with the development password rule of `strife.cluster.seeds`) or
from a list of usernames following that rule. Payers are interleaved across
banks, so 10 clients on 3 banks are 4/3/3 and not 10 from the first bank.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from itertools import zip_longest
from pathlib import Path

from strife.bank.seed import load_seed
from strife.cluster.seeds import account_of, generated_rows, password_of
from strife.cluster.topology import BankSpec, ReplicatedBankSpec, Topology
from strife.loadgen._model import Customer
from strife.loadgen.config import ConfigError, Mix, PayeeSet
from strife.security.passwords import is_hash


def from_topology(topology: Topology, currency: str = "USD") -> list[Customer]:
    """Every customer the topology's banks (replicated ones too) are seeded with,
    interleaved across banks.

    From a seed file: each customer's first account in `currency`; customers
    whose password is stored already hashed cannot be logged in as and are
    left out.
    """
    per_bank: list[list[Customer]] = []
    banks: list[BankSpec | ReplicatedBankSpec] = [*topology.banks, *topology.replicated]
    for bank in banks:
        if bank.seed is None:
            rows = [
                Customer(r["username"], r["password"], bank.name, r["account_id"])
                for r in generated_rows(bank.name, bank.customers)
            ]
        else:
            rows = _seed_customers(bank.seed, bank.name, currency)
        per_bank.append(rows)
    return _interleave(per_bank)


def from_usernames(usernames: Iterable[str]) -> list[Customer]:
    """`alpha-1,beta-2`: the bank is the name before the last dash (the seeds' rule)."""
    customers = []
    for raw in usernames:
        user = raw.strip()
        if not user:
            continue
        bank, dash, number = user.rpartition("-")
        if not dash or not bank or not number:
            raise ConfigError(f"{user!r} is not a generated customer name like alpha-1")
        customers.append(Customer(user, password_of(user), bank, account_of(user)))
    if len({c.username for c in customers}) != len(customers):
        raise ConfigError("customer names must be unique")
    by_bank: dict[str, list[Customer]] = {}
    for customer in customers:
        by_bank.setdefault(customer.bank, []).append(customer)
    return _interleave(list(by_bank.values()))


def choose_payers(
    customers: Sequence[Customer], clients: int, rng: random.Random
) -> list[Customer]:
    """`clients` customers, one simulated client each (own login), spread across banks.

    Drawn at random within each bank (repeatable with a seed), so that runs
    one after another on the same cluster do not all spend the same few
    customers' money.
    """
    if clients > len(customers):
        raise ConfigError(
            f"{clients} clients need {clients} customers, but only {len(customers)} are known;"
            " seed more (topology `customers = N`, or --customers-per-bank with --start)"
        )
    by_bank: dict[str, list[Customer]] = {}
    for customer in customers:
        by_bank.setdefault(customer.bank, []).append(customer)
    for group in by_bank.values():
        rng.shuffle(group)
    return _interleave(list(by_bank.values()))[:clients]


def payee_pool(
    customers: Sequence[Customer], payers: Sequence[Customer], mix: Mix, payees: PayeeSet
) -> list[Customer]:
    """Whom the payers pay: each other when that is possible (`auto`), or everyone (`all`).

    Paying each other keeps the money inside the group: a random walk with
    no drift, so a long run or many runs never drain a payer into
    INSUFFICIENT_FUNDS. A single payer (or one bank with cross-bank
    payments) has to pay outsiders.
    """
    spans = mix == "any" or len({c.bank for c in payers}) >= 2
    if payees == "auto" and len(payers) >= 2 and spans:
        return list(payers)
    return list(customers)


class PayeePicker:
    """A random payee for a payer: at another bank (cross) or any other account (any)."""

    def __init__(self, customers: Sequence[Customer], mix: Mix) -> None:
        self._mix = mix
        self._all = list(customers)
        self._other_banks: dict[str, list[Customer]] = {}
        for bank in {c.bank for c in customers}:
            self._other_banks[bank] = [c for c in customers if c.bank != bank]
        if mix == "cross" and len(self._other_banks) < 2:
            raise ConfigError("cross-bank payments need customers at two banks at least")
        if len(self._all) < 2:
            raise ConfigError("payments need two accounts at least")

    def pick(self, payer: Customer, rng: random.Random) -> Customer:
        if self._mix == "cross":
            return rng.choice(self._other_banks[payer.bank])
        while True:  # bounded in expectation: at least half the draws are someone else
            payee = rng.choice(self._all)
            if payee.ref != payer.ref:
                return payee


def _seed_customers(path: Path, bank: str, currency: str) -> list[Customer]:
    try:
        rows = load_seed(path, bank)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    chosen: dict[str, Customer] = {}
    for row in rows:
        if row.currency != currency or is_hash(row.password) or row.username in chosen:
            continue
        chosen[row.username] = Customer(row.username, row.password, bank, row.account_id)
    return list(chosen.values())


def _interleave(groups: list[list[Customer]]) -> list[Customer]:
    return [c for row in zip_longest(*groups) for c in row if c is not None]
