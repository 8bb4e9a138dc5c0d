"""The gateway's durable state: idempotency records that double as the 2PC decision log.

One row per (customer, idempotency key). Its `state` is the coordinator's
log: PENDING (no decision: presumed abort), COMMITTED (the COMMIT decision,
force-written before any bank hears it) or ABORTED. `settled` turns 1 once
every bank acknowledged the decision. The stored row is also the response a
retry of the same key gets back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from strife.storage.sqlite import (
    Database,
    FileIdentity,
    GroupCommitWriter,
    Migration,
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


class PaymentState(StrEnum):
    PENDING = "PENDING"
    COMMITTED = "COMMITTED"
    ABORTED = "ABORTED"


_COLUMNS_V1 = (
    "customer_id, idempotency_key, transfer_id, fingerprint, state, from_bank, from_account,"
    " to_bank, to_account, amount_minor, currency, description, abort_reason, abort_transient,"
    " settled, created_at_ms, updated_at_ms"
)

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE payments (
            customer_id     TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            transfer_id     TEXT NOT NULL UNIQUE,
            fingerprint     BLOB NOT NULL,
            state           TEXT NOT NULL CHECK (state IN ('PENDING', 'COMMITTED', 'ABORTED')),
            from_bank       TEXT NOT NULL,
            from_account    TEXT NOT NULL,
            to_bank         TEXT NOT NULL,
            to_account      TEXT NOT NULL,
            amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
            currency        TEXT NOT NULL,
            description     TEXT NOT NULL,
            abort_reason    TEXT NOT NULL,
            abort_transient INTEGER NOT NULL,
            settled         INTEGER NOT NULL,
            created_at_ms   INTEGER NOT NULL,
            updated_at_ms   INTEGER NOT NULL,
            PRIMARY KEY (customer_id, idempotency_key)
        ) WITHOUT ROWID;
        CREATE INDEX payments_unsettled ON payments(state) WHERE settled = 0;
        CREATE INDEX payments_created ON payments(created_at_ms);
        CREATE TABLE audit (
            seq          INTEGER PRIMARY KEY,
            at_ms        INTEGER NOT NULL,
            transfer_id  TEXT NOT NULL,
            customer_id  TEXT NOT NULL,
            state        TEXT NOT NULL,
            reason       TEXT NOT NULL
        )
        """,
    ),
    # Rows in arrival order, keyed by transfer id alone. Version 1 kept whole
    # rows in a B-tree ordered by (customer, random key) plus a second random
    # index on transfer_id: every insert and every decision dirtied random
    # pages of both, and throughput fell by a third over 240,000 payments.
    # The transfer id is uuid5(customer, key), so it is unique exactly when
    # the pair is; one random index of short keys is left.
    Migration(
        2,
        f"""
        CREATE TABLE payments_by_arrival (
            transfer_id     TEXT NOT NULL PRIMARY KEY,
            customer_id     TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint     BLOB NOT NULL,
            state           TEXT NOT NULL CHECK (state IN ('PENDING', 'COMMITTED', 'ABORTED')),
            from_bank       TEXT NOT NULL,
            from_account    TEXT NOT NULL,
            to_bank         TEXT NOT NULL,
            to_account      TEXT NOT NULL,
            amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
            currency        TEXT NOT NULL,
            description     TEXT NOT NULL,
            abort_reason    TEXT NOT NULL,
            abort_transient INTEGER NOT NULL,
            settled         INTEGER NOT NULL,
            created_at_ms   INTEGER NOT NULL,
            updated_at_ms   INTEGER NOT NULL
        );
        INSERT INTO payments_by_arrival ({_COLUMNS_V1})
            SELECT {_COLUMNS_V1} FROM payments ORDER BY created_at_ms;
        DROP TABLE payments;
        ALTER TABLE payments_by_arrival RENAME TO payments;
        CREATE INDEX payments_unsettled ON payments(state) WHERE settled = 0;
        CREATE INDEX payments_created ON payments(created_at_ms);
        """,
    ),
)

