"""The values the client hands back: plain frozen dataclasses, no gRPC types.

Callers should never need `strife.v1` to use the library, so every protobuf
message is converted here, once, into a typed value whose amounts stay exact
integers of minor units.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from strife.money import check_amount, format_amount, parse_amount

# The gateway's rule for idempotency keys (see gateway/service.py), checked
# before a key is stored so a bad key fails at `pay`, not in the drainer.
_KEY = re.compile(r"[A-Za-z0-9._:-]{16,255}")


def new_idempotency_key() -> str:
    """128 random bits as a UUIDv4: never derived from time, so never reused by accident."""
    return str(uuid.uuid4())


def check_idempotency_key(key: str) -> str:
    """Refuse keys the gateway would refuse, before they reach the outbox."""
    if not _KEY.fullmatch(key):
        raise ValueError("an idempotency key is 16-255 characters of [A-Za-z0-9._:-]")
    return key


def parse_amount_text(text: str, currency: str) -> int:
    """Decimal text typed by a person ("12.34") to exact minor units (see `parse_amount`)."""
    return parse_amount(text, currency)


def amount_text(amount_minor: int, currency: str) -> str:
    """Minor units back to the decimal text a person reads."""
    return format_amount(amount_minor, currency)


@dataclass(frozen=True, slots=True, order=True)
class AccountRef:
    """An account at a named bank; written "bank/account_id"."""

    bank: str
    account_id: str

    @classmethod
    def parse(cls, text: str) -> AccountRef:
        bank, sep, account_id = text.partition("/")
        if not sep or not bank or not account_id or "/" in account_id:
            raise ValueError(f"expected BANK/ACCOUNT, got {text!r}")
        return cls(bank, account_id)

    def __str__(self) -> str:
        return f"{self.bank}/{self.account_id}"


@dataclass(frozen=True, slots=True)
class Account:
    """One of the logged-in customer's accounts, as the bank listed it at login."""

    ref: AccountRef
    currency: str


class PaymentStatus(StrEnum):
    """The gateway's state of a payment (one idempotency key)."""

    PENDING = "PENDING"
    COMMITTED = "COMMITTED"
    ABORTED = "ABORTED"


class EntryState(StrEnum):
    """Where an outbox entry is.

    PENDING: stored, not being sent right now (never sent, or waiting for a
    retry). IN_FLIGHT: a send may be on the wire; if the process dies here the
    outcome is unknown and is asked for (`GetPayment`) before any resend.
    COMMITTED / ABORTED: the gateway's final answer. FAILED: a terminal error
    that was not a payment outcome (the request was refused, or cancelled).
    """

    PENDING = "PENDING"
    IN_FLIGHT = "IN_FLIGHT"
    COMMITTED = "COMMITTED"
    ABORTED = "ABORTED"
    FAILED = "FAILED"

    @property
    def settled(self) -> bool:
        return self in _SETTLED


