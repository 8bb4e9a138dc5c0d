"""Property-based tests of the ledger: 2PC across simulated banks, and API fuzzing.

The state machine plays a small payment network: two or three banks (each a
`Ledger`), gateway coordinators with a durable decision log, and an unreliable
network that delivers messages late, twice, or in any order. After every step
the money must add up, and once every decision has been delivered, it must add
up exactly with nothing left on hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from strife.bank.ledger import (
    MAX_AMOUNT_MINOR,
    Account,
    Changes,
    ErrorKind,
    Ledger,
    LedgerError,
    Leg,
    Outcome,
    Reason,
    Transfer,
    TransferState,
)

CURRENCY = "EUR"
COORDINATORS = ("gw-a", "gw-b")
OUTSIDER = "gw-z"
"""A gateway replica that started none of the payments it touches."""
MAX_MESSAGES_IN_FLIGHT = 64

picks = st.integers(min_value=0, max_value=1_000)
# Mostly ordinary amounts, sometimes the int64 maximum (refused as unaffordable).
amounts = st.integers(min_value=1, max_value=320).map(lambda n: MAX_AMOUNT_MINOR if n > 300 else n)
# Mostly ordinary balances, sometimes one so large that a credit would overflow.
opening_balances = st.integers(min_value=0, max_value=1_100).map(
    lambda n: MAX_AMOUNT_MINOR - 500 if n > 1_000 else n
)
# A foreign-currency account now and then, to be refused with CURRENCY_MISMATCH.
account_layouts = st.lists(
    st.tuples(opening_balances, st.sampled_from([CURRENCY] * 7 + ["USD"])),
    min_size=2,
    max_size=3,
)
ghosts = st.integers(min_value=0, max_value=19)
"""0: the payer's account does not exist; 1: the payee's; otherwise both do."""


@dataclass
class Payment:
    """The coordinator's view of one payment, including its durable decision."""

    transfer_id: str
    coordinator: str
    amount_minor: int
    debit: tuple[int, str]  # (bank, account)
    credit: tuple[int, str]
    one_phase: bool
    votes: dict[Leg, bool] = field(default_factory=dict)
    decision: TransferState | None = None

    @property
    def fingerprint(self) -> bytes:
        request = f"{self.debit}|{self.credit}|{self.amount_minor}|{CURRENCY}"
        return hashlib.sha256(request.encode()).digest()

    def leg_at(self, leg: Leg) -> tuple[int, str]:
        return self.debit if leg == Leg.DEBIT else self.credit


@dataclass(frozen=True)
class Message:
    kind: str  # "prepare" | "commit" | "abort" | "process"
    transfer_id: str
    bank: int
    leg: Leg = Leg.DEBIT


def state_of(ledger: Ledger) -> tuple[dict[str, Account], dict[str, Transfer]]:
    return dict(ledger.accounts), dict(ledger.transfers)


