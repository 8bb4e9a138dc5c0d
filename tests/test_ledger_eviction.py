"""Finished transfers may leave the ledger's memory and come back; PREPARED ones never leave."""

from __future__ import annotations

import pytest

from strife.bank.ledger import Account, Ledger, Leg, TransferState

GW = "gw-1"


def _ledger() -> Ledger:
    return Ledger([Account("ada-usd", "ada", "USD", 1_000)])


def _prepare(ledger: Ledger, transfer_id: str) -> None:
    ledger.prepare(
        transfer_id=transfer_id,
        coordinator=GW,
        leg=Leg.DEBIT,
        account_id="ada-usd",
        amount_minor=10,
        currency="USD",
        fingerprint=b"fp",
        counterparty="beta/cy-usd",
    )


def test_finished_transfers_are_evicted_and_readmitted_unchanged() -> None:
    ledger = _ledger()
    for tid in ("c", "a", "p"):
        _prepare(ledger, tid)
    committed = ledger.commit(transfer_id="c", coordinator=GW).transfer
    aborted = ledger.abort(transfer_id="a", coordinator=GW).transfer
    ledger.evict(["c", "a"])
    assert set(ledger.transfers) == {"p"}
    ledger.check_invariants()  # the hold of "p" is still accounted for

    ledger.readmit(committed)
    ledger.readmit(aborted)
    assert ledger.commit(transfer_id="c", coordinator=GW).replayed
    assert ledger.transfers["a"].state == TransferState.ABORTED
    ledger.check_invariants()


def test_a_prepared_transfer_is_never_evicted() -> None:
    ledger = _ledger()
    _prepare(ledger, "p")
    with pytest.raises(AssertionError):
        ledger.evict(["p"])
    assert "p" in ledger.transfers
    ledger.check_invariants()


def test_only_an_absent_finished_transfer_is_readmitted() -> None:
    ledger = _ledger()
    _prepare(ledger, "p")
    prepared = ledger.transfers["p"]
    with pytest.raises(AssertionError):
        ledger.readmit(prepared)  # a PREPARED transfer is always resident
    committed = ledger.commit(transfer_id="p", coordinator=GW).transfer
    with pytest.raises(AssertionError):
        ledger.readmit(committed)  # already resident
