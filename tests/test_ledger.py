"""Unit tests of the bank ledger's rules, one rule (or refusal) per test."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from strife.bank.ledger import (
    MAX_AMOUNT_MINOR,
    MAX_FINGERPRINT_BYTES,
    MAX_ID_LENGTH,
    Account,
    Changes,
    ErrorKind,
    Ledger,
    LedgerError,
    Leg,
    Outcome,
    Posting,
    Reason,
    Transfer,
    TransferState,
    abort_error,
)

GW = "gw-1"
OTHER_GW = "gw-2"
FP = b"\x01" * 32
OTHER_FP = b"\x02" * 32


def make_ledger() -> Ledger:
    ledger = Ledger()
    ledger.add_account(
        account_id="alice", customer_id="c-alice", currency="EUR", balance_minor=1000
    )
    ledger.add_account(account_id="bob", customer_id="c-bob", currency="EUR", balance_minor=50)
    ledger.add_account(account_id="dollar", customer_id="c-dan", currency="USD", balance_minor=500)
    ledger.add_account(
        account_id="rich", customer_id="c-rich", currency="EUR", balance_minor=MAX_AMOUNT_MINOR - 10
    )
    ledger.check_invariants()
    return ledger


@pytest.fixture
def ledger() -> Ledger:
    return make_ledger()


def prepare(ledger: Ledger, **overrides: Any) -> Outcome:
    request: dict[str, Any] = {
        "transfer_id": "t-1",
        "coordinator": GW,
        "leg": Leg.DEBIT,
        "account_id": "alice",
        "amount_minor": 300,
        "currency": "EUR",
        "fingerprint": FP,
        "counterparty": "bank-b/carol",
    }
    request.update(overrides)
    outcome = ledger.prepare(**request)
    ledger.check_invariants()
    return outcome


def process(ledger: Ledger, **overrides: Any) -> Outcome:
    request: dict[str, Any] = {
        "transfer_id": "p-1",
        "coordinator": GW,
        "from_account": "alice",
        "to_account": "bob",
        "amount_minor": 300,
        "currency": "EUR",
        "fingerprint": FP,
    }
    request.update(overrides)
    outcome = ledger.process(**request)
    ledger.check_invariants()
    return outcome


def snapshot(ledger: Ledger) -> tuple[dict[str, Account], dict[str, Transfer]]:
    return copy.copy(ledger.accounts), copy.copy(ledger.transfers)


@contextmanager
def refused(ledger: Ledger, kind: ErrorKind, reason: str) -> Iterator[None]:
    """The call inside raises the given error and leaves the ledger untouched."""
    before = snapshot(ledger)
    with pytest.raises(LedgerError) as caught:
        yield
    assert (caught.value.kind, caught.value.reason) == (kind, reason)
    assert caught.value.message
    assert snapshot(ledger) == before
    ledger.check_invariants()


def assert_changes_match(ledger: Ledger, changes: Changes) -> None:
    """Every snapshot handed to the store is what the ledger now holds."""
    for account in changes.accounts:
        assert ledger.accounts[account.account_id] == account
    for transfer in changes.transfers:
        assert ledger.transfers[transfer.transfer_id] == transfer


def assert_recorded_refusal(ledger: Ledger, outcome: Outcome, reason: Reason) -> None:
    before_accounts = dict(ledger.accounts)
    assert outcome.transfer.state == TransferState.ABORTED
    assert outcome.transfer.abort_reason == reason
    assert not outcome.replayed
    assert outcome.changes.transfers == [outcome.transfer]
    assert outcome.changes.accounts == []
    assert outcome.changes.entries == []
    assert ledger.transfers[outcome.transfer.transfer_id] == outcome.transfer
    assert ledger.accounts == before_accounts


# --------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"transfer_id": ""}, Reason.INVALID_REQUEST),
        ({"transfer_id": "x" * (MAX_ID_LENGTH + 1)}, Reason.INVALID_REQUEST),
        ({"coordinator": ""}, Reason.INVALID_REQUEST),
        ({"account_id": ""}, Reason.INVALID_REQUEST),
        ({"leg": "SIDEWAYS"}, Reason.INVALID_REQUEST),
        ({"counterparty": "x" * (MAX_ID_LENGTH + 1)}, Reason.INVALID_REQUEST),
        ({"amount_minor": 0}, Reason.INVALID_AMOUNT),
        ({"amount_minor": -5}, Reason.INVALID_AMOUNT),
        ({"amount_minor": MAX_AMOUNT_MINOR + 1}, Reason.INVALID_AMOUNT),
        ({"amount_minor": 1.5}, Reason.INVALID_AMOUNT),
        ({"amount_minor": True}, Reason.INVALID_AMOUNT),
        ({"currency": ""}, Reason.INVALID_CURRENCY),
        ({"currency": "eur"}, Reason.INVALID_CURRENCY),
        ({"currency": "EURO"}, Reason.INVALID_CURRENCY),
        ({"fingerprint": b""}, Reason.INVALID_REQUEST),
        ({"fingerprint": b"x" * (MAX_FINGERPRINT_BYTES + 1)}, Reason.INVALID_REQUEST),
    ],
)
def test_prepare_rejects_malformed_requests_without_recording(
    ledger: Ledger, overrides: dict[str, Any], reason: Reason
) -> None:
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, reason):
        prepare(ledger, **overrides)
    assert ledger.transfers == {}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"transfer_id": ""}, Reason.INVALID_REQUEST),
        ({"coordinator": ""}, Reason.INVALID_REQUEST),
        ({"from_account": ""}, Reason.INVALID_REQUEST),
        ({"to_account": ""}, Reason.INVALID_REQUEST),
        ({"amount_minor": 0}, Reason.INVALID_AMOUNT),
        ({"amount_minor": -1}, Reason.INVALID_AMOUNT),
        ({"amount_minor": MAX_AMOUNT_MINOR + 1}, Reason.INVALID_AMOUNT),
        ({"currency": "E1R"}, Reason.INVALID_CURRENCY),
        ({"fingerprint": b""}, Reason.INVALID_REQUEST),
        ({"to_account": "alice"}, Reason.SAME_ACCOUNT),
    ],
)
def test_process_rejects_malformed_requests_without_recording(
    ledger: Ledger, overrides: dict[str, Any], reason: Reason
) -> None:
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, reason):
        process(ledger, **overrides)
    assert ledger.transfers == {}


@pytest.mark.parametrize("method", ["commit", "abort"])
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"transfer_id": ""}, Reason.INVALID_REQUEST),
        ({"coordinator": ""}, Reason.INVALID_REQUEST),
    ],
)
def test_decisions_reject_malformed_requests(
    ledger: Ledger, method: str, overrides: dict[str, Any], reason: Reason
) -> None:
    request = {"transfer_id": "t-1", "coordinator": GW, **overrides}
    call: Callable[..., Outcome] = getattr(ledger, method)
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, reason):
        call(**request)


def test_malformed_retry_of_a_known_id_is_still_rejected(ledger: Ledger) -> None:
    prepare(ledger)
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, Reason.INVALID_AMOUNT):
        prepare(ledger, amount_minor=0)


# ----------------------------------------------------------------------- accounts


def test_add_account_returns_the_snapshot_to_persist() -> None:
    ledger = Ledger()
    changes = ledger.add_account(account_id="a", customer_id="c", currency="EUR", balance_minor=7)
    assert changes.accounts == [Account("a", "c", "EUR", 7, 0, 0)]
    assert ledger.accounts["a"].available_minor == 7


def test_add_account_refuses_duplicates_and_bad_balances(ledger: Ledger) -> None:
    with refused(ledger, ErrorKind.ALREADY_EXISTS, Reason.ACCOUNT_EXISTS):
        ledger.add_account(account_id="alice", customer_id="c", currency="EUR")
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, Reason.INVALID_AMOUNT):
        ledger.add_account(account_id="n", customer_id="c", currency="EUR", balance_minor=-1)
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, Reason.INVALID_AMOUNT):
        ledger.add_account(
            account_id="n", customer_id="c", currency="EUR", balance_minor=MAX_AMOUNT_MINOR + 1
        )
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, Reason.INVALID_AMOUNT):
        # A float on purpose: refused at run time, whatever the caller's types say.
        ledger.add_account(account_id="n", customer_id="c", currency="EUR", balance_minor=1.5)  # type: ignore[arg-type]
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, Reason.INVALID_CURRENCY):
        ledger.add_account(account_id="n", customer_id="c", currency="euro")
    with refused(ledger, ErrorKind.INVALID_ARGUMENT, Reason.INVALID_CURRENCY):
        ledger.add_account(account_id="n", customer_id="c", currency="XYZ")  # not ISO 4217


# ------------------------------------------------------------------------ prepare


def test_prepare_debit_places_a_hold(ledger: Ledger) -> None:
    outcome = prepare(ledger)
    alice = ledger.accounts["alice"]
    assert (alice.balance_minor, alice.held_minor, alice.available_minor) == (1000, 300, 700)
    assert outcome.transfer.state == TransferState.PREPARED
    assert outcome.transfer.coordinator == GW
    assert outcome.transfer.postings == (Posting("alice", Leg.DEBIT, 300, "EUR", "bank-b/carol"),)
    assert not outcome.transfer.one_phase
    assert not outcome.replayed
    assert outcome.changes.accounts == [alice]
    assert outcome.changes.transfers == [outcome.transfer]
    assert outcome.changes.entries == []


def test_prepare_credit_adds_pending_credit_without_a_hold(ledger: Ledger) -> None:
    outcome = prepare(ledger, leg=Leg.CREDIT, account_id="bob", amount_minor=10_000)
    bob = ledger.accounts["bob"]
    assert (bob.balance_minor, bob.held_minor, bob.pending_credit_minor) == (50, 0, 10_000)
    assert bob.available_minor == 50  # a pending credit is not spendable yet
    assert outcome.transfer.state == TransferState.PREPARED
    assert_changes_match(ledger, outcome.changes)


def test_holds_add_up_and_limit_later_debits(ledger: Ledger) -> None:
    prepare(ledger, transfer_id="t-1", amount_minor=600)
    second = prepare(ledger, transfer_id="t-2", amount_minor=400)
    assert second.transfer.state == TransferState.PREPARED
    assert ledger.accounts["alice"].available_minor == 0
    third = prepare(ledger, transfer_id="t-3", amount_minor=1)
    assert_recorded_refusal(ledger, third, Reason.INSUFFICIENT_FUNDS)


def test_prepare_may_hold_the_whole_available_balance(ledger: Ledger) -> None:
    outcome = prepare(ledger, amount_minor=1000)
    assert outcome.transfer.state == TransferState.PREPARED
    assert ledger.accounts["alice"].available_minor == 0


@pytest.mark.parametrize(
    ("overrides", "reason", "kind"),
    [
        ({"account_id": "nobody"}, Reason.ACCOUNT_NOT_FOUND, ErrorKind.NOT_FOUND),
        ({"currency": "USD"}, Reason.CURRENCY_MISMATCH, ErrorKind.FAILED_PRECONDITION),
        ({"amount_minor": 1001}, Reason.INSUFFICIENT_FUNDS, ErrorKind.FAILED_PRECONDITION),
        (
            {"leg": Leg.CREDIT, "account_id": "rich", "amount_minor": 11},
            Reason.AMOUNT_OVERFLOW,
            ErrorKind.FAILED_PRECONDITION,
        ),
    ],
)
def test_prepare_refusal_of_a_new_id_is_recorded_aborted(
    ledger: Ledger, overrides: dict[str, Any], reason: Reason, kind: ErrorKind
) -> None:
    outcome = prepare(ledger, **overrides)
    assert_recorded_refusal(ledger, outcome, reason)
    assert outcome.transfer.coordinator == GW
    error = abort_error(outcome.transfer)
    assert (error.kind, error.reason) == (kind, reason)


def test_credit_up_to_the_limit_is_accepted(ledger: Ledger) -> None:
    outcome = prepare(ledger, leg=Leg.CREDIT, account_id="rich", amount_minor=10)
    assert outcome.transfer.state == TransferState.PREPARED
    # Pending credits count against the limit: committing them all must fit int64.
    again = prepare(ledger, transfer_id="t-2", leg=Leg.CREDIT, account_id="rich", amount_minor=1)
    assert_recorded_refusal(ledger, again, Reason.AMOUNT_OVERFLOW)


def test_refused_id_stays_refused_even_once_it_could_succeed(ledger: Ledger) -> None:
    first = prepare(ledger, account_id="bob", amount_minor=100)
    assert_recorded_refusal(ledger, first, Reason.INSUFFICIENT_FUNDS)
    # Bob is paid enough to cover it now...
    process(
        ledger, transfer_id="p-top-up", from_account="alice", to_account="bob", amount_minor=500
    )
    before = snapshot(ledger)
    # ...yet the same id retried, through this or another gateway replica, stays NO.
    for coordinator in (GW, OTHER_GW):
        retry = prepare(ledger, account_id="bob", amount_minor=100, coordinator=coordinator)
        assert retry.replayed
        assert retry.transfer == first.transfer
        assert retry.changes.empty
        assert abort_error(retry.transfer).reason == Reason.INSUFFICIENT_FUNDS
    assert snapshot(ledger) == before


def test_prepare_replay_returns_the_recorded_vote(ledger: Ledger) -> None:
    first = prepare(ledger)
    before = snapshot(ledger)
    again = prepare(ledger, counterparty="described differently")
    assert again.replayed
    assert again.transfer == first.transfer
    assert again.changes == Changes()
    assert snapshot(ledger) == before
    assert ledger.accounts["alice"].held_minor == 300  # held once, not twice


@pytest.mark.parametrize(
    "overrides",
    [
        {"fingerprint": OTHER_FP},
        {"leg": Leg.CREDIT},
        {"account_id": "bob"},
        {"amount_minor": 301},
        {"currency": "USD"},
    ],
)
def test_prepare_of_a_known_id_with_a_different_request_is_refused(
    ledger: Ledger, overrides: dict[str, Any]
) -> None:
    prepare(ledger)
    with refused(ledger, ErrorKind.ALREADY_EXISTS, Reason.TRANSFER_ID_REUSED):
        prepare(ledger, **overrides)


def test_different_request_is_refused_in_every_state(ledger: Ledger) -> None:
    prepare(ledger, transfer_id="committed")
    ledger.commit(transfer_id="committed", coordinator=GW)
    prepare(ledger, transfer_id="refused", amount_minor=5000)
    for transfer_id in ("committed", "refused"):
        with refused(ledger, ErrorKind.ALREADY_EXISTS, Reason.TRANSFER_ID_REUSED):
            prepare(ledger, transfer_id=transfer_id, fingerprint=OTHER_FP)


def test_prepare_held_by_another_coordinator_is_not_adopted(ledger: Ledger) -> None:
    prepare(ledger)
    with refused(ledger, ErrorKind.ABORTED, Reason.REQUEST_IN_PROGRESS):
        prepare(ledger, coordinator=OTHER_GW)
    assert ledger.transfers["t-1"].coordinator == GW


def test_prepare_of_a_decided_id_replays_for_any_coordinator(ledger: Ledger) -> None:
    prepare(ledger)
    ledger.commit(transfer_id="t-1", coordinator=GW)
    again = prepare(ledger, coordinator=OTHER_GW)
    assert again.replayed
    assert again.transfer.state == TransferState.COMMITTED
    assert again.changes.empty


# ------------------------------------------------------------------------- commit


def test_commit_debit_moves_the_held_money_out(ledger: Ledger) -> None:
    prepare(ledger)
    outcome = ledger.commit(transfer_id="t-1", coordinator=GW)
    ledger.check_invariants()
    alice = ledger.accounts["alice"]
    assert (alice.balance_minor, alice.held_minor) == (700, 0)
    assert outcome.transfer.state == TransferState.COMMITTED
    assert not outcome.replayed
    assert [
        (e.transfer_id, e.account_id, e.amount_minor, e.currency, e.counterparty)
        for e in outcome.changes.entries
    ] == [("t-1", "alice", -300, "EUR", "bank-b/carol")]
    assert outcome.changes.accounts == [alice]
    assert outcome.changes.transfers == [outcome.transfer]


def test_commit_credit_lands_the_pending_money(ledger: Ledger) -> None:
    prepare(ledger, leg=Leg.CREDIT, account_id="bob", amount_minor=70)
    outcome = ledger.commit(transfer_id="t-1", coordinator=GW)
    ledger.check_invariants()
    bob = ledger.accounts["bob"]
    assert (bob.balance_minor, bob.pending_credit_minor, bob.held_minor) == (120, 0, 0)
    assert [e.amount_minor for e in outcome.changes.entries] == [70]
    assert_changes_match(ledger, outcome.changes)


def test_commit_is_idempotent(ledger: Ledger) -> None:
    prepare(ledger)
    first = ledger.commit(transfer_id="t-1", coordinator=GW)
    before = snapshot(ledger)
    again = ledger.commit(transfer_id="t-1", coordinator=GW)
    assert again.replayed
    assert again.transfer == first.transfer
    assert again.changes.empty  # no second entry
    assert snapshot(ledger) == before


def test_commit_of_an_unknown_id_is_not_found(ledger: Ledger) -> None:
    with refused(ledger, ErrorKind.NOT_FOUND, Reason.TRANSFER_NOT_FOUND):
        ledger.commit(transfer_id="nope", coordinator=GW)


def test_commit_of_an_aborted_transfer_is_refused(ledger: Ledger) -> None:
    prepare(ledger)
    ledger.abort(transfer_id="t-1", coordinator=GW)
    prepare(ledger, transfer_id="t-refused", amount_minor=5000)
    ledger.abort(transfer_id="t-tomb", coordinator=GW)
    for transfer_id in ("t-1", "t-refused", "t-tomb"):
        with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.TRANSFER_ABORTED):
            ledger.commit(transfer_id=transfer_id, coordinator=GW)


def test_only_the_recorded_coordinator_may_commit(ledger: Ledger) -> None:
    prepare(ledger)
    with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.NOT_COORDINATOR):
        ledger.commit(transfer_id="t-1", coordinator=OTHER_GW)
    ledger.commit(transfer_id="t-1", coordinator=GW)
    with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.NOT_COORDINATOR):
        ledger.commit(transfer_id="t-1", coordinator=OTHER_GW)


# -------------------------------------------------------------------------- abort


def test_abort_releases_a_hold(ledger: Ledger) -> None:
    prepare(ledger)
    outcome = ledger.abort(transfer_id="t-1", coordinator=GW)
    ledger.check_invariants()
    alice = ledger.accounts["alice"]
    assert (alice.balance_minor, alice.held_minor) == (1000, 0)
    assert outcome.transfer.state == TransferState.ABORTED
    assert outcome.transfer.abort_reason == Reason.ABORTED_BY_COORDINATOR
    assert outcome.changes.entries == []
    assert outcome.changes.accounts == [alice]
    assert abort_error(outcome.transfer).reason == Reason.TRANSFER_ABORTED


def test_abort_releases_a_pending_credit(ledger: Ledger) -> None:
    prepare(ledger, leg=Leg.CREDIT, account_id="bob", amount_minor=70)
    ledger.abort(transfer_id="t-1", coordinator=GW)
    ledger.check_invariants()
    bob = ledger.accounts["bob"]
    assert (bob.balance_minor, bob.pending_credit_minor) == (50, 0)


def test_abort_is_idempotent(ledger: Ledger) -> None:
    prepare(ledger)
    first = ledger.abort(transfer_id="t-1", coordinator=GW)
    before = snapshot(ledger)
    for coordinator in (GW, OTHER_GW):
        again = ledger.abort(transfer_id="t-1", coordinator=coordinator)
        assert again.replayed
        assert again.transfer == first.transfer
        assert again.changes.empty
    assert snapshot(ledger) == before


def test_abort_of_a_refused_transfer_replays_the_refusal(ledger: Ledger) -> None:
    refusal = prepare(ledger, amount_minor=5000).transfer
    again = ledger.abort(transfer_id="t-1", coordinator=GW)
    assert again.replayed
    assert again.transfer == refusal
    assert again.transfer.abort_reason == Reason.INSUFFICIENT_FUNDS


def test_abort_of_a_committed_transfer_is_refused(ledger: Ledger) -> None:
    prepare(ledger)
    ledger.commit(transfer_id="t-1", coordinator=GW)
    for coordinator in (GW, OTHER_GW):
        with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.TRANSFER_COMMITTED):
            ledger.abort(transfer_id="t-1", coordinator=coordinator)


def test_only_the_recorded_coordinator_may_abort(ledger: Ledger) -> None:
    prepare(ledger)
    with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.NOT_COORDINATOR):
        ledger.abort(transfer_id="t-1", coordinator=OTHER_GW)
    assert ledger.accounts["alice"].held_minor == 300


def test_abort_of_an_unknown_id_leaves_a_tombstone(ledger: Ledger) -> None:
    before_accounts = dict(ledger.accounts)
    outcome = ledger.abort(transfer_id="t-1", coordinator=GW)
    ledger.check_invariants()
    tombstone = outcome.transfer
    assert not outcome.replayed
    assert tombstone.state == TransferState.ABORTED
    assert (tombstone.fingerprint, tombstone.postings, tombstone.coordinator) == (b"", (), GW)
    assert tombstone.abort_reason == Reason.ABORTED_BY_COORDINATOR
    assert outcome.changes == Changes(transfers=[tombstone])
    assert ledger.accounts == before_accounts


@pytest.mark.parametrize("coordinator", [GW, OTHER_GW])
def test_tombstone_refuses_a_late_prepare_of_any_shape(ledger: Ledger, coordinator: str) -> None:
    tombstone = ledger.abort(transfer_id="t-1", coordinator=GW).transfer
    before = snapshot(ledger)
    for overrides in ({}, {"leg": Leg.CREDIT, "account_id": "bob"}, {"fingerprint": OTHER_FP}):
        late = prepare(ledger, coordinator=coordinator, **overrides)
        assert late.replayed
        assert late.transfer == tombstone
        assert late.changes.empty
        assert abort_error(late.transfer).reason == Reason.TRANSFER_ABORTED
    late_process = process(ledger, transfer_id="t-1", coordinator=coordinator)
    assert late_process.replayed
    assert late_process.transfer == tombstone
    assert snapshot(ledger) == before
    assert ledger.accounts["alice"].held_minor == 0


# -------------------------------------------------------------------- one phase


def test_process_moves_money_within_the_bank(ledger: Ledger) -> None:
    outcome = process(ledger)
    alice, bob = ledger.accounts["alice"], ledger.accounts["bob"]
    assert (alice.balance_minor, bob.balance_minor) == (700, 350)
    assert alice.held_minor == bob.pending_credit_minor == 0
    transfer = outcome.transfer
    assert transfer.state == TransferState.COMMITTED
    assert transfer.one_phase
    assert transfer.postings == (
        Posting("alice", Leg.DEBIT, 300, "EUR", "bob"),
        Posting("bob", Leg.CREDIT, 300, "EUR", "alice"),
    )
    entries = outcome.changes.entries
    assert [(e.account_id, e.amount_minor, e.counterparty) for e in entries] == [
        ("alice", -300, "bob"),
        ("bob", 300, "alice"),
    ]
    assert sum(e.amount_minor for e in entries) == 0
    assert outcome.changes.accounts == [alice, bob]
    assert outcome.changes.transfers == [transfer]


def test_process_may_spend_the_whole_available_balance(ledger: Ledger) -> None:
    prepare(ledger, transfer_id="t-hold", amount_minor=400)
    assert process(ledger, amount_minor=600).transfer.state == TransferState.COMMITTED
    assert_recorded_refusal(
        ledger, process(ledger, transfer_id="p-2", amount_minor=1), Reason.INSUFFICIENT_FUNDS
    )


def test_process_replays_a_commit(ledger: Ledger) -> None:
    first = process(ledger)
    before = snapshot(ledger)
    again = process(ledger, coordinator=OTHER_GW)
    assert again.replayed
    assert again.transfer == first.transfer
    assert again.changes.empty
    assert snapshot(ledger) == before


@pytest.mark.parametrize(
    ("overrides", "reason", "kind"),
    [
        ({"from_account": "nobody"}, Reason.ACCOUNT_NOT_FOUND, ErrorKind.NOT_FOUND),
        ({"to_account": "nobody"}, Reason.ACCOUNT_NOT_FOUND, ErrorKind.NOT_FOUND),
        ({"to_account": "dollar"}, Reason.CURRENCY_MISMATCH, ErrorKind.FAILED_PRECONDITION),
        ({"currency": "USD"}, Reason.CURRENCY_MISMATCH, ErrorKind.FAILED_PRECONDITION),
        ({"amount_minor": 1001}, Reason.INSUFFICIENT_FUNDS, ErrorKind.FAILED_PRECONDITION),
        (
            {"to_account": "rich", "amount_minor": 11},
            Reason.AMOUNT_OVERFLOW,
            ErrorKind.FAILED_PRECONDITION,
        ),
    ],
)
def test_process_refusal_is_recorded_and_replayed(
    ledger: Ledger, overrides: dict[str, Any], reason: Reason, kind: ErrorKind
) -> None:
    outcome = process(ledger, **overrides)
    assert_recorded_refusal(ledger, outcome, reason)
    assert outcome.transfer.one_phase
    error = abort_error(outcome.transfer)
    assert (error.kind, error.reason) == (kind, reason)
    again = process(ledger, **overrides)
    assert again.replayed
    assert again.transfer == outcome.transfer
    assert again.changes.empty


def test_process_refusal_reasons_follow_a_stable_order(ledger: Ledger) -> None:
    # Unknown payee beats the payer's currency and funds; currency beats funds.
    outcome = process(ledger, to_account="nobody", amount_minor=5000, currency="USD")
    assert outcome.transfer.abort_reason == Reason.ACCOUNT_NOT_FOUND
    outcome = process(ledger, transfer_id="p-2", to_account="dollar", amount_minor=5000)
    assert outcome.transfer.abort_reason == Reason.CURRENCY_MISMATCH


@pytest.mark.parametrize(
    "overrides",
    [
        {"fingerprint": OTHER_FP},
        {"to_account": "rich"},
        {"from_account": "rich"},
        {"amount_minor": 1},
        {"from_account": "bob", "to_account": "alice"},
    ],
)
def test_process_of_a_known_id_with_a_different_request_is_refused(
    ledger: Ledger, overrides: dict[str, Any]
) -> None:
    process(ledger)
    with refused(ledger, ErrorKind.ALREADY_EXISTS, Reason.TRANSFER_ID_REUSED):
        process(ledger, **overrides)


def test_one_phase_and_two_phase_ids_do_not_mix(ledger: Ledger) -> None:
    prepare(ledger, transfer_id="x")
    with refused(ledger, ErrorKind.ALREADY_EXISTS, Reason.TRANSFER_ID_REUSED):
        process(ledger, transfer_id="x")
    process(ledger, transfer_id="y")
    with refused(ledger, ErrorKind.ALREADY_EXISTS, Reason.TRANSFER_ID_REUSED):
        prepare(ledger, transfer_id="y")


def test_a_one_phase_transfer_cannot_be_aborted_or_committed_by_another(ledger: Ledger) -> None:
    process(ledger)
    with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.TRANSFER_COMMITTED):
        ledger.abort(transfer_id="p-1", coordinator=GW)
    assert ledger.commit(transfer_id="p-1", coordinator=GW).replayed
    with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.NOT_COORDINATOR):
        ledger.commit(transfer_id="p-1", coordinator=OTHER_GW)


# ------------------------------------------------------------------ across banks


def test_cross_bank_payment_entries_sum_to_zero() -> None:
    payer_bank, payee_bank = make_ledger(), make_ledger()
    debit = prepare(payer_bank, account_id="alice", counterparty="bank-b/bob")
    credit = prepare(payee_bank, leg=Leg.CREDIT, account_id="bob", counterparty="bank-a/alice")
    assert debit.transfer.state == credit.transfer.state == TransferState.PREPARED
    entries = [
        *payer_bank.commit(transfer_id="t-1", coordinator=GW).changes.entries,
        *payee_bank.commit(transfer_id="t-1", coordinator=GW).changes.entries,
    ]
    assert sum(entry.amount_minor for entry in entries) == 0
    assert payer_bank.accounts["alice"].balance_minor == 700
    assert payee_bank.accounts["bob"].balance_minor == 350


# -------------------------------------------------------- persistence and corruption


def test_a_ledger_rebuilt_from_persisted_changes_is_the_same(ledger: Ledger) -> None:
    accounts = {a.account_id: a for a in ledger.accounts.values()}
    transfers: dict[str, Transfer] = {}

    def persist(changes: Changes) -> None:
        accounts.update((a.account_id, a) for a in changes.accounts)
        transfers.update((t.transfer_id, t) for t in changes.transfers)

    persist(prepare(ledger, transfer_id="t-1").changes)
    persist(prepare(ledger, transfer_id="t-2", leg=Leg.CREDIT, account_id="bob").changes)
    persist(ledger.commit(transfer_id="t-1", coordinator=GW).changes)
    persist(ledger.abort(transfer_id="t-3", coordinator=GW).changes)
    persist(process(ledger, transfer_id="p-1", to_account="rich", amount_minor=11).changes)
    persist(process(ledger, transfer_id="p-2", amount_minor=20).changes)

    rebuilt = Ledger(accounts.values(), transfers.values())
    assert rebuilt.accounts == ledger.accounts
    assert rebuilt.transfers == ledger.transfers


def test_rows_from_the_store_may_carry_plain_strings() -> None:
    # Plain strings where the types say Leg and TransferState: what a row read back holds.
    posting = Posting("a", "DEBIT", 5, "EUR", "x")  # type: ignore[arg-type]
    transfer = Transfer("t", FP, "PREPARED", GW, [posting], False)  # type: ignore[arg-type]
    assert posting.leg is Leg.DEBIT
    assert transfer.state is TransferState.PREPARED
    assert transfer.postings == (posting,)
    rebuilt = Ledger([Account("a", "c", "EUR", 10, held_minor=5)], [transfer])
    assert rebuilt.commit(transfer_id="t", coordinator=GW).changes.entries[0].amount_minor == -5


@pytest.mark.parametrize(
    ("accounts", "transfers"),
    [
        ([Account("a", "c", "EUR", 10, held_minor=11)], []),
        ([Account("a", "c", "EUR", -1)], []),
        ([Account("a", "c", "EUR", 10, pending_credit_minor=-1)], []),
        ([Account("a", "c", "EUR", 10, held_minor=5)], []),  # a hold with no transfer
        (
            [Account("a", "c", "EUR", 10)],
            [
                Transfer(
                    "t",
                    FP,
                    TransferState.PREPARED,
                    GW,
                    (Posting("a", Leg.DEBIT, 5, "EUR", "x"),),
                    False,
                )
            ],
        ),
        (
            [Account("a", "c", "EUR", 10, held_minor=5)],
            [
                Transfer(
                    "t",
                    FP,
                    TransferState.PREPARED,
                    "",
                    (Posting("a", Leg.DEBIT, 5, "EUR", "x"),),
                    False,
                )
            ],
        ),
        (
            [Account("a", "c", "EUR", 10)],
            [Transfer("t", FP, TransferState.ABORTED, GW, (), False)],  # no reason
        ),
        ([Account("a", "c", "EUR", 10), Account("a", "c", "EUR", 10)], []),
    ],
)
def test_corrupt_state_is_caught_at_load(
    accounts: list[Account], transfers: list[Transfer]
) -> None:
    with pytest.raises(AssertionError):
        Ledger(accounts, transfers)


def test_check_invariants_catches_a_hold_that_drifted(ledger: Ledger) -> None:
    prepare(ledger)
    alice = ledger.accounts["alice"]
    ledger.accounts["alice"] = Account(
        alice.account_id, alice.customer_id, alice.currency, alice.balance_minor, 0, 0
    )
    with pytest.raises(AssertionError):
        ledger.check_invariants()


# ------------------------------------------------------- withdrawn votes


def test_release_withdraws_a_yes_without_leaving_a_tombstone(ledger: Ledger) -> None:
    prepare(ledger)
    assert ledger.accounts["alice"].held_minor == 300
    released = ledger.release(transfer_id="t-1", coordinator=GW)
    ledger.check_invariants()
    assert released.changes.released == ["t-1"] and not released.replayed
    assert "t-1" not in ledger.transfers
    assert ledger.accounts["alice"].held_minor == 0
    # Another coordinator (the transfer's owner) can now prepare the leg.
    again = prepare(ledger, coordinator="gw-2")
    assert again.transfer.state == TransferState.PREPARED and not again.replayed


def test_release_of_an_unknown_id_records_nothing(ledger: Ledger) -> None:
    outcome = ledger.release(transfer_id="t-9", coordinator=GW)
    assert outcome.changes.empty and outcome.transfer.state == TransferState.ABORTED
    assert "t-9" not in ledger.transfers
    assert prepare(ledger, transfer_id="t-9").transfer.state == TransferState.PREPARED


def test_release_leaves_decided_and_foreign_records_alone(ledger: Ledger) -> None:
    prepare(ledger)
    with refused(ledger, ErrorKind.FAILED_PRECONDITION, Reason.NOT_COORDINATOR):
        ledger.release(transfer_id="t-1", coordinator="gw-2")
    ledger.commit(transfer_id="t-1", coordinator=GW)
    outcome = ledger.release(transfer_id="t-1", coordinator=GW)
    assert outcome.replayed and outcome.transfer.state == TransferState.COMMITTED


def test_a_presumed_abort_is_dropped_once_the_leg_was_voted_yes_again(ledger: Ledger) -> None:
    """The resolver reads the vote count, asks the coordinator, which knows
    nothing and says ABORT; meanwhile a new attempt of that coordinator got
    this leg's YES again. Applying the stale ABORT would break that attempt."""
    prepare(ledger)
    asked_at = ledger.votes.get("t-1", 0)
    prepare(ledger)  # the new attempt's replayed YES
    stale = ledger.abort(transfer_id="t-1", coordinator=GW, unless_voted_since=asked_at)
    assert stale.replayed and stale.transfer.state == TransferState.PREPARED
    fresh = ledger.abort(
        transfer_id="t-1", coordinator=GW, unless_voted_since=ledger.votes.get("t-1", 0)
    )
    ledger.check_invariants()
    assert fresh.transfer.state == TransferState.ABORTED and "t-1" not in ledger.votes
