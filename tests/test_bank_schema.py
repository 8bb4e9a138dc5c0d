"""Bank schema migration 2: a version-1 ledger opens intact, indexed and still exactly-once.

The version-1 database is written the way the version-1 store wrote it: the
ledger's own changes, through the version-1 statements (the entry insert is
frozen here; the other statements did not change).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from strife.bank.ledger import Changes, Entry, Ledger, LedgerError, Leg, Reason, TransferState
from strife.bank.schema import MIGRATIONS
from strife.bank.store import (
    _INSERT_AUDIT,
    _INSERT_ENTRY,
    _INSERT_OPENING,
    _SELECT_PREPARED,
    _UPSERT_ACCOUNT,
    _UPSERT_TRANSFER,
    OPENING_PREFIX,
    BankStore,
    StoreConfig,
    _entry_row,
    _postings_json,
    _record,
    _select_by_ids,
)
from strife.storage.sqlite import StorageError, Writes, connect, migrate

_V1_INSERT_ENTRY = (
    "INSERT INTO entries (transfer_id, account_id, amount_minor, currency, counterparty,"
    " posted_at_ms) VALUES (?, ?, ?, ?, ?, ?)"
)
_TRANSFER_ROW = (
    "SELECT transfer_id, fingerprint, state, coordinator, one_phase, abort_reason, postings,"
    " updated_at_ms FROM transfers"
)
_ENTRY_ROW = (
    "SELECT seq, transfer_id, account_id, amount_minor, currency, counterparty, posted_at_ms"
    " FROM entries"
)
GW = "gw-1"
FP = b"f" * 32


def _leg(tid: str, leg: Leg, account: str, amount: int, fingerprint: bytes = FP) -> dict[str, Any]:
    return {
        "transfer_id": tid,
        "coordinator": GW,
        "leg": leg,
        "account_id": account,
        "amount_minor": amount,
        "currency": "USD",
        "fingerprint": fingerprint,
        "counterparty": "beta/cy-usd",
    }


ONE_PHASE: dict[str, Any] = {
    "transfer_id": "t-one-phase",
    "coordinator": GW,
    "from_account": "ada-usd",
    "to_account": "bob-usd",
    "amount_minor": 7,
    "currency": "USD",
    "fingerprint": FP,
}


def _write_v1(conn: sqlite3.Connection, changes: Changes, at_ms: int) -> None:
    """One operation's changes as the version-1 store wrote them."""
    for a in changes.accounts:
        account_row = (
            a.account_id,
            a.customer_id,
            a.currency,
            a.balance_minor,
            a.held_minor,
            a.pending_credit_minor,
        )
        conn.execute(_UPSERT_ACCOUNT, account_row)
    for t in changes.transfers:
        state, postings = str(t.state), _postings_json(t.postings)
        transfer_row = (
            t.transfer_id,
            t.fingerprint,
            state,
            t.coordinator,
            int(t.one_phase),
            t.abort_reason,
            postings,
            at_ms,
        )
        conn.execute(_UPSERT_TRANSFER, transfer_row)
        conn.execute(_INSERT_AUDIT, (at_ms, t.transfer_id, state, t.coordinator, t.abort_reason))
    for e in changes.entries:
        conn.execute(_V1_INSERT_ENTRY, _entry_row(e, at_ms))


async def _create_v1(db: Path) -> None:
    conn = await connect(db)
    try:
        assert await migrate(conn, MIGRATIONS[:1]) == 1
    finally:
        await conn.close()


