"""The replicated application, as PBFT sees it, and a small one to test with.

PBFT orders opaque requests; the application executes them. It must be
deterministic (same requests in the same order, same results and same digest
at every honest replica) and able to hand over and take back its whole state,
so a replica that fell behind can install a snapshot the others certified.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

__all__ = ["Accounts", "StateMachine"]


class StateMachine(Protocol):
    def execute(self, operation: bytes) -> bytes:
        """Apply one request; the result goes back to the client."""
        ...

    def digest(self) -> bytes:
        """A digest of the whole state: equal digests mean equal states."""
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with `snapshot`'s (it may come from a faulty peer: check it)."""
        ...


class Accounts:
    """Accounts with integer balances in minor units: the simulator's application.

    Operations are ASCII: `deposit ACCOUNT AMOUNT`, `transfer FROM TO AMOUNT`,
    `balance ACCOUNT`. A transfer the payer cannot cover is refused, so the order
    of requests decides results, which is what agreement must get right. Money is
    conserved by transfers; `total_minor` counts it.
    """

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}

    def execute(self, operation: bytes) -> bytes:
        words = operation.decode("ascii", errors="replace").split()
        match words:
            case ["deposit", account, amount] if amount.isdigit():
                self.balances[account] = self.balances.get(account, 0) + int(amount)
                return f"ok {self.balances[account]}".encode()
            case ["transfer", payer, payee, amount] if amount.isdigit() and payer != payee:
                if self.balances.get(payer, 0) < int(amount):
                    return b"refused insufficient-funds"
                self.balances[payer] -= int(amount)
                self.balances[payee] = self.balances.get(payee, 0) + int(amount)
                return f"ok {self.balances[payer]}".encode()
            case ["balance", account]:
                return f"ok {self.balances.get(account, 0)}".encode()
            case _:
                return b"refused bad-operation"

    @property
    def total_minor(self) -> int:
        return sum(self.balances.values())

    def digest(self) -> bytes:
        return hashlib.sha256(b"strife-bft/accounts\n" + self.snapshot()).digest()

    def snapshot(self) -> bytes:
        return json.dumps(self.balances, sort_keys=True, separators=(",", ":")).encode()

    def restore(self, snapshot: bytes) -> None:
        loaded = json.loads(snapshot)
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in loaded.items()
        ):
            raise ValueError("not an accounts snapshot")
        self.balances = dict(loaded)
