"""Group commit applies a batch's statements in the order they were issued.

The gateway's one-phase payment writes its record (INSERT ... PENDING) and, a
bank round trip later, its decision (UPDATE ... WHERE state = 'PENDING'). When
both land in one batch behind another payment's decision, running the batch
grouped by statement kind would run the UPDATE before the INSERT it needs:
the decision is lost and the replica later reports PENDING for a payment it
answered COMMITTED.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from strife.storage.sqlite import GroupCommitWriter, Writes, connect

CREATE = "CREATE TABLE payments (id TEXT PRIMARY KEY, state TEXT NOT NULL)"
INSERT = "INSERT INTO payments (id, state) VALUES (?, 'PENDING') ON CONFLICT DO NOTHING"
DECIDE = "UPDATE payments SET state = ? WHERE id = ? AND state = 'PENDING'"
DELETE = "DELETE FROM payments WHERE id = ?"
UPSERT = (
    "INSERT INTO payments (id, state) VALUES (?, ?)"
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state"
)


def table(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT id, state FROM payments ORDER BY id").fetchall())


def memory() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(CREATE)
    conn.execute("INSERT INTO payments VALUES ('earlier', 'PENDING')")
    return conn


def test_an_update_issued_after_its_insert_finds_the_row() -> None:
    writes = Writes()
    writes.add(DECIDE, ("COMMITTED", "earlier"))  # another payment's decision comes first
    writes.add(INSERT, ("one-phase",))
    writes.add(DECIDE, ("COMMITTED", "one-phase"))
    conn = memory()
    writes.execute_sync(conn)
    assert table(conn) == {"earlier": "COMMITTED", "one-phase": "COMMITTED"}
    assert len(writes) == 3


def test_works_merged_into_a_batch_keep_their_order() -> None:
    first, second, third = Writes(), Writes(), Writes()
    first.add(DECIDE, ("ABORTED", "earlier"))
    second.add(INSERT, ("p",))
    third.add(DECIDE, ("COMMITTED", "p"))
    third.add(DELETE, ("earlier",))
    third.add(INSERT, ("earlier",))
    batch = Writes()
    for work in (first, second, third):
        batch.extend(work)
    conn = memory()
    batch.execute_sync(conn)
    assert table(conn) == {"earlier": "PENDING", "p": "COMMITTED"}


def test_a_later_snapshot_of_a_row_still_wins() -> None:
    writes = Writes()
    for state in ("PENDING", "COMMITTED", "ABORTED"):
        writes.add(UPSERT, ("r", state))
    conn = memory()
    writes.execute_sync(conn)
    assert table(conn)["r"] == "ABORTED"


async def test_the_writer_applies_one_batch_in_the_order_it_was_queued(tmp_path: Path) -> None:
    conn = await connect(tmp_path / "order.db", synchronous="FULL")
    await conn.execute(CREATE)
    await conn.execute("INSERT INTO payments VALUES ('earlier', 'PENDING')")
    batches: list[int] = []
    writer = GroupCommitWriter(conn, on_commit=batches.append)
    writer.start()
    try:
        # Queued in one loop turn, so they are one batch.
        futures = [
            writer.enqueue(lambda w: w.add(DECIDE, ("COMMITTED", "earlier"))),
            writer.enqueue(lambda w: w.add(INSERT, ("one-phase",))),
            writer.enqueue(lambda w: w.add(DECIDE, ("COMMITTED", "one-phase"))),
        ]
        await asyncio.gather(*futures)
        assert batches == [3]
        found = await conn.fetch_all("SELECT id, state FROM payments ORDER BY id")
        rows = {str(row[0]): str(row[1]) for row in found}
        assert rows == {"earlier": "COMMITTED", "one-phase": "COMMITTED"}
    finally:
        await writer.close()
        await conn.close()


def test_joinable_rows_share_their_statements_first_run_and_keep_their_order() -> None:
    """An audit line may run with the batch's first audit lines; the payment
    statements around it keep their issue order."""
    conn = memory()
    conn.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY, what TEXT NOT NULL)")
    audit = "INSERT INTO audit (what) VALUES (?)"
    writes = Writes(frozenset({audit}))
    writes.add(INSERT, ("a",))
    writes.add(audit, ("a inserted",))
    writes.add(DECIDE, ("COMMITTED", "earlier"))
    writes.add(INSERT, ("b",))
    writes.add(audit, ("b inserted",))
    writes.add(DECIDE, ("COMMITTED", "b"))
    writes.add(audit, ("b decided",))
    assert [sql for sql, _ in writes._runs] == [INSERT, audit, DECIDE, INSERT, DECIDE]
    conn.execute("BEGIN")
    writes.execute_sync(conn)
    conn.execute("COMMIT")
    assert table(conn) == {"a": "PENDING", "b": "COMMITTED", "earlier": "COMMITTED"}
    lines = [w for (w,) in conn.execute("SELECT what FROM audit ORDER BY seq")]
    assert lines == ["a inserted", "b inserted", "b decided"]
