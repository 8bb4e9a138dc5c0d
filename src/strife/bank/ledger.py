"""The bank's ledger: accounts, holds and transfers as a pure state machine.

The ledger is what a bank *is*: accounts with balances, the holds and pending
credits of two-phase commit, and the transfer records that make every payment
exactly-once. It knows nothing of gRPC, SQLite or asyncio, so that every rule of
money can be tested directly and replayed deterministically (later, replicated
by PBFT). Each operation returns the snapshots it changed (`Changes`); the store
persists them in one transaction before anyone is told the outcome.

Two kinds of failure, kept apart on purpose:

- A malformed request, or one the ledger's state forbids outright (wrong
  coordinator, transfer id reused for a different request), raises
  `LedgerError` and changes nothing.
- A *business refusal* of a new transfer id (unknown account, currency
  mismatch, insufficient funds, overflow) is recorded: the transfer is stored
  ABORTED with the reason. It is a vote NO that can never turn into a YES later,
  whichever gateway replica retries the same id. Such calls return an
  `Outcome` whose transfer is ABORTED; `abort_error` gives the error to answer.

Assertions check our own bugs, never the caller's input: cheap ones on the way
into and out of each operation, the full set in `check_invariants`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from strife.money import MAX_AMOUNT_MINOR, MoneyError, check_amount, check_currency

__all__ = [
    "MAX_AMOUNT_MINOR",
    "MAX_FINGERPRINT_BYTES",
    "MAX_ID_LENGTH",
    "Account",
    "Changes",
    "Entry",
    "ErrorKind",
    "Ledger",
    "LedgerError",
    "Leg",
    "Outcome",
    "Posting",
    "Reason",
    "Transfer",
    "TransferState",
    "abort_error",
]

# MAX_AMOUNT_MINOR (2**63 - 1, from strife.money): amounts travel as protobuf
# int64, so no amount, balance or balance-plus-pending-credits may exceed it.

MAX_ID_LENGTH = 256
"""Upper bound on transfer, coordinator, account and counterparty ids (chars)."""

MAX_FINGERPRINT_BYTES = 64
"""A request fingerprint is a digest (SHA-256 is 32 bytes); bound what we store."""


class Leg(StrEnum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"


class TransferState(StrEnum):
    PREPARED = "PREPARED"
    COMMITTED = "COMMITTED"
    ABORTED = "ABORTED"


class ErrorKind(StrEnum):
    """Named after the gRPC status codes the servicer maps them to."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    ABORTED = "ABORTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class Reason(StrEnum):
    """`google.rpc.ErrorInfo` reasons (UPPER_SNAKE) the ledger produces.

    The values are those of `strife.errors.Reason`, which this pure module may
    not import (it pulls in gRPC). ACCOUNT_EXISTS (seeding only) and
    ABORTED_BY_COORDINATOR (stored, answered as TRANSFER_ABORTED) never reach
    the wire.
    """

    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    INVALID_CURRENCY = "INVALID_CURRENCY"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    ACCOUNT_EXISTS = "ACCOUNT_EXISTS"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    NOT_ACCOUNT_OWNER = "NOT_ACCOUNT_OWNER"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    AMOUNT_OVERFLOW = "AMOUNT_OVERFLOW"
    TRANSFER_ID_REUSED = "TRANSFER_ID_REUSED"
    TRANSFER_NOT_FOUND = "TRANSFER_NOT_FOUND"
    TRANSFER_ABORTED = "TRANSFER_ABORTED"
    TRANSFER_COMMITTED = "TRANSFER_COMMITTED"
    NOT_COORDINATOR = "NOT_COORDINATOR"
    REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"
    ABORTED_BY_COORDINATOR = "ABORTED_BY_COORDINATOR"