class PaymentNetwork(RuleBasedStateMachine):
    """Banks, coordinators and a lossy, reordering, duplicating network.

    Coordinators decide as soon as they can (any NO aborts, two YES commit) or
    when a prepare deadline passes; participants in doubt ask the coordinator,
    which records ABORT first if it has not decided (presumed abort). Every
    result a bank returns is "persisted" into a shadow store, from which a bank
    may restart at any step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.banks: list[Ledger] = []
        self.persisted: list[tuple[dict[str, Account], dict[str, Transfer]]] = []
        self.opening_minor: dict[tuple[int, str], int] = {}
        self.posted_minor: dict[tuple[int, str, str], int] = {}  # (bank, transfer, account)
        self.payments: dict[str, Payment] = {}
        self.network: list[Message] = []
        self.abort_acknowledged: set[tuple[str, int]] = set()  # (transfer, bank)

    # ------------------------------------------------------------------ set-up

    @initialize(layouts=st.lists(account_layouts, min_size=2, max_size=3))
    def open_banks(self, layouts: list[list[tuple[int, str]]]) -> None:
        for bank, layout in enumerate(layouts):
            ledger = Ledger()
            for index, (balance_minor, currency) in enumerate(layout):
                account_id = f"b{bank}-a{index}"
                changes = ledger.add_account(
                    account_id=account_id,
                    customer_id=f"c{bank}-{index}",
                    currency=currency,
                    balance_minor=balance_minor,
                )
                self.opening_minor[(bank, account_id)] = balance_minor
                assert changes.accounts == [ledger.accounts[account_id]]
            self.banks.append(ledger)
            self.persisted.append(state_of(ledger))

    # ------------------------------------------------------------------ helpers

    def pick_account(self, bank: int, pick: int, ghost: bool) -> str:
        if ghost:
            return f"b{bank}-ghost"
        accounts = sorted(self.banks[bank].accounts)
        return accounts[pick % len(accounts)]

    def cross_payments(self) -> list[Payment]:
        return [p for p in self.payments.values() if not p.one_phase]

    def undecided(self) -> list[Payment]:
        return [p for p in self.cross_payments() if p.decision is None]

    def prepared_records(self) -> list[tuple[int, str]]:
        return [
            (bank, transfer_id)
            for bank, ledger in enumerate(self.banks)
            for transfer_id, transfer in sorted(ledger.transfers.items())
            if transfer.state == TransferState.PREPARED
        ]

    def known_records(self, prefer_prepared: bool = False) -> list[tuple[int, Payment, Leg]]:
        """Legs some bank has a record of; only the PREPARED ones if asked and any
        exist (they are short-lived, and the most interesting to meddle with)."""
        records = []
        for payment in self.cross_payments():
            for leg in (Leg.DEBIT, Leg.CREDIT):
                bank, _ = payment.leg_at(leg)
                if payment.transfer_id in self.banks[bank].transfers:
                    records.append((bank, payment, leg))
        prepared = [
            (bank, payment, leg)
            for bank, payment, leg in records
            if self.banks[bank].transfers[payment.transfer_id].state == TransferState.PREPARED
        ]
        return prepared if prefer_prepared and prepared else records

    def send(self, message: Message) -> None:
        if len(self.network) < MAX_MESSAGES_IN_FLIGHT:
            self.network.append(message)

    def send_decision(self, payment: Payment) -> None:
        assert payment.decision is not None
        kind = "commit" if payment.decision == TransferState.COMMITTED else "abort"
        for leg in (Leg.DEBIT, Leg.CREDIT):
            self.send(Message(kind, payment.transfer_id, payment.leg_at(leg)[0], leg))

    def decide(self, payment: Payment, decision: TransferState) -> None:
        """Force-write the decision in the coordinator log; it never changes."""
        assert payment.decision is None
        if decision == TransferState.COMMITTED:
            assert payment.votes == {Leg.DEBIT: True, Leg.CREDIT: True}, payment
        payment.decision = decision
        self.send_decision(payment)

    def call(self, bank: int, operation: Callable[[Ledger], Outcome]) -> Outcome | LedgerError:
        """Run one operation at a bank and persist what it returns, as the store would."""
        ledger = self.banks[bank]
        before = state_of(ledger)
        try:
            outcome = operation(ledger)
        except LedgerError as error:
            assert state_of(ledger) == before, "a refused call changed the ledger"
            return error
        if outcome.replayed:
            assert outcome.changes.empty, outcome
            assert state_of(ledger) == before, "a replay changed the ledger"
        self.persist(bank, outcome.changes)
        return outcome

    def persist(self, bank: int, changes: Changes) -> None:
        accounts, transfers = self.persisted[bank]
        accounts.update((account.account_id, account) for account in changes.accounts)
        transfers.update((transfer.transfer_id, transfer) for transfer in changes.transfers)
        for entry in changes.entries:
            key = (bank, entry.transfer_id, entry.account_id)
            assert key not in self.posted_minor, f"{key} posted twice"
            self.posted_minor[key] = entry.amount_minor
        if changes.entries:
            transfer_id = changes.entries[0].transfer_id
            if self.payments[transfer_id].one_phase:
                assert sum(entry.amount_minor for entry in changes.entries) == 0

    def expect_outcome(self, result: Outcome | LedgerError) -> Outcome:
        assert isinstance(result, Outcome), f"the owning coordinator was refused: {result}"
        return result

    # ------------------------------------------------------------ deliveries

    def deliver(self, message: Message) -> None:
        payment = self.payments[message.transfer_id]
        if message.kind == "prepare":
            self.deliver_prepare(payment, message.leg, payment.coordinator)
        elif message.kind == "process":
            self.deliver_process(payment)
        elif message.kind == "commit":
            self.deliver_commit(payment, message.bank)
        else:
            self.deliver_abort(payment, message.bank)

    def prepare_at(self, payment: Payment, leg: Leg, coordinator: str) -> Outcome | LedgerError:
        bank, account_id = payment.leg_at(leg)
        other_bank, other_account = payment.leg_at(Leg.CREDIT if leg == Leg.DEBIT else Leg.DEBIT)
        return self.call(
            bank,
            lambda ledger: ledger.prepare(
                transfer_id=payment.transfer_id,
                coordinator=coordinator,
                leg=leg,
                account_id=account_id,
                amount_minor=payment.amount_minor,
                currency=CURRENCY,
                fingerprint=payment.fingerprint,
                counterparty=f"bank{other_bank}/{other_account}",
            ),
        )

    def deliver_prepare(self, payment: Payment, leg: Leg, coordinator: str) -> None:
        outcome = self.expect_outcome(self.prepare_at(payment, leg, coordinator))
        state = outcome.transfer.state
        if state == TransferState.COMMITTED:
            assert payment.decision == TransferState.COMMITTED
        if (payment.transfer_id, payment.leg_at(leg)[0]) in self.abort_acknowledged:
            # A prepare that arrives after the bank acknowledged the abort meets
            # the record (or tombstone) and is refused: it holds nothing.
            assert state == TransferState.ABORTED, outcome
        if payment.decision is not None:
            return  # a late vote: the coordinator has moved on
        vote = state == TransferState.PREPARED
        if leg in payment.votes:
            # Until a decision exists nothing can change a participant's vote.
            assert payment.votes[leg] == vote, (payment, outcome)
            assert outcome.replayed
        payment.votes[leg] = vote
        # The coordinator decides as soon as it can: any NO aborts, two YES commit.
        if not vote:
            self.decide(payment, TransferState.ABORTED)
        elif payment.votes == {Leg.DEBIT: True, Leg.CREDIT: True}:
            self.decide(payment, TransferState.COMMITTED)

    def deliver_commit(self, payment: Payment, bank: int) -> None:
        assert payment.decision == TransferState.COMMITTED
        result = self.call(
            bank,
            lambda ledger: ledger.commit(
                transfer_id=payment.transfer_id, coordinator=payment.coordinator
            ),
        )
        assert self.expect_outcome(result).transfer.state == TransferState.COMMITTED

    def deliver_abort(self, payment: Payment, bank: int) -> None:
        assert payment.decision == TransferState.ABORTED
        result = self.call(
            bank,
            lambda ledger: ledger.abort(
                transfer_id=payment.transfer_id, coordinator=payment.coordinator
            ),
        )
        assert self.expect_outcome(result).transfer.state == TransferState.ABORTED
        self.abort_acknowledged.add((payment.transfer_id, bank))

    def deliver_process(self, payment: Payment) -> None:
        bank, from_account = payment.debit
        _, to_account = payment.credit
        result = self.call(
            bank,
            lambda ledger: ledger.process(
                transfer_id=payment.transfer_id,
                coordinator=payment.coordinator,
                from_account=from_account,
                to_account=to_account,
                amount_minor=payment.amount_minor,
                currency=CURRENCY,
                fingerprint=payment.fingerprint,
            ),
        )
        outcome = self.expect_outcome(result)
        assert outcome.transfer.state != TransferState.PREPARED
        if payment.decision is None:
            assert not outcome.replayed
            payment.decision = outcome.transfer.state
        else:
            assert outcome.replayed
            assert outcome.transfer.state == payment.decision

    # -------------------------------------------------------------- start

    @rule(
        coordinator=st.sampled_from(COORDINATORS),
        payer=picks,
        payee=picks,
        payee_bank=picks,
        amount_minor=amounts,
        ghost=ghosts,
    )
    def start_cross_bank(
        self,
        coordinator: str,
        payer: int,
        payee: int,
        payee_bank: int,
        amount_minor: int,
        ghost: int,
    ) -> None:
        debit_bank = payer % len(self.banks)
        others = [bank for bank in range(len(self.banks)) if bank != debit_bank]
        credit_bank = others[payee_bank % len(others)]
        payment = Payment(
            transfer_id=f"t-{len(self.payments)}",
            coordinator=coordinator,
            amount_minor=amount_minor,
            debit=(debit_bank, self.pick_account(debit_bank, payer, ghost == 0)),
            credit=(credit_bank, self.pick_account(credit_bank, payee, ghost == 1)),
            one_phase=False,
        )
        self.payments[payment.transfer_id] = payment
        # Both prepares go out concurrently; the network decides who sees what first.
        self.send(Message("prepare", payment.transfer_id, debit_bank, Leg.DEBIT))
        self.send(Message("prepare", payment.transfer_id, credit_bank, Leg.CREDIT))

    @rule(
        coordinator=st.sampled_from(COORDINATORS),
        bank=picks,
        payer=picks,
        payee=st.integers(min_value=1, max_value=1_000),
        amount_minor=amounts,
        ghost=ghosts,
    )
    def start_same_bank(
        self, coordinator: str, bank: int, payer: int, payee: int, amount_minor: int, ghost: int
    ) -> None:
        bank %= len(self.banks)
        accounts = sorted(self.banks[bank].accounts)
        from_account = accounts[payer % len(accounts)]
        to_account = accounts[(payer + payee) % len(accounts)]
        if from_account == to_account:
            to_account = accounts[(payer + 1) % len(accounts)]
        if ghost == 0:
            to_account = f"b{bank}-ghost"
        payment = Payment(
            transfer_id=f"t-{len(self.payments)}",
            coordinator=coordinator,
            amount_minor=amount_minor,
            debit=(bank, from_account),
            credit=(bank, to_account),
            one_phase=True,
        )
        self.payments[payment.transfer_id] = payment
        self.send(Message("process", payment.transfer_id, bank))

    # ------------------------------------------------------------- network

    @precondition(lambda self: self.network)
    @rule(positions=st.lists(picks, min_size=1, max_size=4), duplicate=st.booleans())
    def deliver_some(self, positions: list[int], duplicate: bool) -> None:
        """Deliver a few messages in flight, in any order: the network reorders
        freely, and a duplicated message stays in flight to arrive again later."""
        for position in positions:
            if self.network:
                index = position % len(self.network)
                message = self.network[index] if duplicate else self.network.pop(index)
                self.deliver(message)

    @precondition(lambda self: self.payments)
    @rule(pick=picks)
    def resend(self, pick: int) -> None:
        """A sender's retry, which may arrive long after the first copy was handled."""
        payment = sorted(self.payments.values(), key=lambda p: p.transfer_id)[
            pick % len(self.payments)
        ]
        if payment.one_phase:
            self.send(Message("process", payment.transfer_id, payment.debit[0]))
        elif payment.decision is None:
            for leg in (Leg.DEBIT, Leg.CREDIT):
                self.send(Message("prepare", payment.transfer_id, payment.leg_at(leg)[0], leg))
        else:
            self.send_decision(payment)

    # -------------------------------------------------------- coordinators

    @precondition(lambda self: self.undecided())
    @rule(pick=picks)
    def prepare_deadline_passes(self, pick: int) -> None:
        """A vote is still missing when the prepare deadline passes: abort."""
        undecided = self.undecided()
        self.decide(undecided[pick % len(undecided)], TransferState.ABORTED)

    @rule(coordinator=st.sampled_from(COORDINATORS))
    def coordinator_restarts(self, coordinator: str) -> None:
        """Undecided transactions abort; logged decisions are sent again."""
        for payment in self.cross_payments():
            if payment.coordinator != coordinator:
                continue
            if payment.decision is None:
                self.decide(payment, TransferState.ABORTED)
            else:
                self.send_decision(payment)

    @precondition(lambda self: self.prepared_records())
    @rule(pick=picks)
    def participant_resolves(self, pick: int) -> None:
        """An in-doubt participant asks the coordinator (GetDecision). The coordinator
        never answers ABORT while COMMIT is possible: it records ABORT first."""
        records = self.prepared_records()
        bank, transfer_id = records[pick % len(records)]
        payment = self.payments[transfer_id]
        if payment.decision is None:
            self.decide(payment, TransferState.ABORTED)
        if payment.decision == TransferState.COMMITTED:
            self.deliver_commit(payment, bank)
        else:
            self.deliver_abort(payment, bank)

    @precondition(lambda self: self.known_records())
    @rule(pick=picks, prefer_prepared=st.booleans())
    def other_replica_retries_prepare(self, pick: int, prefer_prepared: bool) -> None:
        """A retry through another gateway replica must never adopt or redo a leg."""
        records = self.known_records(prefer_prepared)
        bank, payment, leg = records[pick % len(records)]
        recorded = self.banks[bank].transfers[payment.transfer_id]
        result = self.prepare_at(payment, leg, OUTSIDER)
        if recorded.state == TransferState.PREPARED:
            assert isinstance(result, LedgerError)
            assert (result.kind, result.reason) == (ErrorKind.ABORTED, Reason.REQUEST_IN_PROGRESS)
        else:
            assert isinstance(result, Outcome)
            assert result.replayed
            assert result.transfer == recorded

    @precondition(lambda self: self.known_records())
    @rule(pick=picks, commit=st.booleans(), prefer_prepared=st.booleans())
    def other_replica_decides(self, pick: int, commit: bool, prefer_prepared: bool) -> None:
        """Only the coordinator named in the record may decide it."""
        records = self.known_records(prefer_prepared)
        bank, payment, _ = records[pick % len(records)]
        state = self.banks[bank].transfers[payment.transfer_id].state
        transfer_id = payment.transfer_id
        if commit:
            result = self.call(
                bank, lambda ledger: ledger.commit(transfer_id=transfer_id, coordinator=OUTSIDER)
            )
        else:
            result = self.call(
                bank, lambda ledger: ledger.abort(transfer_id=transfer_id, coordinator=OUTSIDER)
            )
        if state == TransferState.ABORTED and not commit:
            assert isinstance(result, Outcome)
            assert result.replayed
            return
        assert isinstance(result, LedgerError)
        expected = {
            (TransferState.PREPARED, True): Reason.NOT_COORDINATOR,
            (TransferState.PREPARED, False): Reason.NOT_COORDINATOR,
            (TransferState.COMMITTED, True): Reason.NOT_COORDINATOR,
            (TransferState.COMMITTED, False): Reason.TRANSFER_COMMITTED,
            (TransferState.ABORTED, True): Reason.TRANSFER_ABORTED,
        }[(state, commit)]
        assert result.reason == expected

    # ------------------------------------------------------------- banks

    @rule(bank=picks)
    def bank_restarts(self, bank: int) -> None:
        """A bank rebuilds its ledger from what the store persisted: holds survive."""
        bank %= len(self.banks)
        accounts, transfers = self.persisted[bank]
        self.banks[bank] = Ledger(accounts.values(), transfers.values())

    def drain(self) -> None:
        while self.network:
            self.deliver(self.network.pop(0))

    @precondition(lambda self: len(self.payments) >= 3)
    @rule()
    def settle(self) -> None:
        """Deliver everything and every decision; then the books must close exactly."""
        self.drain()
        for payment in self.undecided():
            # A prepare was lost and never resent: the deadline aborts it.
            self.decide(payment, TransferState.ABORTED)
        self.drain()
        for payment in self.cross_payments():  # retried until acknowledged
            assert payment.decision is not None
            for leg in (Leg.DEBIT, Leg.CREDIT):
                bank = payment.leg_at(leg)[0]
                if payment.decision == TransferState.COMMITTED:
                    self.deliver_commit(payment, bank)
                else:
                    self.deliver_abort(payment, bank)
        for payment in self.payments.values():  # very late duplicates of every request
            if payment.one_phase:
                self.deliver_process(payment)
            else:
                for leg in (Leg.DEBIT, Leg.CREDIT):
                    self.deliver_prepare(payment, leg, payment.coordinator)
            assert payment.decision is not None
        for ledger in self.banks:
            for account in ledger.accounts.values():
                assert account.held_minor == 0, account
                assert account.pending_credit_minor == 0, account
            assert all(t.state != TransferState.PREPARED for t in ledger.transfers.values())
        assert self.total_minor() == sum(self.opening_minor.values())
        for payment in self.cross_payments():
            states = {self.state_at(payment, leg) for leg in (Leg.DEBIT, Leg.CREDIT)}
            assert states == {payment.decision}, (payment, states)

    # ---------------------------------------------------------- invariants

    def total_minor(self) -> int:
        return sum(
            account.balance_minor for ledger in self.banks for account in ledger.accounts.values()
        )

    def state_at(self, payment: Payment, leg: Leg) -> TransferState | None:
        transfer = self.banks[payment.leg_at(leg)[0]].transfers.get(payment.transfer_id)
        return None if transfer is None else transfer.state

    @invariant()
    def ledgers_are_consistent(self) -> None:
        for ledger in self.banks:
            ledger.check_invariants()
            for account in ledger.accounts.values():
                assert account.available_minor >= 0, account
                assert account.balance_minor >= 0, account

    @invariant()
    def store_holds_what_the_ledger_holds(self) -> None:
        for ledger, persisted in zip(self.banks, self.persisted, strict=True):
            assert state_of(ledger) == persisted

    @invariant()
    def balances_are_opening_plus_entries(self) -> None:
        posted: dict[tuple[int, str], int] = {}
        for (bank, _, account_id), amount_minor in self.posted_minor.items():
            posted[(bank, account_id)] = posted.get((bank, account_id), 0) + amount_minor
        for bank, ledger in enumerate(self.banks):
            for account_id, account in ledger.accounts.items():
                expected = self.opening_minor[(bank, account_id)] + posted.get(
                    (bank, account_id), 0
                )
                assert account.balance_minor == expected, (bank, account)

    @invariant()
    def money_is_conserved(self) -> None:
        """Total money plus money in flight (one leg committed, the other not yet)
        is the opening total, always."""
        in_flight_minor = 0
        for payment in self.cross_payments():
            committed = [
                self.state_at(payment, leg) == TransferState.COMMITTED
                for leg in (Leg.DEBIT, Leg.CREDIT)
            ]
            if any(committed):
                assert payment.decision == TransferState.COMMITTED, payment
            in_flight_minor += payment.amount_minor * (committed[0] - committed[1])
        assert self.total_minor() + in_flight_minor == sum(self.opening_minor.values())

    @invariant()
    def atomic_commitment(self) -> None:
        """No payment is committed at one bank and aborted at the other."""
        for payment in self.cross_payments():
            states = {self.state_at(payment, leg) for leg in (Leg.DEBIT, Leg.CREDIT)}
            assert {TransferState.COMMITTED, TransferState.ABORTED} - states, (payment, states)


