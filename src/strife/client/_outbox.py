"""The outbox: payment intents on disk before the first send, one SQLite file per profile.

Each entry is a persisted state machine (Brandur Leach's recovery points):

    PENDING -> IN_FLIGHT -> COMMITTED | ABORTED | FAILED
                  |  ^
                  v  |   (retryable error, or a transient abort resubmitted
               PENDING    under a new key linked to the same entry)

IN_FLIGHT is written (durably) before a send and left only once its answer is
written, so after a crash an IN_FLIGHT entry means "the gateway may have it":
the drainer asks `GetPayment` before sending again. COMMITTED and ABORTED are
final (a trigger refuses to change them); FAILED may be re-queued by the user
(with the same key, so a retry can never pay twice).

The file holds intents and outcomes only: never a password or token.
Every transaction is short and serialised by one lock (one connection,
shared by `pay` and the drainer), and SQLite's own locking serialises
processes sharing a profile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from strife.client._exceptions import EntryStateError, OutboxFull
from strife.client._models import AccountRef, EntryState, OutboxEntry
from strife.errors import IdempotencyKeyReused
from strife.observability.logging import get_logger
from strife.storage.sqlite import Database, Migration, Synchronous, connect, migrate

_log = get_logger("strife.client.outbox")

# Hard ceilings behind the configurable limits, so a typo cannot make the
# outbox unbounded.
MAX_UNSETTLED_LIMIT = 1_000_000
MAX_LIST_LIMIT = 10_000

_UNSETTLED = (EntryState.PENDING.value, EntryState.IN_FLIGHT.value)
_FINAL = (EntryState.COMMITTED.value, EntryState.ABORTED.value, EntryState.FAILED.value)

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE entries (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            customer_id     TEXT NOT NULL,
            idempotency_key TEXT NOT NULL UNIQUE,
            from_bank       TEXT NOT NULL,
            from_account    TEXT NOT NULL,
            to_bank         TEXT NOT NULL,
            to_account      TEXT NOT NULL,
            amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
            currency        TEXT NOT NULL,
            description     TEXT NOT NULL,
            state           TEXT NOT NULL CHECK (state IN
                                ('PENDING', 'IN_FLIGHT', 'COMMITTED', 'ABORTED', 'FAILED')),
            transfer_id     TEXT NOT NULL DEFAULT '',
            reason          TEXT NOT NULL DEFAULT '',
            last_error      TEXT NOT NULL DEFAULT '',
            sends           INTEGER NOT NULL DEFAULT 0,
            resubmits       INTEGER NOT NULL DEFAULT 0,
            gateway         TEXT NOT NULL DEFAULT '',
            created_at_ms   INTEGER NOT NULL,
            updated_at_ms   INTEGER NOT NULL,
            CHECK (state != 'COMMITTED' OR transfer_id != '')
        );
        CREATE INDEX entries_state ON entries(state, id);
        CREATE TABLE entry_keys (
            idempotency_key TEXT PRIMARY KEY,
            entry_id        INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
            created_at_ms   INTEGER NOT NULL,
            outcome         TEXT NOT NULL DEFAULT '',
            reason          TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX entry_keys_entry ON entry_keys(entry_id);
        -- The database itself refuses to reopen a settled payment.
        CREATE TRIGGER settled_entries_are_final
            BEFORE UPDATE OF state ON entries
            WHEN OLD.state IN ('COMMITTED', 'ABORTED') AND NEW.state != OLD.state
            BEGIN SELECT RAISE(ABORT, 'a committed or aborted entry is final'); END
        """,
    ),
)

