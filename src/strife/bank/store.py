"""The bank's durable state: the ledger in memory, every change in SQLite first.

All ledger operations run in the single writer task (see
`strife.storage.sqlite.GroupCommitWriter`), so they are serialised without
locks, and a caller hears its outcome only after the batch holding its change
has committed. Accounts and PREPARED transfers are always resident; finished
transfers are evicted beyond a bound and fetched back, one query per batch,
when an id is seen again, so memory stays flat however long the ledger grows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strife.bank.ledger import (
    Account,
    Changes,
    Entry,
    Ledger,
    LedgerError,
    Leg,
    Outcome,
    Posting,
    Transfer,
    TransferState,
)
from strife.bank.schema import MIGRATIONS
from strife.bank.seed import SeedRow
from strife.observability.logging import get_logger
from strife.security.passwords import HASHING_EXECUTOR
from strife.storage.sqlite import (
    CommitLane,
    Database,
    FileIdentity,
    GroupCommitWriter,
    InThread,
    StorageError,
    Synchronous,
    Writes,
    check_writable,
    close_all,
    close_store,
    connect,
    migrate,
    open_lookup,
)

_log = get_logger("strife.bank.store")

_UPSERT_ACCOUNT = (
    "INSERT INTO accounts (account_id, customer_id, currency, balance_minor, held_minor,"
    " pending_credit_minor) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
    " balance_minor = excluded.balance_minor, held_minor = excluded.held_minor,"
    " pending_credit_minor = excluded.pending_credit_minor"
)
# Only PREPARED -> COMMITTED | ABORTED may update a row: the trigger of schema
# migration 5 refuses any other change, and its writer stops.
_UPSERT_TRANSFER = (
    "INSERT INTO transfers (transfer_id, fingerprint, state, coordinator, one_phase,"
    " abort_reason, postings, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (transfer_id) DO UPDATE SET state = excluded.state,"
    " abort_reason = excluded.abort_reason, updated_at_ms = excluded.updated_at_ms"
)
# An entry carries its transfer's arrival number, which UNIQUE(transfer_seq,
# account_id) keys on (schema migration 2). The transfer's row is always
# written earlier in the same batch: `Writes` runs rows in the order they were
# added, and `_record` adds the transfer before its entries. Should it
# ever be missing, NOT NULL stops the writer rather than post unguarded.
_INSERT_ENTRY = (
    "INSERT INTO entries (transfer_seq, transfer_id, account_id, amount_minor, currency,"
    " counterparty, posted_at_ms)"
    " VALUES ((SELECT seq FROM transfers WHERE transfer_id = ?1), ?1, ?2, ?3, ?4, ?5, ?6)"
)
# Its own statement, so that a seed first in a batch cannot put `_INSERT_ENTRY`
# ahead of a later transfer's row.
_INSERT_OPENING = (
    "INSERT INTO entries (transfer_seq, transfer_id, account_id, amount_minor, currency,"
    " counterparty, posted_at_ms) VALUES (0, ?, ?, ?, ?, ?, ?)"
)
_INSERT_AUDIT = (
    "INSERT INTO audit (at_ms, transfer_id, state, coordinator, reason) VALUES (?, ?, ?, ?, ?)"
)
# A withdrawn vote (Ledger.release): the PREPARED row goes, as if never prepared.
_DELETE_PREPARED = "DELETE FROM transfers WHERE transfer_id = ? AND state = 'PREPARED'"
# The same upsert, as a statement of its own: a new account references its
# customer, inserted earlier in the batch, so it must not join the batch's
# first run of account snapshots (`joinable` below), which may come before.
_SEED_ACCOUNT = _UPSERT_ACCOUNT + " -- opening an account"
_INSERT_CUSTOMER = (
    "INSERT INTO customers (customer_id, username, display_name, password_hash)"
    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_TRANSFER_COLUMNS = (
    "transfer_id, fingerprint, state, coordinator, one_phase, abort_reason, postings"
)
_SELECT_PREPARED = f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE state = 'PREPARED'"
_PRELOAD_CHUNK = 500
OPENING_PREFIX = "opening:"
PAGE_TOKEN_SECRET = "page_token_key"
PAGE_TOKEN_KEY_BYTES = 32


@dataclass(frozen=True)
class BankIdentity:
    """Whose database it is: the bank, and the cluster that bank belongs to
    (its CA's fingerprint; "" when unknown, e.g. with --insecure, and then
    neither checked nor recorded)."""

    bank: str
    cluster: str = ""


class DatabaseRefused(StorageError):
    """The database is missing, empty, or another bank's or cluster's."""


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    synchronous: Synchronous = "FULL"
    max_batch: int = 256
    max_queue: int = 8192
    resident_transfers: int = 20_000
    # With an identity the database must already be this bank's, unless
    # `init` allows creating it (missing or empty); without one (a library
    # or test use) any database is opened and created as needed.
    identity: BankIdentity | None = None
    init: bool = False


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    username: str
    display_name: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class HistoryRow:
    seq: int
    transfer_id: str
    amount_minor: int
    currency: str
    counterparty: str
    posted_at_ms: int


def _select_by_ids(count: int) -> str:
    """The finished transfers among `count` ids: one probe each of `transfers_by_id`."""
    marks = ",".join("?" * count)
    return f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE transfer_id IN ({marks})"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _postings_json(postings: Iterable[Posting]) -> str:
    return json.dumps(
        [[p.account_id, str(p.leg), p.amount_minor, p.currency, p.counterparty] for p in postings]
    )


def _transfer_from_row(row: Any) -> Transfer:
    transfer_id, fingerprint, state, coordinator, one_phase, abort_reason, postings = row
    return Transfer(
        transfer_id=transfer_id,
        fingerprint=bytes(fingerprint),
        state=TransferState(state),
        coordinator=coordinator,
        postings=tuple(
            Posting(a, Leg(leg), amt, cur, cp) for a, leg, amt, cur, cp in json.loads(postings)
        ),
        one_phase=bool(one_phase),
        abort_reason=abort_reason,
    )


def _record(
    writes: Writes, changes: Changes, at_ms: int, account_sql: str = _UPSERT_ACCOUNT
) -> None:
    for account in changes.accounts:
        writes.add(
            account_sql,
            (
                account.account_id,
                account.customer_id,
                account.currency,
                account.balance_minor,
                account.held_minor,
                account.pending_credit_minor,
            ),
        )
    for transfer in changes.transfers:
        writes.add(
            _UPSERT_TRANSFER,
            (
                transfer.transfer_id,
                transfer.fingerprint,
                str(transfer.state),
                transfer.coordinator,
                int(transfer.one_phase),
                transfer.abort_reason,
                _postings_json(transfer.postings),
                at_ms,
            ),
        )
        writes.add(
            _INSERT_AUDIT,
            (
                at_ms,
                transfer.transfer_id,
                str(transfer.state),
                transfer.coordinator,
                transfer.abort_reason,
            ),
        )
    for entry in changes.entries:
        writes.add(_INSERT_ENTRY, _entry_row(entry, at_ms))
    for transfer_id in changes.released:
        writes.add(_DELETE_PREPARED, (transfer_id,))
        writes.add(_INSERT_AUDIT, (at_ms, transfer_id, "RELEASED", "", ""))


async def _check_owner(db: Database, config: StoreConfig) -> None:
    """Refuse an empty database without `init`, anything but a bank's
    database, and another bank's or cluster's."""
    assert config.identity is not None
    mine = config.identity
    tables = {row[0] for row in await db.fetch_all("SELECT name FROM sqlite_master")}
    if not tables:
        if not config.init:
            raise DatabaseRefused(
                f"database {config.path} is empty; a bank's database is created only"
                " when asked to (--init): a lost one must be restored"
            )
        return
    if not {"accounts", "schema_version"} <= tables:
        raise DatabaseRefused(f"{config.path} is not a bank's database")
    if "bank_identity" not in tables:
        return  # made before databases knew their bank: it is recorded now
    row = await db.fetch_one("SELECT bank, cluster FROM bank_identity")
    if row is None:
        return
    bank, cluster = row
    if bank != mine.bank:
        raise DatabaseRefused(
            f"database {config.path} belongs to bank {bank!r}, not to {mine.bank!r}"
        )
    if cluster and mine.cluster and cluster != mine.cluster:
        raise DatabaseRefused(
            f"database {config.path} of bank {bank!r} belongs to another cluster"
            f" (CA {cluster}; this process trusts CA {mine.cluster})"
        )


async def _record_owner(db: Database, mine: BankIdentity) -> None:
    row = await db.fetch_one("SELECT cluster FROM bank_identity")
    if row is None:
        await db.execute(
            "INSERT INTO bank_identity (one, bank, cluster, initialised_at_ms) VALUES (1, ?, ?, ?)",
            (mine.bank, mine.cluster, _now_ms()),
        )
        _log.info("database_owner_recorded", bank=mine.bank, cluster=mine.cluster)
    elif not row[0] and mine.cluster:
        await db.execute("UPDATE bank_identity SET cluster = ?", (mine.cluster,))
        _log.info("database_owner_recorded", bank=mine.bank, cluster=mine.cluster)


async def _page_token_key(db: Database) -> bytes:
    """The bank's page-token key: made once (32 random bytes), then always read back."""
    await db.execute(
        "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
        (PAGE_TOKEN_SECRET, os.urandom(PAGE_TOKEN_KEY_BYTES)),
    )
    row = await db.fetch_one("SELECT value FROM secrets WHERE name = ?", (PAGE_TOKEN_SECRET,))
    if row is None or not isinstance(row[0], bytes) or len(row[0]) != PAGE_TOKEN_KEY_BYTES:
        raise StorageError("the bank's page-token key is missing or damaged")
    return row[0]