_SETTLED = frozenset({EntryState.COMMITTED, EntryState.ABORTED, EntryState.FAILED})


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment as the gateway records it (`payment_status`)."""

    idempotency_key: str
    transfer_id: str
    status: PaymentStatus
    abort_reason: str
    abort_transient: bool
    from_account: AccountRef
    to_account: AccountRef
    amount_minor: int
    currency: str
    created_at_unix_ms: int

    @classmethod
    def from_proto(cls, message: Any) -> Payment:
        from strife.v1 import gateway_pb2

        status = {
            gateway_pb2.PAYMENT_STATUS_PENDING: PaymentStatus.PENDING,
            gateway_pb2.PAYMENT_STATUS_COMMITTED: PaymentStatus.COMMITTED,
            gateway_pb2.PAYMENT_STATUS_ABORTED: PaymentStatus.ABORTED,
        }.get(message.status, PaymentStatus.PENDING)
        return cls(
            idempotency_key=message.idempotency_key,
            transfer_id=message.transfer_id,
            status=status,
            abort_reason=message.abort_reason,
            abort_transient=message.abort_transient,
            from_account=AccountRef(message.from_account.bank, message.from_account.account_id),
            to_account=AccountRef(message.to_account.bank, message.to_account.account_id),
            amount_minor=message.amount.amount_minor,
            currency=message.amount.currency,
            created_at_unix_ms=message.created_at_unix_ms,
        )


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One payment intent in the outbox, with its delivery history.

    `idempotency_key` is the key of the current attempt; `keys` lists every
    key the entry has used, oldest first (more than one only after a
    transient abort was resubmitted under a new key).
    """

    id: int
    customer_id: str
    idempotency_key: str
    keys: tuple[str, ...]
    from_account: AccountRef
    to_account: AccountRef
    amount_minor: int
    currency: str
    description: str
    state: EntryState
    transfer_id: str
    reason: str
    last_error: str
    sends: int
    resubmits: int
    gateway: str
    created_at_unix_ms: int
    updated_at_unix_ms: int

    def __post_init__(self) -> None:
        # Paired with the CHECK constraints: an entry is never built from a bad row.
        check_amount(self.amount_minor)
        assert self.idempotency_key in self.keys, "the current key is one of the entry's keys"
        assert self.state != EntryState.COMMITTED or self.transfer_id, "committed without an id"

    @property
    def settled(self) -> bool:
        return self.state.settled

    @property
    def amount(self) -> str:
        return amount_text(self.amount_minor, self.currency)


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """What `pay` returns and what notifications carry: an entry's outcome so far.

    `settled` is False while the payment is queued (PENDING or IN_FLIGHT);
    then `reason` holds the last retryable error, if any.
    """

    entry_id: int
    idempotency_key: str
    state: EntryState
    transfer_id: str
    reason: str
    last_error: str
    from_account: AccountRef
    to_account: AccountRef
    amount_minor: int
    currency: str

    @classmethod
    def of(cls, entry: OutboxEntry) -> PaymentResult:
        return cls(
            entry_id=entry.id,
            idempotency_key=entry.idempotency_key,
            state=entry.state,
            transfer_id=entry.transfer_id,
            reason=entry.reason,
            last_error=entry.last_error,
            from_account=entry.from_account,
            to_account=entry.to_account,
            amount_minor=entry.amount_minor,
            currency=entry.currency,
        )

    @property
    def settled(self) -> bool:
        return self.state.settled

    @property
    def queued(self) -> bool:
        return not self.state.settled

    @property
    def committed(self) -> bool:
        return self.state == EntryState.COMMITTED

    @property
    def amount(self) -> str:
        return amount_text(self.amount_minor, self.currency)


@dataclass(frozen=True, slots=True)
class Balance:
    """Balance of one account; `held_minor` belongs to prepared, undecided transfers."""

    account: AccountRef
    currency: str
    balance_minor: int
    held_minor: int
    available_minor: int

    @classmethod
    def from_proto(cls, message: Any) -> Balance:
        return cls(
            account=AccountRef(message.account.bank, message.account.account_id),
            currency=message.balance.currency,
            balance_minor=message.balance.amount_minor,
            held_minor=message.held.amount_minor,
            available_minor=message.available.amount_minor,
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One posted ledger line: debits negative, credits positive."""

    sequence: int
    transfer_id: str
    account: AccountRef
    amount_minor: int
    currency: str
    counterparty: str
    posted_at_unix_ms: int

    @classmethod
    def from_proto(cls, message: Any) -> LedgerEntry:
        return cls(
            sequence=message.sequence,
            transfer_id=message.transfer_id,
            account=AccountRef(message.account.bank, message.account.account_id),
            amount_minor=message.amount.amount_minor,
            currency=message.amount.currency,
            counterparty=message.counterparty,
            posted_at_unix_ms=message.posted_at_unix_ms,
        )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of an account's history; `next_page_token` is empty on the last page."""

    entries: tuple[LedgerEntry, ...]
    next_page_token: str