_COLUMNS = (
    "customer_id, idempotency_key, transfer_id, fingerprint, state, from_bank, from_account,"
    " to_bank, to_account, amount_minor, currency, description, abort_reason, abort_transient,"
    " settled, created_at_ms, updated_at_ms"
)
_INSERT = (
    f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_DECIDE = (
    "UPDATE payments SET state = ?, abort_reason = ?, abort_transient = ?, settled = ?,"
    " updated_at_ms = ? WHERE transfer_id = ? AND state = 'PENDING'"
)
_SETTLE = "UPDATE payments SET settled = 1, updated_at_ms = ? WHERE transfer_id = ?"
_FORGET = "DELETE FROM payments WHERE transfer_id = ? AND state = 'PENDING'"
_AUDIT = "INSERT INTO audit (at_ms, transfer_id, customer_id, state, reason) VALUES (?, ?, ?, ?, ?)"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    customer_id: str
    idempotency_key: str
    transfer_id: str
    fingerprint: bytes
    state: PaymentState
    from_bank: str
    from_account: str
    to_bank: str
    to_account: str
    amount_minor: int
    currency: str
    description: str
    abort_reason: str = ""
    abort_transient: bool = False
    settled: bool = False
    created_at_ms: int = 0
    updated_at_ms: int = 0

    @property
    def one_phase(self) -> bool:
        return self.from_bank == self.to_bank

    def decided(
        self, state: PaymentState, reason: str = "", transient: bool = False
    ) -> PaymentRecord:
        return replace(self, state=state, abort_reason=reason, abort_transient=transient)


def _from_row(row: Any) -> PaymentRecord:
    values = list(row)
    values[3] = bytes(values[3])
    values[4] = PaymentState(values[4])
    values[13] = bool(values[13])
    values[14] = bool(values[14])
    return PaymentRecord(*values)


class GatewayStore:
    def __init__(
        self,
        write_conn: Database,
        read_conn: Database,
        lookup: sqlite3.Connection,
        *,
        max_batch: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._write_conn = write_conn
        self._read = read_conn
        self._lookup = lookup
        self._writer = GroupCommitWriter(
            write_conn, max_batch=max_batch, on_commit=on_batch, joinable=frozenset({_AUDIT})
        )
        self.writer_task = self._writer.start()
        # The database file opened (see `strife.storage.sqlite.watch_file`).
        self.file_identity: FileIdentity | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: Synchronous = "FULL",
        max_batch: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> GatewayStore:
        """Raises StorageError when the database is unreadable or cannot be written."""
        write_conn = None
        read_conn = None
        try:
            write_conn = await connect(path, synchronous=synchronous)
            await migrate(write_conn, MIGRATIONS)
            await check_writable(write_conn, path)
            read_conn = await connect(path, synchronous=synchronous)
        except BaseException as exc:
            await close_all(read_conn, write_conn)
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"database {path} cannot be used: {exc}") from exc
            raise
        store = cls(
            write_conn, read_conn, open_lookup(path), max_batch=max_batch, on_batch=on_batch
        )
        store.file_identity = FileIdentity.of(path)
        return store

    @property
    def writer_failure(self) -> BaseException | None:
        return self._writer.failure

    async def close(self) -> None:
        """Finish what is queued and close the database; after a writer failure
        just close it."""
        await close_store(self._writer, self._lookup, self._read, self._write_conn)

    # ------------------------------------------------------------------ writes

    async def _write(self, fill: Callable[[Writes, int], None]) -> None:
        def work(writes: Writes) -> None:
            fill(writes, now_ms())

        await self._writer.submit(work)

    def insert_pending(self, record: PaymentRecord) -> asyncio.Future[Any]:
        """Queue the recovery point: the payment exists, undecided.

        Returns the commit's future instead of waiting for it, so the caller
        can overlap the fsync with the prepares. Losing the record in a crash
        before it commits is harmless: presumed abort needs no record of an
        undecided transfer (a bank that asks gets ABORT, a retry starts afresh).
        """
        assert record.state == PaymentState.PENDING

        def work(writes: Writes) -> None:
            at_ms = now_ms()
            row = replace(record, created_at_ms=at_ms, updated_at_ms=at_ms)
            writes.add(_INSERT, _row(row))
            writes.add(_AUDIT, (at_ms, record.transfer_id, record.customer_id, "PENDING", ""))

        future = self._writer.enqueue(work)
        future.add_done_callback(_ignore_result)
        return future

    async def decide(self, record: PaymentRecord, *, settled: bool = False) -> None:
        """Log the decision (COMMIT is the commit point); durable when this returns."""
        assert record.state != PaymentState.PENDING

        def fill(writes: Writes, at_ms: int) -> None:
            writes.add(
                _DECIDE,
                (
                    str(record.state),
                    record.abort_reason,
                    int(record.abort_transient),
                    int(settled),
                    at_ms,
                    record.transfer_id,
                ),
            )
            writes.add(
                _AUDIT,
                (
                    at_ms,
                    record.transfer_id,
                    record.customer_id,
                    str(record.state),
                    record.abort_reason,
                ),
            )

        await self._write(fill)

    async def settle(self, transfer_id: str) -> None:
        await self._write(lambda writes, at_ms: writes.add(_SETTLE, (at_ms, transfer_id)))

    async def forget(self, transfer_id: str) -> None:
        """Drop an undecided record whose transfer another coordinator owns."""
        await self._write(lambda writes, _at: writes.add(_FORGET, (transfer_id,)))

    async def sweep(self, older_than_ms: int) -> int:
        """Delete settled records past the retention window; the banks keep the ids."""
        row = await self._read.fetch_one(
            "SELECT COUNT(*) FROM payments WHERE settled = 1 AND created_at_ms < ?",
            (older_than_ms,),
        )
        count = int(row[0]) if row else 0
        if count:
            await self._write(
                lambda writes, _at: writes.add(
                    "DELETE FROM payments WHERE settled = 1 AND created_at_ms < ?",
                    (older_than_ms,),
                )
            )
        return count

    # ------------------------------------------------------------------- reads

    def by_transfer(self, transfer_id: str) -> PaymentRecord | None:
        """The payment of this transfer id, i.e. of its (customer, idempotency key),
        as last committed. An indexed read on the loop, without yielding: a caller
        can act on it before any other task runs (see the coordinator's takeovers)."""
        row = self._lookup.execute(
            f"SELECT {_COLUMNS} FROM payments WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
        return _from_row(row) if row else None

    async def unsettled(self, limit: int = 1000) -> list[PaymentRecord]:
        rows = await self._read.fetch_all(
            f"SELECT {_COLUMNS} FROM payments WHERE settled = 0 ORDER BY created_at_ms LIMIT ?",
            (limit,),
        )
        return [_from_row(row) for row in rows]


def _ignore_result(future: asyncio.Future[Any]) -> None:
    """A queued write nobody awaits: retrieve its outcome so asyncio does not warn.

    A failed commit stops the writer (fail-stop), which the process watches.
    """
    if not future.cancelled():
        future.exception()


def _row(record: PaymentRecord) -> tuple[Any, ...]:
    return (
        record.customer_id,
        record.idempotency_key,
        record.transfer_id,
        record.fingerprint,
        str(record.state),
        record.from_bank,
        record.from_account,
        record.to_bank,
        record.to_account,
        record.amount_minor,
        record.currency,
        record.description,
        record.abort_reason,
        int(record.abort_transient),
        int(record.settled),
        record.created_at_ms,
        record.updated_at_ms,
    )