def read_page_token_key(path: Path) -> bytes:
    """A bank database's page-token key, read-only (for tools: benchmarks, audits)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT value FROM secrets WHERE name = ?", (PAGE_TOKEN_SECRET,)
        ).fetchone()
    if row is None:
        raise StorageError(f"{path} holds no page-token key")
    return bytes(row[0])


def _entry_row(entry: Entry, at_ms: int) -> tuple[Any, ...]:
    return (
        entry.transfer_id,
        entry.account_id,
        entry.amount_minor,
        entry.currency,
        entry.counterparty,
        at_ms,
    )


class BankStore:
    """Open with `await BankStore.open(config)`; every write goes through the writer."""

    def __init__(
        self,
        config: StoreConfig,
        ledger: Ledger,
        write_conn: Database,
        read_conn: Database,
        on_batch: Callable[[int], None] | None,
        lane: CommitLane | None = None,
        page_token_key: bytes = b"",
    ) -> None:
        self.config = config
        self.ledger = ledger
        # Seals this bank's history page tokens (strife.bank.pages).
        self.page_token_key = page_token_key
        self._write_conn = write_conn
        self._read = read_conn
        # Every prepare of a new id asks whether it was evicted: on the loop.
        self._lookup = open_lookup(config.path)
        self._on_batch = on_batch
        self._writer = GroupCommitWriter(
            write_conn,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            expected_errors=(LedgerError,),
            preload=self._preload,
            on_commit=self._after_commit,
            lane=lane,
            # Account snapshots (last wins; no statement reads accounts) and
            # audit lines (append-only) may share one executemany per batch.
            joinable=frozenset({_UPSERT_ACCOUNT, _INSERT_AUDIT}),
        )
        self.writer_task = self._writer.start()
        self._file_identity = FileIdentity.of(config.path)

    @classmethod
    async def open(
        cls,
        config: StoreConfig,
        on_batch: Callable[[int], None] | None = None,
        lane: CommitLane | None = None,
    ) -> BankStore:
        """`lane`: commit on a thread shared with the other banks of this process.

        Raises StorageError (DatabaseRefused) when the database cannot serve:
        refused by its identity, unreadable, or not writable.
        """
        path = config.path
        identity = config.identity
        absent = not path.exists() or path.stat().st_size == 0
        if identity is not None and absent and not config.init:
            raise DatabaseRefused(
                f"no database for bank {identity.bank!r} at {path}; a bank's database is"
                " created only when asked to (--init): a lost one must be restored"
            )
        write_conn = None
        read_conn = None
        try:
            write_conn = await connect(path, synchronous=config.synchronous)
            if identity is not None:
                await _check_owner(write_conn, config)
            await migrate(write_conn, MIGRATIONS)
            if identity is not None:
                await _record_owner(write_conn, identity)
            await check_writable(write_conn, path)
            page_token_key = await _page_token_key(write_conn)
            read_conn = await connect(path, synchronous=config.synchronous)
            ledger = await cls._load(write_conn)
            last = await write_conn.fetch_one("SELECT at_ms FROM audit ORDER BY seq DESC LIMIT 1")
        except BaseException as exc:
            await close_all(read_conn, write_conn)
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"database {path} cannot be used: {exc}") from exc
            raise
        _log.info(
            "store_opened",
            path=str(path),
            accounts=len(ledger.accounts),
            prepared=len(ledger.transfers),
            # When this bank last changed a transfer: after a restore, how
            # far back the database went (docs/bank.md).
            last_change_at_ms=last[0] if last else None,
        )
        return cls(config, ledger, write_conn, read_conn, on_batch, lane, page_token_key)

    @staticmethod
    async def _load(db: Database) -> Ledger:
        """Accounts and PREPARED transfers; the constructor checks they agree."""
        accounts = await db.fetch_all(
            "SELECT account_id, customer_id, currency, balance_minor, held_minor,"
            " pending_credit_minor FROM accounts"
        )
        prepared = await db.fetch_all(_SELECT_PREPARED)
        return Ledger(
            (Account(*row) for row in accounts), (_transfer_from_row(row) for row in prepared)
        )

    async def close(self) -> None:
        """Finish what is queued and close the database; after a writer failure
        just close it."""
        await close_store(self._writer, self._lookup, self._read, self._write_conn)

    @property
    def file_identity(self) -> FileIdentity | None:
        """The database file this store opened (see `watch_file`)."""
        return self._file_identity

    @property
    def queued(self) -> int:
        return self._writer.queued

    @property
    def writer_failure(self) -> BaseException | None:
        return self._writer.failure

    # ------------------------------------------------------------------ writes

    async def _apply(self, transfer_id: str, operation: Callable[[], Outcome]) -> Outcome:
        def work(writes: Writes) -> Outcome:
            outcome = operation()
            _record(writes, outcome.changes, _now_ms())
            return outcome

        result: Outcome = await self._writer.submit(work, key=transfer_id)
        return result

    async def prepare(self, **request: Any) -> Outcome:
        return await self._apply(request["transfer_id"], lambda: self.ledger.prepare(**request))

    async def commit(self, *, transfer_id: str, coordinator: str) -> Outcome:
        return await self._apply(
            transfer_id,
            lambda: self.ledger.commit(transfer_id=transfer_id, coordinator=coordinator),
        )

    async def abort(
        self, *, transfer_id: str, coordinator: str, unless_voted_since: int | None = None
    ) -> Outcome:
        return await self._apply(
            transfer_id,
            lambda: self.ledger.abort(
                transfer_id=transfer_id,
                coordinator=coordinator,
                unless_voted_since=unless_voted_since,
            ),
        )

    async def release(self, *, transfer_id: str, coordinator: str) -> Outcome:
        return await self._apply(
            transfer_id,
            lambda: self.ledger.release(transfer_id=transfer_id, coordinator=coordinator),
        )

    def votes(self, transfer_id: str) -> int:
        """How often a PREPARED id was voted YES again (see `Ledger.abort`)."""
        return self.ledger.votes.get(transfer_id, 0)

    async def process(self, **request: Any) -> Outcome:
        return await self._apply(request["transfer_id"], lambda: self.ledger.process(**request))

    async def seed(self, rows: list[SeedRow], hash_password: Callable[[str], str]) -> int:
        """Open the accounts of `rows` that do not exist yet; returns how many.

        Existing accounts keep their balance: seeding is for a new bank, and
        running it again must never reset money that has moved since.
        """
        new_rows = [row for row in rows if row.account_id not in self.ledger.accounts]
        if not new_rows:
            return 0
        known = {c.username for c in await self._customers({r.username for r in new_rows})}
        loop = asyncio.get_running_loop()
        passwords = {r.username: r.password for r in new_rows if r.username not in known}
        digests = await asyncio.gather(
            *(loop.run_in_executor(HASHING_EXECUTOR, hash_password, p) for p in passwords.values())
        )
        hashes = dict(zip(passwords, digests, strict=True))

        def work(writes: Writes) -> int:
            at_ms = _now_ms()
            opened = 0
            for row in new_rows:  # customers first: accounts reference them
                if row.username in hashes:
                    writes.add(
                        _INSERT_CUSTOMER,
                        (row.customer_id, row.username, row.display_name, hashes[row.username]),
                    )
            for row in new_rows:
                if row.account_id in self.ledger.accounts:
                    continue
                changes = self.ledger.add_account(
                    account_id=row.account_id,
                    customer_id=row.customer_id,
                    currency=row.currency,
                    balance_minor=row.opening_balance_minor,
                )
                _record(writes, changes, at_ms, _SEED_ACCOUNT)
                if row.opening_balance_minor:
                    opening = Entry(
                        OPENING_PREFIX + row.account_id,
                        row.account_id,
                        row.opening_balance_minor,
                        row.currency,
                        "opening balance",
                    )
                    writes.add(_INSERT_OPENING, _entry_row(opening, at_ms))
                opened += 1
            return opened

        opened: int = await self._writer.submit(work)
        return opened

    async def _preload(self, _run: InThread[Any], keys: list[Any]) -> None:
        """Bring back finished transfers the batch names that were evicted.

        The writer is the only writer and runs this between batches, so the
        lookup connection sees every committed transfer.
        """
        missing = sorted({k for k in keys if k and k not in self.ledger.transfers})
        rows: list[Any] = []
        for start in range(0, len(missing), _PRELOAD_CHUNK):
            chunk = missing[start : start + _PRELOAD_CHUNK]
            rows += self._lookup.execute(_select_by_ids(len(chunk)), chunk).fetchall()
        for row in rows:
            self.ledger.readmit(_transfer_from_row(row))

    def _after_commit(self, batch_size: int) -> None:
        transfers = self.ledger.transfers
        excess = len(transfers) - self.config.resident_transfers
        if excess > 0:
            # The oldest finished ones (dicts keep insertion order), and a tenth
            # more, so that eviction runs once per many batches.
            self.ledger.evict(
                [tid for tid, t in transfers.items() if t.state != TransferState.PREPARED][
                    : excess + self.config.resident_transfers // 10
                ]
            )
        if self._on_batch is not None:
            self._on_batch(batch_size)

    # ------------------------------------------------------------------- reads

    async def _customers(self, usernames: set[str]) -> list[Customer]:
        if not usernames:
            return []
        names = sorted(usernames)
        marks = ",".join("?" * len(names))
        rows = await self._read.fetch_all(
            "SELECT customer_id, username, display_name, password_hash FROM customers"
            f" WHERE username IN ({marks})",
            names,
        )
        return [Customer(*row) for row in rows]

    async def customer(self, username: str) -> Customer | None:
        found = await self._customers({username})
        return found[0] if found else None

    def accounts_of(self, customer_id: str) -> list[Account]:
        return sorted(
            (a for a in self.ledger.accounts.values() if a.customer_id == customer_id),
            key=lambda a: a.account_id,
        )

    def account(self, account_id: str) -> Account | None:
        return self.ledger.accounts.get(account_id)

    async def committed_account(self, account_id: str) -> Account | None:
        """The account as last committed to disk (what a restart would see)."""
        row = await self._read.fetch_one(
            "SELECT account_id, customer_id, currency, balance_minor, held_minor,"
            " pending_credit_minor FROM accounts WHERE account_id = ?",
            (account_id,),
        )
        return Account(*row) if row else None

    async def history(
        self, account_id: str, before_seq: int | None, limit: int
    ) -> list[HistoryRow]:
        """Newest first; index-backed, so a page costs the same however long the history."""
        rows = await self._read.fetch_all(
            "SELECT seq, transfer_id, amount_minor, currency, counterparty, posted_at_ms"
            " FROM entries WHERE account_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (account_id, before_seq if before_seq is not None else 2**63 - 1, limit),
        )
        return [HistoryRow(*row) for row in rows]

    def transfer(self, transfer_id: str) -> Transfer | None:
        """A transfer id's record, resident or evicted (one indexed read)."""
        resident = self.ledger.transfers.get(transfer_id)
        if resident is not None:
            return resident
        row = self._lookup.execute(_select_by_ids(1), (transfer_id,)).fetchone()
        return _transfer_from_row(row) if row else None

    def prepared(self) -> list[Transfer]:
        return [t for t in self.ledger.transfers.values() if t.state == TransferState.PREPARED]
