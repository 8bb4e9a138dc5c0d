"""The bank's store, simulated: `BankStore`'s operations over the bank's real `Ledger`.

Each operation is applied by the simulated group-commit writer (`Disk`), so
a prepare is durable exactly when its caller hears YES. Writes forward their
keywords unchanged to the ledger operation of the same name, so a new ledger
operation is simulated as soon as the real servicer calls it. What the ledger
holds is the bank's disk: it survives a crash, and a restart rebuilds the
`Ledger` from it (anything the ledger keeps only in memory is lost, as it
would be).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from strife.bank.ledger import Account, Ledger, Outcome, Transfer, TransferState
from strife.simulation.disk import Disk
from strife.simulation.nodes import Node

# (bank, operation, outcome) after each applied change; (bank, error) for a broken assertion.
Applied = Callable[[str, str, Outcome], None]
Broken = Callable[[str, BaseException], None]


class SimBankStore:
    """`BankStore`'s interface over a `Ledger` whose every change is durable on apply."""

    def __init__(
        self,
        name: str,
        accounts: list[Account],
        rng: random.Random,
        applied: Applied,
        broken: Broken,
    ) -> None:
        self.name = name
        self.ledger = Ledger(accounts)
        self.disk = Disk(name, rng)
        self._applied = applied
        self._broken = broken

    def restart(self, node: Node) -> None:
        """A new process: the ledger as it is on disk (volatile state dropped)."""
        self.ledger = Ledger(self.ledger.accounts.values(), self.ledger.transfers.values())
        self.disk.start(node)

    def crash(self) -> None:
        self.disk.crash()

    async def _apply(self, operation: str, request: dict[str, Any]) -> Outcome:
        def work() -> Outcome:
            try:
                outcome: Outcome = getattr(self.ledger, operation)(**request)
            except AssertionError as exc:
                self._broken(self.name, exc)
                raise
            self._applied(self.name, operation, outcome)
            return outcome

        result: Outcome = await self.disk.submit(work)
        return result

    # The writes the servicer and the resolver make; each forwards its keywords
    # unchanged to the ledger operation of the same name.
    async def prepare(self, **request: Any) -> Outcome:
        return await self._apply("prepare", request)

    async def commit(self, **request: Any) -> Outcome:
        return await self._apply("commit", request)

    async def abort(self, **request: Any) -> Outcome:
        return await self._apply("abort", request)

    async def release(self, **request: Any) -> Outcome:
        return await self._apply("release", request)

    async def process(self, **request: Any) -> Outcome:
        return await self._apply("process", request)

    # Reads of what is on disk.
    def transfer(self, transfer_id: str) -> Transfer | None:
        return self.ledger.transfers.get(transfer_id)

    def prepared(self) -> list[Transfer]:
        return [t for t in self.ledger.transfers.values() if t.state == TransferState.PREPARED]

    def votes(self, transfer_id: str) -> int:
        votes: dict[str, int] = getattr(self.ledger, "votes", {})
        return votes.get(transfer_id, 0)

    def account(self, account_id: str) -> Account | None:
        return self.ledger.accounts.get(account_id)