def _populate_v1(db: Path) -> None:
    """Transfers in every state, with ids whose order is not their arrival order."""
    ledger = Ledger()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("BEGIN")
    for customer in ("c-ada", "c-bob", "c-eve"):
        conn.execute("INSERT INTO customers VALUES (?, ?, ?, 'x')", (customer, customer, customer))
    openings = [("ada-usd", "c-ada", 100_000), ("bob-usd", "c-bob", 5_000), ("eve-usd", "c-eve", 0)]
    for account, customer, balance in openings:
        changes = ledger.add_account(
            account_id=account, customer_id=customer, currency="USD", balance_minor=balance
        )
        _write_v1(conn, changes, 1_000)
        if balance:
            opening = Entry(OPENING_PREFIX + account, account, balance, "USD", "opening balance")
            conn.execute(_V1_INSERT_ENTRY, _entry_row(opening, 1_000))
    steps: list[Changes] = [
        ledger.prepare(**_leg("z-2pc-debit", Leg.DEBIT, "ada-usd", 100)).changes,
        ledger.prepare(**_leg("m-2pc-credit", Leg.CREDIT, "bob-usd", 50)).changes,
        ledger.commit(transfer_id="z-2pc-debit", coordinator=GW).changes,
        ledger.process(**ONE_PHASE).changes,
        ledger.prepare(**_leg("a-prepared-debit", Leg.DEBIT, "ada-usd", 30)).changes,
        ledger.commit(transfer_id="m-2pc-credit", coordinator=GW).changes,
        ledger.prepare(**_leg("y-prepared-credit", Leg.CREDIT, "bob-usd", 20)).changes,
        ledger.prepare(**_leg("b-aborted", Leg.DEBIT, "ada-usd", 40)).changes,
        ledger.abort(transfer_id="b-aborted", coordinator=GW).changes,
        ledger.prepare(**_leg("x-refused", Leg.DEBIT, "eve-usd", 1)).changes,
        ledger.abort(transfer_id="c-tombstone", coordinator=GW).changes,
    ]
    for at_ms, changes in enumerate(steps, start=2_000):
        _write_v1(conn, changes, at_ms)
    conn.execute("COMMIT")
    conn.close()


def _rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _plan(db: Path, sql: str, params: tuple[Any, ...]) -> str:
    return " | ".join(row[3] for row in _rows(db, f"EXPLAIN QUERY PLAN {sql}", params))


async def _migrated(tmp_path: Path) -> tuple[Path, list[Any], list[Any]]:
    db = tmp_path / "bank.db"
    await _create_v1(db)
    _populate_v1(db)
    transfers = _rows(db, f"{_TRANSFER_ROW} ORDER BY transfer_id")
    entries = _rows(db, f"{_ENTRY_ROW} ORDER BY seq")
    return db, transfers, entries


