"""A transfer's state on disk moves forward only, whatever the store is asked to write."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from strife.bank.ledger import Changes, Leg, Reason, Transfer, TransferState
from strife.bank.seed import load_seed
from strife.bank.store import BankStore, StoreConfig, _record
from strife.storage.sqlite import WriterFailedError, Writes

from .bank_fixtures import write_seed

GW = "gw-1"


def _plain(password: str) -> str:
    return "scrypt$1$1$1$" + password  # cheap stand-in: these tests never log in


def _on_disk(db: Path, transfer_id: str) -> tuple[str, str]:
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT state, abort_reason FROM transfers WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


async def _decided(tmp_path: Path, state: TransferState) -> tuple[BankStore, Transfer]:
    """A store holding one two-phase debit, decided `state`."""
    store = await BankStore.open(StoreConfig(path=tmp_path / "bank.db"))
    await store.seed(load_seed(write_seed(tmp_path / "seed.json"), bank="alpha"), _plain)
    prepared = await store.prepare(
        transfer_id="t",
        coordinator=GW,
        leg=Leg.DEBIT,
        account_id="ada-usd",
        amount_minor=10,
        currency="USD",
        fingerprint=b"fp",
        counterparty="beta/cy-usd",
    )
    decide = store.commit if state == TransferState.COMMITTED else store.abort
    decided = await decide(transfer_id="t", coordinator=GW)
    assert prepared.transfer.state == TransferState.PREPARED
    assert decided.transfer.state == state
    return store, prepared.transfer


def _stale(prepared: Transfer, state: TransferState) -> Transfer:
    reason = Reason.ABORTED_BY_COORDINATOR if state == TransferState.ABORTED else ""
    return dataclasses.replace(prepared, state=state, abort_reason=reason)


@pytest.mark.parametrize(
    ("decided", "stale"),
    [
        (TransferState.COMMITTED, TransferState.PREPARED),
        (TransferState.COMMITTED, TransferState.ABORTED),
        (TransferState.ABORTED, TransferState.PREPARED),
        (TransferState.ABORTED, TransferState.COMMITTED),
    ],
)
async def test_a_decided_transfer_is_never_rewritten(
    tmp_path: Path, decided: TransferState, stale: TransferState
) -> None:
    """A snapshot that would move a decided transfer back, or to the other
    decision, fails its batch loudly and stops the writer; the disk keeps
    the decision."""
    store, prepared = await _decided(tmp_path, decided)
    before = _on_disk(tmp_path / "bank.db", "t")
    snapshot = _stale(prepared, stale)

    def work(writes: Writes) -> None:
        _record(writes, Changes(transfers=[snapshot]), 1)

    try:
        with pytest.raises(WriterFailedError, match="forward only"):
            await store._writer.submit(work)
        assert isinstance(store.writer_failure, sqlite3.IntegrityError)
    finally:
        await store.close()
    assert _on_disk(tmp_path / "bank.db", "t") == before


async def test_any_writer_is_held_to_it(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    store, _ = await _decided(tmp_path, TransferState.COMMITTED)
    await store.close()
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        # The trigger judges the row's state, whoever writes it.
        with pytest.raises(sqlite3.IntegrityError, match="forward only"):
            conn.execute("UPDATE transfers SET state = 'PREPARED' WHERE transfer_id = 't'")
        conn.execute(
            "INSERT INTO transfers (transfer_id, fingerprint, state, coordinator, one_phase,"
            " abort_reason, postings, updated_at_ms) VALUES ('u', x'01', 'PREPARED', ?, 0, '',"
            " '[]', 0)",
            (GW,),
        )
        conn.execute("UPDATE transfers SET state = 'ABORTED' WHERE transfer_id = 'u'")
        with pytest.raises(sqlite3.IntegrityError, match="forward only"):
            conn.execute("UPDATE transfers SET state = 'COMMITTED' WHERE transfer_id = 'u'")
    assert _on_disk(db, "t")[0] == "COMMITTED"
    assert _on_disk(db, "u")[0] == "ABORTED"