PaymentNetwork.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestPaymentNetwork = PaymentNetwork.TestCase


# --------------------------------------------------------------------- API fuzzing

ids = st.sampled_from(["t-0", "t-1", "t-2", ""])
coordinators = st.sampled_from(["gw-a", "gw-b", ""])
accounts = st.sampled_from(["a", "b", "ghost", ""])
fuzz_amounts = st.one_of(
    st.integers(min_value=-2, max_value=1_200),
    st.sampled_from([MAX_AMOUNT_MINOR, MAX_AMOUNT_MINOR + 1]),
)
fingerprints = st.sampled_from([b"\x01", b"\x02", b""])
currencies = st.sampled_from(["EUR", "USD", "eu"])

operations = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("prepare"),
            "transfer_id": ids,
            "coordinator": coordinators,
            "leg": st.sampled_from(Leg),
            "account_id": accounts,
            "amount_minor": fuzz_amounts,
            "currency": currencies,
            "fingerprint": fingerprints,
            "counterparty": st.just("elsewhere"),
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.sampled_from(["commit", "abort"]),
            "transfer_id": ids,
            "coordinator": coordinators,
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("process"),
            "transfer_id": ids,
            "coordinator": coordinators,
            "from_account": accounts,
            "to_account": accounts,
            "amount_minor": fuzz_amounts,
            "currency": currencies,
            "fingerprint": fingerprints,
        }
    ),
)


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(operations, max_size=30))
def test_any_request_sequence_keeps_one_ledger_sound(requests: list[dict[str, Any]]) -> None:
    """Whatever arrives, in any order: refusals change nothing, replays change
    nothing, entries are posted once per account, and balances follow entries."""
    ledger = Ledger(
        [Account("a", "ca", "EUR", 1_000), Account("b", "cb", "EUR", MAX_AMOUNT_MINOR - 100)]
    )
    opening_minor = {account_id: a.balance_minor for account_id, a in ledger.accounts.items()}
    posted: set[tuple[str, str]] = set()
    for request in requests:
        arguments = dict(request)
        operation = getattr(ledger, arguments.pop("op"))
        before = state_of(ledger)
        try:
            outcome = operation(**arguments)
        except LedgerError as error:
            assert state_of(ledger) == before
            assert error.reason.isupper()
            continue
        if outcome.replayed:
            assert outcome.changes.empty
            assert state_of(ledger) == before
            assert_replay_answers_the_same_request(outcome.transfer, request)
        for entry in outcome.changes.entries:
            assert (entry.transfer_id, entry.account_id) not in posted
            posted.add((entry.transfer_id, entry.account_id))
            opening_minor[entry.account_id] += entry.amount_minor
        for account in outcome.changes.accounts:
            assert ledger.accounts[account.account_id] == account
        ledger.check_invariants()
        for account_id, account in ledger.accounts.items():
            assert account.balance_minor == opening_minor[account_id]
            assert account.available_minor >= 0