async def test_version_1_opens_with_every_transfer_and_entry_intact(tmp_path: Path) -> None:
    db, transfers, entries = await _migrated(tmp_path)
    assert {row[2] for row in transfers} == {"PREPARED", "COMMITTED", "ABORTED"}
    store = await BankStore.open(StoreConfig(path=db))
    try:
        assert sorted(t.transfer_id for t in store.prepared()) == [
            "a-prepared-debit",
            "y-prepared-credit",
        ]
        assert store.ledger.accounts["ada-usd"].held_minor == 30
        assert store.ledger.accounts["bob-usd"].pending_credit_minor == 20
    finally:
        await store.close()

    assert _rows(db, "SELECT MAX(version) FROM schema_version") == [(5,)]
    assert _rows(db, f"{_TRANSFER_ROW} ORDER BY transfer_id") == transfers
    assert _rows(db, f"{_ENTRY_ROW} ORDER BY seq") == entries
    # Arrival order: rows were copied by last change, so seq follows updated_at_ms.
    by_seq = [tid for (tid,) in _rows(db, "SELECT transfer_id FROM transfers ORDER BY seq")]
    assert by_seq == [row[0] for row in sorted(transfers, key=lambda r: (r[7], r[0]))]
    # Every entry names its own transfer's seq; an opening balance names 0.
    linked = _rows(
        db,
        "SELECT e.transfer_id, e.transfer_seq, COALESCE(t.seq, 0) FROM entries e"
        " LEFT JOIN transfers t ON t.transfer_id = e.transfer_id",
    )
    assert all(seq == expected for _, seq, expected in linked), linked
    assert sorted(tid for tid, seq, _ in linked if seq == 0) == [
        "opening:ada-usd",
        "opening:bob-usd",
    ]
    tables = _rows(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert [name for (name,) in tables] == [
        "accounts",
        "audit",
        "bank_identity",
        "customers",
        "entries",
        "schema_version",
        "secrets",
        "transfers",
    ]


async def test_replays_after_migration_do_nothing_twice(tmp_path: Path) -> None:
    db, transfers, entries = await _migrated(tmp_path)
    store = await BankStore.open(StoreConfig(path=db))
    try:
        before = dict(store.ledger.accounts)
        # Finished transfers are not resident: each replay is found through the
        # preload query on the new table.
        assert "z-2pc-debit" not in store.ledger.transfers
        replays = [
            await store.prepare(**_leg("z-2pc-debit", Leg.DEBIT, "ada-usd", 100)),
            await store.commit(transfer_id="z-2pc-debit", coordinator=GW),
            await store.commit(transfer_id="m-2pc-credit", coordinator=GW),
            await store.process(**ONE_PHASE),
            await store.prepare(**_leg("x-refused", Leg.DEBIT, "eve-usd", 1)),
            await store.abort(transfer_id="b-aborted", coordinator=GW),
            await store.prepare(**_leg("c-tombstone", Leg.DEBIT, "ada-usd", 1)),
        ]
        assert all(outcome.replayed for outcome in replays)
        assert [str(o.transfer.state) for o in replays] == [
            "COMMITTED",
            "COMMITTED",
            "COMMITTED",
            "COMMITTED",
            "ABORTED",
            "ABORTED",
            "ABORTED",
        ]
        assert replays[4].transfer.abort_reason == Reason.INSUFFICIENT_FUNDS
        with pytest.raises(LedgerError) as reused:
            await store.prepare(**_leg("z-2pc-debit", Leg.DEBIT, "ada-usd", 100, b"other"))
        assert reused.value.reason == Reason.TRANSFER_ID_REUSED
        assert store.ledger.accounts == before
    finally:
        await store.close()
    assert _rows(db, f"{_TRANSFER_ROW} ORDER BY transfer_id") == transfers
    assert _rows(db, f"{_ENTRY_ROW} ORDER BY seq") == entries


async def test_migrated_transfers_finish_and_new_ones_append(tmp_path: Path) -> None:
    db, _, entries = await _migrated(tmp_path)
    store = await BankStore.open(StoreConfig(path=db))
    try:
        await store.commit(transfer_id="a-prepared-debit", coordinator=GW)
        await store.abort(transfer_id="y-prepared-credit", coordinator=GW)
        await store.prepare(**_leg("0-new", Leg.DEBIT, "ada-usd", 5))
        await store.commit(transfer_id="0-new", coordinator=GW)
        await store.process(**{**ONE_PHASE, "transfer_id": "1-new-one-phase"})
        assert store.prepared() == []
    finally:
        await store.close()
    seqs = dict(_rows(db, "SELECT transfer_id, seq FROM transfers"))
    assert seqs["0-new"] > max(s for t, s in seqs.items() if "new" not in t)
    assert seqs["1-new-one-phase"] == seqs["0-new"] + 1
    new_entries = _rows(
        db,
        f"SELECT transfer_id, transfer_seq, account_id, amount_minor FROM entries"
        f" WHERE seq > {entries[-1][0]} ORDER BY seq",
    )
    assert new_entries == [
        ("a-prepared-debit", seqs["a-prepared-debit"], "ada-usd", -30),
        ("0-new", seqs["0-new"], "ada-usd", -5),
        ("1-new-one-phase", seqs["1-new-one-phase"], "ada-usd", -7),
        ("1-new-one-phase", seqs["1-new-one-phase"], "bob-usd", 7),
    ]
    balances = dict(_rows(db, "SELECT account_id, balance_minor FROM accounts"))
    sums = dict(_rows(db, "SELECT account_id, SUM(amount_minor) FROM entries GROUP BY 1"))
    assert balances == {**sums, "eve-usd": 0}
    assert _rows(db, "SELECT COUNT(*) FROM transfers WHERE state = 'PREPARED'") == [(0,)]


async def test_an_entry_cannot_post_twice(tmp_path: Path) -> None:
    """The guarantee UNIQUE(transfer_id, account_id) gave, kept by (transfer_seq, account_id)."""
    db, _, _ = await _migrated(tmp_path)
    store = await BankStore.open(StoreConfig(path=db))
    await store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        again = _entry_row(Entry("z-2pc-debit", "ada-usd", -100, "USD", "beta/cy-usd"), 1)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(_INSERT_ENTRY, again)
        opening = _entry_row(Entry("opening:ada-usd", "ada-usd", 1, "USD", "opening balance"), 1)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(_INSERT_OPENING, opening)
        # Seq 0 is for opening balances only; an entry of no known transfer is refused.
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(_INSERT_OPENING, _entry_row(Entry("t", "bob-usd", 1, "USD", ""), 1))
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            conn.execute(_INSERT_ENTRY, _entry_row(Entry("unknown", "bob-usd", 1, "USD", ""), 1))
    finally:
        conn.close()


async def test_store_queries_use_indexes(tmp_path: Path) -> None:
    db, _, _ = await _migrated(tmp_path)
    store = await BankStore.open(StoreConfig(path=db))
    await store.close()
    by_ids = _plan(db, _select_by_ids(3), ("a", "b", "c"))
    assert "USING INDEX transfers_by_id (transfer_id=?)" in by_ids, by_ids
    prepared = _plan(db, _SELECT_PREPARED, ())
    assert "USING INDEX transfers_prepared" in prepared, prepared
    entry = _plan(db, _INSERT_ENTRY, _entry_row(Entry("t", "ada-usd", 1, "USD", ""), 1))
    assert "USING COVERING INDEX transfers_by_id (transfer_id=?)" in entry, entry
    history = _plan(
        db,
        "SELECT seq FROM entries WHERE account_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
        ("ada-usd", 10, 5),
    )
    assert "USING COVERING INDEX entries_by_account" in history, history
    # The upsert's ON CONFLICT (transfer_id) target and the entry guard are unique indexes.
    unique = {(name, unique) for _, name, unique, *_ in _rows(db, "PRAGMA index_list(transfers)")}
    assert ("transfers_by_id", 1) in unique
    assert _rows(db, "PRAGMA index_info(transfers_by_id)") == [(0, 1, "transfer_id")]
    assert _rows(db, "PRAGMA index_info(entries_once)") == [
        (0, 1, "transfer_seq"),
        (1, 3, "account_id"),
    ]
    # The random-keyed layouts of version 1 are gone.
    schema = " ".join(sql for (sql,) in _rows(db, "SELECT sql FROM sqlite_master WHERE sql"))
    assert "WITHOUT ROWID" not in schema and "UNIQUE (transfer_id" not in schema


async def test_a_failed_migration_leaves_version_1(tmp_path: Path) -> None:
    """An entry naming no transfer fails the CHECK; the whole migration rolls back."""
    db, transfers, entries = await _migrated(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(_V1_INSERT_ENTRY, ("orphan", "bob-usd", 1, "USD", "x", 1))
    conn.close()
    schema_before = _rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with pytest.raises(StorageError, match="CHECK"):
        await BankStore.open(StoreConfig(path=db))
    assert _rows(db, "SELECT MAX(version) FROM schema_version") == [(1,)]
    assert _rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
    assert _rows(db, f"{_TRANSFER_ROW} ORDER BY transfer_id") == transfers
    assert len(_rows(db, f"{_ENTRY_ROW} ORDER BY seq")) == len(entries) + 1


async def test_entries_run_after_their_transfer_in_any_batch(tmp_path: Path) -> None:
    """A seed first in a batch must not put transfer entries ahead of their transfer's row."""
    db = tmp_path / "bank.db"
    conn = await connect(db)
    await migrate(conn, MIGRATIONS)
    await conn.close()
    ledger = Ledger()
    writes = Writes()
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("PRAGMA foreign_keys=ON")
    raw.execute("INSERT INTO customers VALUES ('c', 'c', 'c', 'x')")
    for account in ("ada-usd", "bob-usd"):
        _record(
            writes,
            ledger.add_account(
                account_id=account, customer_id="c", currency="USD", balance_minor=100
            ),
            1,
        )
        opening = Entry(OPENING_PREFIX + account, account, 100, "USD", "opening balance")
        writes.add(_INSERT_OPENING, _entry_row(opening, 1))
    outcome = ledger.process(**ONE_PHASE)
    assert outcome.transfer.state == TransferState.COMMITTED
    _record(writes, outcome.changes, 2)
    raw.execute("BEGIN IMMEDIATE")
    writes.execute_sync(raw)
    raw.execute("COMMIT")
    rows = raw.execute("SELECT transfer_id, transfer_seq FROM entries ORDER BY seq").fetchall()
    raw.close()
    assert rows == [
        ("opening:ada-usd", 0),
        ("opening:bob-usd", 0),
        ("t-one-phase", 1),
        ("t-one-phase", 1),
    ]


async def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    store = await BankStore.open(StoreConfig(path=tmp_path / "bank.db"))
    await store.close()
    assert _rows(tmp_path / "bank.db", "SELECT version FROM schema_version") == [
        (1,),
        (2,),
        (3,),
        (4,),
        (5,),
    ]