_COLUMNS = (
    "id, customer_id, idempotency_key, from_bank, from_account, to_bank, to_account,"
    " amount_minor, currency, description, state, transfer_id, reason, last_error, sends,"
    " resubmits, gateway, created_at_ms, updated_at_ms"
)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Intent:
    """What the customer asked for; equal intents under one key are the same payment."""

    customer_id: str
    from_account: AccountRef
    to_account: AccountRef
    amount_minor: int
    currency: str
    description: str


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change the drainer decided, applied with others in one transaction.

    `expect` is the state the entry must still be in (it guards against a
    concurrent change); `new_key` resubmits the entry under a fresh key.
    """

    entry_id: int
    state: EntryState
    expect: EntryState = EntryState.IN_FLIGHT
    transfer_id: str = ""
    reason: str = ""
    last_error: str = ""
    new_key: str | None = None


_ALLOWED: dict[EntryState, frozenset[EntryState]] = {
    EntryState.PENDING: frozenset(
        {EntryState.IN_FLIGHT, EntryState.FAILED, EntryState.COMMITTED, EntryState.ABORTED}
    ),
    EntryState.IN_FLIGHT: frozenset(
        {EntryState.PENDING, EntryState.COMMITTED, EntryState.ABORTED, EntryState.FAILED}
    ),
    EntryState.FAILED: frozenset({EntryState.PENDING}),
    EntryState.COMMITTED: frozenset(),
    EntryState.ABORTED: frozenset(),
}


class Outbox:
    """The SQLite outbox of one client profile. Open with `await Outbox.open(path)`."""

    def __init__(self, conn: Database, *, max_unsettled: int, max_settled_kept: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.max_unsettled = max_unsettled
        self.max_settled_kept = max_settled_kept
        self._settled_since_prune = 0

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_unsettled: int = 10_000,
        max_settled_kept: int = 10_000,
        synchronous: Synchronous = "FULL",
    ) -> Outbox:
        if not 1 <= max_unsettled <= MAX_UNSETTLED_LIMIT:
            raise ValueError(f"max_unsettled must be within 1..{MAX_UNSETTLED_LIMIT}")
        if max_settled_kept < 0:
            raise ValueError("max_settled_kept must not be negative")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await connect(path, synchronous=synchronous)
        try:
            await migrate(conn, MIGRATIONS)
        except BaseException:
            await conn.close()
            raise
        outbox = cls(conn, max_unsettled=max_unsettled, max_settled_kept=max_settled_kept)
        await outbox.prune()
        return outbox

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Database]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[Database]:
        async with self._lock:
            yield self._conn

    # ----------------------------------------------------------------- writes

    async def add(self, intent: Intent, key: str) -> tuple[OutboxEntry, bool]:
        """Store a new PENDING entry; the second value is False for a known key.

        A key already in the outbox with the same intent returns that entry
        (a retried `pay` is not a second payment); with a different intent it
        is refused as `IdempotencyKeyReused`, as the gateway would.
        """
        async with self._transaction() as conn:
            existing = await self._by_key(conn, key)
            if existing is not None:
                if _intent_of(existing) != intent:
                    raise IdempotencyKeyReused(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "IDEMPOTENCY_KEY_REUSED",
                        f"outbox entry {existing.id} already uses this key for another payment",
                        {"idempotency_key": key},
                    )
                return existing, False
            unsettled = await _scalar(
                conn, "SELECT COUNT(*) FROM entries WHERE state IN (?, ?)", _UNSETTLED
            )
            if unsettled >= self.max_unsettled:
                raise OutboxFull(unsettled, self.max_unsettled)
            at = now_ms()
            cursor = await conn.execute(
                "INSERT INTO entries (customer_id, idempotency_key, from_bank, from_account,"
                " to_bank, to_account, amount_minor, currency, description, state,"
                " created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    intent.customer_id,
                    key,
                    intent.from_account.bank,
                    intent.from_account.account_id,
                    intent.to_account.bank,
                    intent.to_account.account_id,
                    intent.amount_minor,
                    intent.currency,
                    intent.description,
                    EntryState.PENDING.value,
                    at,
                    at,
                ),
            )
            entry_id = cursor.lastrowid
            assert entry_id is not None
            await conn.execute(
                "INSERT INTO entry_keys (idempotency_key, entry_id, created_at_ms)"
                " VALUES (?, ?, ?)",
                (key, entry_id, at),
            )
            entry = await self._get(conn, entry_id)
        assert entry is not None and entry.state == EntryState.PENDING
        return entry, True

    async def mark_in_flight(
        self, entries: Sequence[OutboxEntry], gateway: str
    ) -> list[OutboxEntry]:
        """The recovery point before a send: from here the gateway may have the payment.

        Returns the entries actually marked; one cancelled meanwhile is left out.
        """
        marked: list[OutboxEntry] = []
        if not entries:
            return marked
        async with self._transaction() as conn:
            at = now_ms()
            for entry in entries:
                cursor = await conn.execute(
                    "UPDATE entries SET state = ?, sends = sends + 1, gateway = ?,"
                    " updated_at_ms = ? WHERE id = ? AND state = ?",
                    (EntryState.IN_FLIGHT.value, gateway, at, entry.id, EntryState.PENDING.value),
                )
                if cursor.rowcount == 1:
                    marked.append(entry)
        return marked

    async def apply(self, transitions: Iterable[Transition]) -> list[OutboxEntry]:
        """Apply the transitions in one transaction; returns the entries as now stored.

        A transition whose entry is no longer in `expect` (changed by another
        process) is skipped and logged: the other change wins.
        """
        changed: list[OutboxEntry] = []
        settled = 0
        async with self._transaction() as conn:
            at = now_ms()
            for change in transitions:
                assert change.state in _ALLOWED[change.expect], change
                if change.new_key is not None:
                    assert change.state == EntryState.PENDING, "only a pending entry gets a new key"
                    await self._resubmit(conn, change, at)
                else:
                    cursor = await conn.execute(
                        "UPDATE entries SET state = ?, transfer_id = CASE WHEN ? != '' THEN ?"
                        " ELSE transfer_id END, reason = ?, last_error = ?, updated_at_ms = ?"
                        " WHERE id = ? AND state = ?",
                        (
                            change.state.value,
                            change.transfer_id,
                            change.transfer_id,
                            change.reason,
                            change.last_error,
                            at,
                            change.entry_id,
                            change.expect.value,
                        ),
                    )
                    if cursor.rowcount != 1:
                        _log.error(
                            "transition_skipped",
                            entry_id=change.entry_id,
                            expected=str(change.expect),
                            to=str(change.state),
                        )
                        continue
                    if change.state.settled:
                        settled += 1
                        await conn.execute(
                            "UPDATE entry_keys SET outcome = ?, reason = ? WHERE entry_id = ?"
                            " AND idempotency_key = (SELECT idempotency_key FROM entries"
                            " WHERE id = ?)",
                            (change.state.value, change.reason, change.entry_id, change.entry_id),
                        )
                entry = await self._get(conn, change.entry_id)
                assert entry is not None and entry.state == change.state, (entry, change)
                changed.append(entry)
        self._settled_since_prune += settled
        if self._settled_since_prune >= 256:
            await self.prune()
        return changed

    async def _resubmit(self, conn: Database, change: Transition, at: int) -> None:
        assert change.new_key is not None
        await conn.execute(
            "UPDATE entry_keys SET outcome = ?, reason = ? WHERE idempotency_key ="
            " (SELECT idempotency_key FROM entries WHERE id = ?)",
            (EntryState.ABORTED.value, change.reason, change.entry_id),
        )
        cursor = await conn.execute(
            "UPDATE entries SET state = ?, idempotency_key = ?, transfer_id = '',"
            " resubmits = resubmits + 1, reason = '', last_error = ?, updated_at_ms = ?"
            " WHERE id = ? AND state = ?",
            (
                EntryState.PENDING.value,
                change.new_key,
                change.last_error,
                at,
                change.entry_id,
                change.expect.value,
            ),
        )
        if cursor.rowcount != 1:
            raise EntryStateError(f"entry {change.entry_id} changed while being resubmitted")
        await conn.execute(
            "INSERT INTO entry_keys (idempotency_key, entry_id, created_at_ms) VALUES (?, ?, ?)",
            (change.new_key, change.entry_id, at),
        )

    async def cancel(self, entry_id: int, reason: str) -> OutboxEntry:
        """PENDING -> FAILED: the drainer stops offering it."""
        return await self._move(entry_id, EntryState.PENDING, EntryState.FAILED, reason)

    async def requeue(self, entry_id: int) -> OutboxEntry:
        """FAILED -> PENDING with the same key: safe, the gateway dedupes by key."""
        return await self._move(entry_id, EntryState.FAILED, EntryState.PENDING, "")

    async def _move(
        self, entry_id: int, expect: EntryState, state: EntryState, reason: str
    ) -> OutboxEntry:
        async with self._transaction() as conn:
            entry = await self._get(conn, entry_id)
            if entry is None or entry.state != expect:
                raise EntryStateError(
                    f"entry {entry_id} is {entry.state if entry else 'missing'}, not {expect}"
                )
            await conn.execute(
                "UPDATE entries SET state = ?, reason = ?, updated_at_ms = ?"
                " WHERE id = ? AND state = ?",
                (state.value, reason, now_ms(), entry_id, expect.value),
            )
            moved = await self._get(conn, entry_id)
        assert moved is not None and moved.state == state
        return moved

    async def prune(self) -> int:
        """Forget the oldest settled entries beyond `max_settled_kept` (the file stays bounded)."""
        self._settled_since_prune = 0
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "DELETE FROM entries WHERE id IN (SELECT id FROM entries WHERE state IN (?, ?, ?)"
                " ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (*_FINAL, self.max_settled_kept),
            )
            return max(cursor.rowcount, 0)

    # ------------------------------------------------------------------ reads

    async def get(self, entry_id: int) -> OutboxEntry | None:
        async with self._reading() as conn:
            return await self._get(conn, entry_id)

    async def find(self, key_or_id: str) -> OutboxEntry | None:
        """By any idempotency key the entry ever used, or by its numeric id."""
        async with self._reading() as conn:
            entry = await self._by_key(conn, key_or_id)
            if entry is None and key_or_id.isdigit():
                entry = await self._get(conn, int(key_or_id))
            return entry

    async def entries(
        self,
        states: Iterable[EntryState] | None = None,
        *,
        limit: int = 100,
        customer_id: str | None = None,
        after_id: int = 0,
    ) -> list[OutboxEntry]:
        """Entries in creation order, optionally filtered; at most `limit` of them."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be within 1..{MAX_LIST_LIMIT}")
        where: list[str] = ["id > ?"]
        args: list[object] = [after_id]
        wanted = [s.value for s in states] if states is not None else None
        if wanted is not None:
            if not wanted:
                return []
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            args += wanted
        if customer_id is not None:
            where.append("customer_id = ?")
            args.append(customer_id)
        sql = f"SELECT {_COLUMNS} FROM entries WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        async with self._reading() as conn:
            rows = await conn.fetch_all(sql, (*args, limit))
            return await self._entries(conn, rows)

    async def unsettled(self, customer_id: str | None = None) -> int:
        """How many entries are PENDING or IN_FLIGHT (for one customer, or all)."""
        sql, args = "SELECT COUNT(*) FROM entries WHERE state IN (?, ?)", [*_UNSETTLED]
        if customer_id is not None:
            sql += " AND customer_id = ?"
            args.append(customer_id)
        async with self._reading() as conn:
            return await _scalar(conn, sql, args)

    async def counts(self) -> dict[EntryState, int]:
        sql = "SELECT state, COUNT(*) FROM entries GROUP BY state"
        async with self._reading() as conn:
            rows = await conn.fetch_all(sql)
        found = {EntryState(str(state)): int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in EntryState}

    async def _get(self, conn: Database, entry_id: int) -> OutboxEntry | None:
        row = await conn.fetch_one(f"SELECT {_COLUMNS} FROM entries WHERE id = ?", (entry_id,))
        return None if row is None else (await self._entries(conn, [row]))[0]

    async def _by_key(self, conn: Database, key: str) -> OutboxEntry | None:
        row = await conn.fetch_one(
            "SELECT entry_id FROM entry_keys WHERE idempotency_key = ?", (key,)
        )
        return None if row is None else await self._get(conn, int(row[0]))

    async def _entries(self, conn: Database, rows: Sequence[Any]) -> list[OutboxEntry]:
        resubmitted = [int(row[0]) for row in rows if int(row[15]) > 0]
        keys: dict[int, list[str]] = {}
        if resubmitted:
            marks = ", ".join("?" * len(resubmitted))
            for entry_id, key in await conn.fetch_all(
                f"SELECT entry_id, idempotency_key FROM entry_keys WHERE entry_id IN ({marks})"
                " ORDER BY rowid",
                resubmitted,
            ):
                keys.setdefault(int(entry_id), []).append(str(key))
        return [_entry(row, keys.get(int(row[0]))) for row in rows]