def assert_replay_answers_the_same_request(recorded: Transfer, request: dict[str, Any]) -> None:
    """A recorded result is only ever replayed to the request that made it (or
    to anything, from a tombstone that never knew its request)."""
    if request["op"] not in ("prepare", "process") or not recorded.fingerprint:
        return
    assert recorded.fingerprint == request["fingerprint"]
    if request["op"] == "prepare":
        legs = [(request["account_id"], request["leg"])]
    else:
        legs = [(request["from_account"], Leg.DEBIT), (request["to_account"], Leg.CREDIT)]
    expected = [
        (account, leg, request["amount_minor"], request["currency"]) for account, leg in legs
    ]
    assert [
        (p.account_id, p.leg, p.amount_minor, p.currency) for p in recorded.postings
    ] == expected


prepare_requests = st.fixed_dictionaries(
    {
        "transfer_id": st.just("t-0"),
        "coordinator": st.sampled_from(["gw-a", "gw-b"]),
        "leg": st.sampled_from(Leg),
        "account_id": st.sampled_from(["a", "b", "ghost"]),
        "amount_minor": st.sampled_from([1, 999, 5_000]),
        "currency": st.sampled_from(["EUR", "USD"]),
        "fingerprint": st.sampled_from([b"\x01", b"\x02"]),
        "counterparty": st.sampled_from(["x", "y"]),
    }
)


@settings(max_examples=200, deadline=None)
@given(first=prepare_requests, second=prepare_requests)
def test_a_known_transfer_id_answers_only_its_own_request(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    """The second prepare of an id replays the first only when it is the same
    request; otherwise it is TRANSFER_ID_REUSED. Either way nothing changes."""
    ledger = Ledger(
        [Account("a", "ca", "EUR", 1_000), Account("b", "cb", "EUR", MAX_AMOUNT_MINOR - 100)]
    )
    recorded = ledger.prepare(**first).transfer
    before = state_of(ledger)
    same = all(
        first[name] == second[name]
        for name in ("leg", "account_id", "amount_minor", "currency", "fingerprint")
    )
    try:
        outcome = ledger.prepare(**second)
    except LedgerError as error:
        if same:
            assert recorded.state == TransferState.PREPARED
            assert first["coordinator"] != second["coordinator"]
            assert error.reason == Reason.REQUEST_IN_PROGRESS
        else:
            assert error.reason == Reason.TRANSFER_ID_REUSED
    else:
        assert same
        assert outcome.replayed
        assert outcome.transfer == recorded
    assert state_of(ledger) == before