# A refusal recorded on a transfer answers with its own reason, under this code.
_REFUSAL_KIND: dict[str, ErrorKind] = {
    Reason.ACCOUNT_NOT_FOUND: ErrorKind.NOT_FOUND,
    Reason.NOT_ACCOUNT_OWNER: ErrorKind.PERMISSION_DENIED,
    Reason.CURRENCY_MISMATCH: ErrorKind.FAILED_PRECONDITION,
    Reason.INSUFFICIENT_FUNDS: ErrorKind.FAILED_PRECONDITION,
    Reason.AMOUNT_OVERFLOW: ErrorKind.FAILED_PRECONDITION,
}


class LedgerError(Exception):
    """A request the ledger refused without changing anything."""

    def __init__(self, kind: ErrorKind, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.kind = kind
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Account:
    """An account snapshot. Immutable, so a snapshot handed to the store stays true."""

    account_id: str
    customer_id: str
    currency: str
    balance_minor: int
    held_minor: int = 0
    """Sum of PREPARED debits: promised away, not yet gone."""
    pending_credit_minor: int = 0
    """Sum of PREPARED credits: promised to us, not yet spendable."""

    @property
    def available_minor(self) -> int:
        return self.balance_minor - self.held_minor


@dataclass(frozen=True, slots=True)
class Posting:
    """One leg of a transfer at this bank; `counterparty` names the other side."""

    account_id: str
    leg: Leg
    amount_minor: int
    currency: str
    counterparty: str

    def __post_init__(self) -> None:
        # The store may hand back plain strings; keep the enum so `==` is exact.
        object.__setattr__(self, "leg", Leg(self.leg))


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer id's record. Ids never recycle: a finished record may leave
    memory (`Ledger.evict`), but its store keeps it and hands it back
    (`Ledger.readmit`) before the id is acted on again."""

    transfer_id: str
    fingerprint: bytes
    state: TransferState
    coordinator: str
    postings: tuple[Posting, ...]
    one_phase: bool
    abort_reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", TransferState(self.state))
        object.__setattr__(self, "postings", tuple(self.postings))


@dataclass(frozen=True, slots=True)
class Entry:
    """A posted ledger line: negative for a debit, positive for a credit."""

    transfer_id: str
    account_id: str
    amount_minor: int
    currency: str
    counterparty: str


@dataclass(frozen=True, slots=True)
class Changes:
    """What one operation changed, for the store to write in one transaction.

    Snapshots are taken *after* the operation: upsert accounts and transfers,
    append entries.
    """

    accounts: list[Account] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    """Transfer ids whose PREPARED record was withdrawn (deleted, not aborted)."""

    @property
    def empty(self) -> bool:
        return not (self.accounts or self.transfers or self.entries or self.released)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The transfer's state after the call; `replayed` means nothing was done again."""

    transfer: Transfer
    changes: Changes
    replayed: bool


def abort_error(transfer: Transfer) -> LedgerError:
    """The error a servicer answers for an ABORTED transfer, after persisting it.

    A business refusal answers with its own reason (the same one on every
    retry, as Stripe replays a failure); an abort by the coordinator, or its
    tombstone, answers TRANSFER_ABORTED.
    """
    assert transfer.state == TransferState.ABORTED, transfer
    kind = _REFUSAL_KIND.get(transfer.abort_reason)
    if kind is not None:
        return LedgerError(kind, transfer.abort_reason, f"transfer {transfer.transfer_id} refused")
    return LedgerError(
        ErrorKind.FAILED_PRECONDITION,
        Reason.TRANSFER_ABORTED,
        f"transfer {transfer.transfer_id} was aborted ({transfer.abort_reason})",
    )


class Ledger:
    """Accounts and transfer records of one bank, and the rules that move money."""

    def __init__(
        self, accounts: Iterable[Account] = (), transfers: Iterable[Transfer] = ()
    ) -> None:
        self.accounts: dict[str, Account] = {}
        self.transfers: dict[str, Transfer] = {}
        for account in accounts:
            assert account.account_id not in self.accounts, account.account_id
            self.accounts[account.account_id] = account
        for transfer in transfers:
            assert transfer.transfer_id not in self.transfers, transfer.transfer_id
            self.transfers[transfer.transfer_id] = transfer
        # Volatile: how often each PREPARED id was voted YES again (a replayed
        # prepare). The resolver aborts on a presumed-abort answer only if no
        # YES was given since it asked (`abort(..., unless_voted_since=...)`).
        self.votes: dict[str, int] = {}
        # Paired with the checks on the way out of every operation: what the store
        # gives back must be exactly what we handed it.
        self.check_invariants()

    # ----------------------------------------------------------------- accounts

    def add_account(
        self, *, account_id: str, customer_id: str, currency: str, balance_minor: int = 0
    ) -> Changes:
        """Open an account (seed data). An opening balance is money from outside."""
        _require_id(account_id, "account_id")
        _require_currency(currency)
        if not _is_int(balance_minor) or not 0 <= balance_minor <= MAX_AMOUNT_MINOR:
            raise LedgerError(
                ErrorKind.INVALID_ARGUMENT,
                Reason.INVALID_AMOUNT,
                f"opening balance must be in [0, {MAX_AMOUNT_MINOR}]",
            )
        if account_id in self.accounts:
            raise LedgerError(
                ErrorKind.ALREADY_EXISTS, Reason.ACCOUNT_EXISTS, f"account {account_id} exists"
            )
        account = Account(account_id, customer_id, currency, balance_minor)
        _assert_account(account)
        self.accounts[account_id] = account
        return Changes(accounts=[account])

    # ------------------------------------------------------------ two-phase legs

    def prepare(
        self,
        *,
        transfer_id: str,
        coordinator: str,
        leg: Leg,
        account_id: str,
        amount_minor: int,
        currency: str,
        fingerprint: bytes,
        counterparty: str,
        customer_id: str = "",
    ) -> Outcome:
        """Vote on one leg. YES (PREPARED) means the funds are held and we may no
        longer decide alone; NO is recorded ABORTED so it stays NO forever.

        `customer_id` is the payer the coordinator names: a DEBIT of an account
        that is not theirs is a recorded NO (NOT_ACCOUNT_OWNER). Empty: not
        checked (a coordinator that does not send it)."""
        _require_transfer_request(transfer_id, coordinator, fingerprint)
        _require_leg(leg)
        _require_id(account_id, "account_id")
        _require_counterparty(counterparty)
        _require_amount(amount_minor)
        _require_currency(currency)
        postings = (Posting(account_id, Leg(leg), amount_minor, currency, counterparty),)

        recorded = self.transfers.get(transfer_id)
        if recorded is not None:
            return self._replay(recorded, coordinator, fingerprint, postings, one_phase=False)

        refusal = self._refusal(postings, customer_id)
        if refusal is not None:
            return self._refuse(transfer_id, coordinator, fingerprint, postings, False, refusal)

        posting = postings[0]
        account = self.accounts[account_id]
        if posting.leg == Leg.DEBIT:
            account = dataclasses.replace(account, held_minor=account.held_minor + amount_minor)
        else:
            account = dataclasses.replace(
                account, pending_credit_minor=account.pending_credit_minor + amount_minor
            )
        transfer = Transfer(
            transfer_id, fingerprint, TransferState.PREPARED, coordinator, postings, False
        )
        return self._apply([account], transfer, [])

    def commit(self, *, transfer_id: str, coordinator: str) -> Outcome:
        """Apply the coordinator's COMMIT: the held debit leaves, the pending credit lands."""
        _require_id(transfer_id, "transfer_id")
        _require_id(coordinator, "coordinator")
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            raise LedgerError(
                ErrorKind.NOT_FOUND, Reason.TRANSFER_NOT_FOUND, f"transfer {transfer_id} unknown"
            )
        if transfer.state == TransferState.ABORTED:
            raise LedgerError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.TRANSFER_ABORTED,
                f"transfer {transfer_id} is aborted ({transfer.abort_reason})",
            )
        _require_coordinator(transfer, coordinator)
        if transfer.state == TransferState.COMMITTED:
            return _replayed(transfer)

        accounts: list[Account] = []
        entries: list[Entry] = []
        for posting in transfer.postings:
            account = self.accounts[posting.account_id]
            if posting.leg == Leg.DEBIT:
                account = dataclasses.replace(
                    account,
                    held_minor=account.held_minor - posting.amount_minor,
                    balance_minor=account.balance_minor - posting.amount_minor,
                )
                signed_minor = -posting.amount_minor
            else:
                account = dataclasses.replace(
                    account,
                    pending_credit_minor=account.pending_credit_minor - posting.amount_minor,
                    balance_minor=account.balance_minor + posting.amount_minor,
                )
                signed_minor = posting.amount_minor
            accounts.append(account)
            entries.append(_entry(transfer_id, posting, signed_minor))
        committed = dataclasses.replace(transfer, state=TransferState.COMMITTED)
        return self._apply(accounts, committed, entries)

    def abort(
        self, *, transfer_id: str, coordinator: str, unless_voted_since: int | None = None
    ) -> Outcome:
        """Apply ABORT: release what the prepare held. An abort for an unknown id
        leaves a tombstone, so a prepare that arrives late is refused.

        `unless_voted_since` (the resolver's): a count read from `votes` before
        the coordinator was asked. If the id was voted YES again since (a new
        attempt of its coordinator is counting on it), the presumed abort is
        stale: nothing changes and the transfer is answered as it stands.
        """
        _require_id(transfer_id, "transfer_id")
        _require_id(coordinator, "coordinator")
        transfer = self.transfers.get(transfer_id)
        if (
            unless_voted_since is not None
            and transfer is not None
            and transfer.state == TransferState.PREPARED
            and self.votes.get(transfer_id, 0) != unless_voted_since
        ):
            return _replayed(transfer)
        if transfer is None:
            tombstone = Transfer(
                transfer_id,
                b"",
                TransferState.ABORTED,
                coordinator,
                (),
                False,
                Reason.ABORTED_BY_COORDINATOR,
            )
            return self._apply([], tombstone, [])
        if transfer.state == TransferState.ABORTED:
            return _replayed(transfer)
        if transfer.state == TransferState.COMMITTED:
            raise LedgerError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.TRANSFER_COMMITTED,
                f"transfer {transfer_id} is committed",
            )
        _require_coordinator(transfer, coordinator)

        accounts: list[Account] = []
        for posting in transfer.postings:
            account = self.accounts[posting.account_id]
            if posting.leg == Leg.DEBIT:
                account = dataclasses.replace(
                    account, held_minor=account.held_minor - posting.amount_minor
                )
            else:
                account = dataclasses.replace(
                    account,
                    pending_credit_minor=account.pending_credit_minor - posting.amount_minor,
                )
            accounts.append(account)
        aborted = dataclasses.replace(
            transfer, state=TransferState.ABORTED, abort_reason=Reason.ABORTED_BY_COORDINATOR
        )
        return self._apply(accounts, aborted, [])

    def release(self, *, transfer_id: str, coordinator: str) -> Outcome:
        """Withdraw a coordinator's undecided YES: the PREPARED record is removed
        as if the prepare never came, and its hold lifted. Unlike an abort it
        leaves no tombstone, so the coordinator that owns the transfer (the one
        holding the payer's leg) can still prepare this leg. An unknown id stays
        unknown; a decided one is answered as recorded; another coordinator's
        PREPARED record is not ours to withdraw (NOT_COORDINATOR)."""
        _require_id(transfer_id, "transfer_id")
        _require_id(coordinator, "coordinator")
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            return Outcome(_unknown(transfer_id, coordinator), Changes(), replayed=True)
        if transfer.state != TransferState.PREPARED:
            return _replayed(transfer)
        _require_coordinator(transfer, coordinator)
        accounts: list[Account] = []
        for posting in transfer.postings:
            account = self.accounts[posting.account_id]
            _assert_account(account)
            if posting.leg == Leg.DEBIT:
                account = dataclasses.replace(
                    account, held_minor=account.held_minor - posting.amount_minor
                )
            else:
                account = dataclasses.replace(
                    account,
                    pending_credit_minor=account.pending_credit_minor - posting.amount_minor,
                )
            _assert_account(account)
            accounts.append(account)
        for account in accounts:
            self.accounts[account.account_id] = account
        del self.transfers[transfer_id]
        self.votes.pop(transfer_id, None)
        return Outcome(transfer, Changes(accounts=accounts, released=[transfer_id]), False)

    # ----------------------------------------------------------------- residency

    def evict(self, transfer_ids: Iterable[str]) -> None:
        """Forget finished transfers, so memory stays flat however long the ledger
        grows. Their store keeps them and must `readmit` one before its id is
        acted on again. A PREPARED transfer holds money and is never evicted."""
        for transfer_id in transfer_ids:
            transfer = self.transfers[transfer_id]
            assert transfer.state != TransferState.PREPARED, transfer
            del self.transfers[transfer_id]

    def readmit(self, transfer: Transfer) -> None:
        """Take back a finished transfer evicted earlier, as its store read it."""
        assert transfer.state != TransferState.PREPARED, transfer  # never evicted
        assert transfer.transfer_id not in self.transfers, transfer
        _assert_transfer(transfer)
        self.transfers[transfer.transfer_id] = transfer

    # ----------------------------------------------------------------- one phase

    def process(
        self,
        *,
        transfer_id: str,
        coordinator: str,
        from_account: str,
        to_account: str,
        amount_minor: int,
        currency: str,
        fingerprint: bytes,
        customer_id: str = "",
    ) -> Outcome:
        """Both legs at this bank: no vote to wait for, so decide and post at once.
        `customer_id`, when given, must own `from_account` (as in `prepare`)."""
        _require_transfer_request(transfer_id, coordinator, fingerprint)
        _require_id(from_account, "from_account")
        _require_id(to_account, "to_account")
        _require_amount(amount_minor)
        _require_currency(currency)
        if from_account == to_account:
            raise LedgerError(
                ErrorKind.INVALID_ARGUMENT,
                Reason.SAME_ACCOUNT,
                "a payment needs two different accounts",
            )
        postings = (
            Posting(from_account, Leg.DEBIT, amount_minor, currency, to_account),
            Posting(to_account, Leg.CREDIT, amount_minor, currency, from_account),
        )

        recorded = self.transfers.get(transfer_id)
        if recorded is not None:
            return self._replay(recorded, coordinator, fingerprint, postings, one_phase=True)

        refusal = self._refusal(postings, customer_id)
        if refusal is not None:
            return self._refuse(transfer_id, coordinator, fingerprint, postings, True, refusal)

        payer = self.accounts[from_account]
        payee = self.accounts[to_account]
        accounts = [
            dataclasses.replace(payer, balance_minor=payer.balance_minor - amount_minor),
            dataclasses.replace(payee, balance_minor=payee.balance_minor + amount_minor),
        ]
        entries = [
            _entry(transfer_id, postings[0], -amount_minor),
            _entry(transfer_id, postings[1], amount_minor),
        ]
        transfer = Transfer(
            transfer_id, fingerprint, TransferState.COMMITTED, coordinator, postings, True
        )
        return self._apply(accounts, transfer, entries)

    # ---------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Assert every invariant of the whole ledger. O(accounts + transfers):
        for tests and for start-up, not for every request."""
        held_minor: dict[str, int] = dict.fromkeys(self.accounts, 0)
        pending_minor: dict[str, int] = dict.fromkeys(self.accounts, 0)
        for transfer_id, transfer in self.transfers.items():
            assert transfer_id == transfer.transfer_id, (transfer_id, transfer)
            _assert_transfer(transfer)
            if transfer.state == TransferState.ABORTED:
                continue
            for posting in transfer.postings:
                account = self.accounts.get(posting.account_id)
                assert account is not None, (transfer, posting)
                assert account.currency == posting.currency, (account, posting)
                if transfer.state == TransferState.PREPARED:
                    if posting.leg == Leg.DEBIT:
                        held_minor[posting.account_id] += posting.amount_minor
                    else:
                        pending_minor[posting.account_id] += posting.amount_minor
        for account_id, account in self.accounts.items():
            assert account_id == account.account_id, (account_id, account)
            _assert_account(account)
            assert account.held_minor == held_minor[account_id], (account, held_minor[account_id])
            assert account.pending_credit_minor == pending_minor[account_id], (
                account,
                pending_minor[account_id],
            )

    # ------------------------------------------------------------------ internal

    def _replay(
        self,
        recorded: Transfer,
        coordinator: str,
        fingerprint: bytes,
        postings: tuple[Posting, ...],
        *,
        one_phase: bool,
    ) -> Outcome:
        """A known id: answer what was recorded, never act twice."""
        if not _same_request(recorded, fingerprint, postings, one_phase):
            raise LedgerError(
                ErrorKind.ALREADY_EXISTS,
                Reason.TRANSFER_ID_REUSED,
                f"transfer {recorded.transfer_id} was recorded for a different request",
            )
        if recorded.state == TransferState.PREPARED and recorded.coordinator != coordinator:
            # Another gateway replica owns the vote. Adopting it would give the
            # transfer two coordinators who may decide differently.
            raise LedgerError(
                ErrorKind.ABORTED,
                Reason.REQUEST_IN_PROGRESS,
                f"transfer {recorded.transfer_id} is in progress at another coordinator",
            )
        if recorded.state == TransferState.PREPARED:
            self.votes[recorded.transfer_id] = self.votes.get(recorded.transfer_id, 0) + 1
        return _replayed(recorded)

    def _refusal(self, postings: Sequence[Posting], payer: str) -> Reason | None:
        """Why this bank cannot take these postings now, if it cannot. Checks run in
        stages (existence, the payer's ownership, currency, funds/overflow) so the
        reason is stable."""
        for posting in postings:
            if posting.account_id not in self.accounts:
                return Reason.ACCOUNT_NOT_FOUND
        for posting in postings:
            debit = posting.leg == Leg.DEBIT
            if debit and payer and self.accounts[posting.account_id].customer_id != payer:
                return Reason.NOT_ACCOUNT_OWNER
        for posting in postings:
            if self.accounts[posting.account_id].currency != posting.currency:
                return Reason.CURRENCY_MISMATCH
        for posting in postings:
            account = self.accounts[posting.account_id]
            if posting.leg == Leg.DEBIT:
                if account.available_minor < posting.amount_minor:
                    return Reason.INSUFFICIENT_FUNDS
            else:
                # Bound balance + pending credits, so that committing every
                # pending credit can never overflow int64.
                ceiling_minor = account.balance_minor + account.pending_credit_minor
                if ceiling_minor + posting.amount_minor > MAX_AMOUNT_MINOR:
                    return Reason.AMOUNT_OVERFLOW
        return None

    def _refuse(
        self,
        transfer_id: str,
        coordinator: str,
        fingerprint: bytes,
        postings: tuple[Posting, ...],
        one_phase: bool,
        reason: Reason,
    ) -> Outcome:
        """Record a refusal of a new id as ABORTED: a retry through any replica must
        get the same NO, never a YES that the first attempt was denied. The postings
        stay for diagnosis and for matching retries; they hold nothing."""
        transfer = Transfer(
            transfer_id,
            fingerprint,
            TransferState.ABORTED,
            coordinator,
            postings,
            one_phase,
            reason,
        )
        return self._apply([], transfer, [])

    def _apply(self, accounts: list[Account], transfer: Transfer, entries: list[Entry]) -> Outcome:
        """Install one operation's snapshots, asserting on the way in and out."""
        previous = self.transfers.get(transfer.transfer_id)
        if previous is not None:
            _assert_transfer(previous)
        _assert_transition(previous, transfer)
        assert len({account.account_id for account in accounts}) == len(accounts), accounts
        for account in accounts:
            before = self.accounts[account.account_id]
            _assert_account(before)
            assert before.currency == account.currency, (before, account)
        _assert_entries(transfer, entries)

        for account in accounts:
            self.accounts[account.account_id] = account
        self.transfers[transfer.transfer_id] = transfer
        if transfer.state != TransferState.PREPARED:
            self.votes.pop(transfer.transfer_id, None)

        for account in accounts:
            _assert_account(self.accounts[account.account_id])
        _assert_transfer(self.transfers[transfer.transfer_id])
        return Outcome(transfer, Changes(accounts, [transfer], entries), replayed=False)


# ---------------------------------------------------------------------- helpers


def _unknown(transfer_id: str, coordinator: str) -> Transfer:
    """What `release` answers for an id this bank never recorded: an ABORTED
    view of it that is not stored (nothing was held, nothing is kept)."""
    return Transfer(
        transfer_id, b"", TransferState.ABORTED, coordinator, (), False, Reason.TRANSFER_NOT_FOUND
    )


def _replayed(transfer: Transfer) -> Outcome:
    return Outcome(transfer, Changes(), replayed=True)


def _entry(transfer_id: str, posting: Posting, signed_minor: int) -> Entry:
    return Entry(
        transfer_id, posting.account_id, signed_minor, posting.currency, posting.counterparty
    )


def _same_request(
    recorded: Transfer, fingerprint: bytes, postings: tuple[Posting, ...], one_phase: bool
) -> bool:
    """Whether a request repeats the recorded one. A tombstone left by an abort of
    an unknown id knows no request, so it matches (and refuses) any of them. The
    counterparty is descriptive and not compared; the fingerprint covers it."""
    if _is_tombstone(recorded):
        return True

    def shape(items: Iterable[Posting]) -> list[tuple[str, Leg, int, str]]:
        return [(p.account_id, p.leg, p.amount_minor, p.currency) for p in items]

    return (
        recorded.fingerprint == fingerprint
        and recorded.one_phase == one_phase
        and shape(recorded.postings) == shape(postings)
    )


def _is_tombstone(transfer: Transfer) -> bool:
    return transfer.state == TransferState.ABORTED and not transfer.fingerprint


def _require_coordinator(transfer: Transfer, coordinator: str) -> None:
    """Only the coordinator named in the record may decide it."""
    if transfer.coordinator != coordinator:
        raise LedgerError(
            ErrorKind.FAILED_PRECONDITION,
            Reason.NOT_COORDINATOR,
            f"transfer {transfer.transfer_id} belongs to another coordinator",
        )


def _require_transfer_request(transfer_id: str, coordinator: str, fingerprint: bytes) -> None:
    _require_id(transfer_id, "transfer_id")
    _require_id(coordinator, "coordinator")
    # Non-empty, so that a request can never look like a tombstone.
    if not 0 < len(fingerprint) <= MAX_FINGERPRINT_BYTES:
        raise LedgerError(
            ErrorKind.INVALID_ARGUMENT,
            Reason.INVALID_REQUEST,
            f"fingerprint must be 1..{MAX_FINGERPRINT_BYTES} bytes",
        )


def _require_id(value: str, name: str) -> None:
    if not 0 < len(value) <= MAX_ID_LENGTH:
        raise LedgerError(
            ErrorKind.INVALID_ARGUMENT,
            Reason.INVALID_REQUEST,
            f"{name} must be 1..{MAX_ID_LENGTH} characters",
        )


def _require_leg(leg: str) -> None:
    if leg not in (Leg.DEBIT, Leg.CREDIT):
        raise LedgerError(
            ErrorKind.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "leg must be DEBIT or CREDIT"
        )


def _require_counterparty(value: str) -> None:
    if len(value) > MAX_ID_LENGTH:
        raise LedgerError(
            ErrorKind.INVALID_ARGUMENT,
            Reason.INVALID_REQUEST,
            f"counterparty must be at most {MAX_ID_LENGTH} characters",
        )


def _require_amount(amount_minor: int) -> None:
    """Positive, an int (never a float or a bool), within int64."""
    try:
        check_amount(amount_minor)
    except MoneyError as error:
        raise LedgerError(ErrorKind.INVALID_ARGUMENT, Reason.INVALID_AMOUNT, str(error)) from None


def _require_currency(currency: str) -> None:
    if not _is_currency(currency):
        raise LedgerError(
            ErrorKind.INVALID_ARGUMENT,
            Reason.INVALID_CURRENCY,
            f"unsupported currency {currency!r}",
        )


def _is_int(value: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_currency(currency: str) -> bool:
    try:
        check_currency(currency)
    except MoneyError:
        return False
    return True


def _assert_account(account: Account) -> None:
    assert _is_currency(account.currency), account
    assert 0 <= account.held_minor <= account.balance_minor, account
    assert account.pending_credit_minor >= 0, account
    assert account.balance_minor + account.pending_credit_minor <= MAX_AMOUNT_MINOR, account


def _assert_transfer(transfer: Transfer) -> None:
    assert transfer.transfer_id, transfer
    assert transfer.coordinator, transfer
    assert len(transfer.fingerprint) <= MAX_FINGERPRINT_BYTES, transfer
    assert (transfer.state == TransferState.ABORTED) == bool(transfer.abort_reason), transfer
    for posting in transfer.postings:
        assert 0 < posting.amount_minor <= MAX_AMOUNT_MINOR, transfer
    if _is_tombstone(transfer):
        assert not transfer.postings and not transfer.one_phase, transfer
        return
    assert transfer.fingerprint, transfer
    legs = [posting.leg for posting in transfer.postings]
    if transfer.one_phase:
        # One-phase transfers are decided on arrival: never PREPARED, and their two
        # legs balance within this ledger.
        assert transfer.state != TransferState.PREPARED, transfer
        assert legs == [Leg.DEBIT, Leg.CREDIT], transfer
        debit, credit = transfer.postings
        assert debit.amount_minor == credit.amount_minor, transfer
        assert debit.currency == credit.currency, transfer
        assert debit.account_id != credit.account_id, transfer
    else:
        assert len(legs) == 1, transfer


def _assert_transition(previous: Transfer | None, transfer: Transfer) -> None:
    """Transfers only move forward: new → any state; PREPARED → COMMITTED | ABORTED."""
    if previous is None:
        return
    assert previous.state == TransferState.PREPARED, (previous, transfer)
    assert transfer.state != TransferState.PREPARED, (previous, transfer)
    assert previous.coordinator == transfer.coordinator, (previous, transfer)
    assert previous.postings == transfer.postings, (previous, transfer)
    assert previous.fingerprint == transfer.fingerprint, (previous, transfer)


def _assert_entries(transfer: Transfer, entries: list[Entry]) -> None:
    """Entries are posted exactly when a transfer commits, one per posting; a
    one-phase transfer's entries sum to zero here, a leg's across the two banks."""
    if transfer.state != TransferState.COMMITTED:
        assert not entries, (transfer, entries)
        return
    assert len(entries) == len(transfer.postings), (transfer, entries)
    for entry, posting in zip(entries, transfer.postings, strict=True):
        assert entry.transfer_id == transfer.transfer_id, (transfer, entry)
        assert entry.account_id == posting.account_id, (posting, entry)
        assert entry.currency == posting.currency, (posting, entry)
        sign = -1 if posting.leg == Leg.DEBIT else 1
        assert entry.amount_minor == sign * posting.amount_minor, (posting, entry)
    if transfer.one_phase:
        assert sum(entry.amount_minor for entry in entries) == 0, entries
