"""What a load run is made of: customers, payments and their outcomes.

Plain data, no gRPC: the engine fills it in, statistics and the money audit
read it, and tests build it by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Customer:
    """A seeded customer the load generator logs in as, with its one account."""

    username: str
    password: str
    bank: str
    account_id: str

    @property
    def ref(self) -> tuple[str, str]:
        return self.bank, self.account_id


class Outcome(StrEnum):
    """Where a payment ended from the load generator's point of view.

    Only COMMITTED and ABORTED are answers from the payment system; the money
    audit checks both against the banks' ledgers. REJECTED means the gateway
    refused the request before coordinating (no transfer exists); UNKNOWN
    means no final answer arrived despite retries with the same key, so the
    audit can only check that nothing moved twice; SKIPPED is an open-loop
    payment never sent because the in-flight bound was reached.
    """

    COMMITTED = "COMMITTED"
    ABORTED = "ABORTED"
    REJECTED = "REJECTED"
    UNKNOWN = "UNKNOWN"
    SKIPPED = "SKIPPED"


@dataclass(slots=True)
class Payment:
    """One payment intent: a fresh idempotency key reused on every retry."""

    key: str
    payer: Customer
    payee: Customer
    amount_minor: int
    started_s: float
    """When it was due, seconds after the run started (open loop: the schedule)."""
    latency_ms: float = math.nan
    """First send to final answer, retries included; NaN without an answer."""
    finished_s: float = math.nan
    outcome: Outcome = Outcome.UNKNOWN
    reason: str = ""
    """ErrorInfo reason of an abort or rejection, or the last error of an UNKNOWN."""
    transfer_id: str = ""
    gateway: str = ""
    """The gateway instance that gave the final answer."""
    attempts: int = 0
    replayed: bool = False
    resolved_late: bool = False
    """Answered only by the resolution pass after the load had stopped."""

    @property
    def answered(self) -> bool:
        return self.outcome in (Outcome.COMMITTED, Outcome.ABORTED)

    @property
    def outcome_key(self) -> str:
        """COMMITTED, or ABORTED/INSUFFICIENT_FUNDS style: what the summary counts."""
        if self.outcome is Outcome.COMMITTED or not self.reason:
            return str(self.outcome)
        return f"{self.outcome}/{self.reason}"