async def _scalar(conn: Database, sql: str, args: Sequence[Any]) -> int:
    row = await conn.fetch_one(sql, args)
    return int(row[0]) if row is not None and row[0] is not None else 0


def _entry(row: Any, keys: list[str] | None) -> OutboxEntry:
    key = str(row[2])
    return OutboxEntry(
        id=int(row[0]),
        customer_id=str(row[1]),
        idempotency_key=key,
        keys=tuple(keys) if keys else (key,),
        from_account=AccountRef(str(row[3]), str(row[4])),
        to_account=AccountRef(str(row[5]), str(row[6])),
        amount_minor=int(row[7]),
        currency=str(row[8]),
        description=str(row[9]),
        state=EntryState(str(row[10])),
        transfer_id=str(row[11]),
        reason=str(row[12]),
        last_error=str(row[13]),
        sends=int(row[14]),
        resubmits=int(row[15]),
        gateway=str(row[16]),
        created_at_unix_ms=int(row[17]),
        updated_at_unix_ms=int(row[18]),
    )


def _intent_of(entry: OutboxEntry) -> Intent:
    return Intent(
        customer_id=entry.customer_id,
        from_account=entry.from_account,
        to_account=entry.to_account,
        amount_minor=entry.amount_minor,
        currency=entry.currency,
        description=entry.description,
    )
