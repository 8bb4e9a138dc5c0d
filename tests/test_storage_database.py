"""The database thread: calls run in order and to their end; closing ends the thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from strife.storage.sqlite import StorageError, connect


async def test_a_call_runs_even_if_its_caller_is_cancelled_before_it_starts(
    tmp_path: Path,
) -> None:
    """A COMMIT or ROLLBACK whose caller is cancelled must still run, or the
    connection would stay inside a transaction nobody finishes."""
    db = await connect(tmp_path / "t.db")
    release = threading.Event()
    try:
        await db.execute("CREATE TABLE t (v INTEGER NOT NULL)")
        await db.execute("BEGIN IMMEDIATE")
        await db.execute("INSERT INTO t VALUES (1)")

        def busy(_raw: sqlite3.Connection) -> None:
            release.wait(10)

        ahead = asyncio.ensure_future(db.run(busy))
        commit = asyncio.ensure_future(db.execute("COMMIT"))
        await asyncio.sleep(0.05)  # both queued; the COMMIT has not started
        commit.cancel()
        await asyncio.sleep(0.05)  # the cancellation has reached everything it can
        release.set()
        await ahead
        with pytest.raises(asyncio.CancelledError):
            await commit
        assert await db.run(lambda raw: raw.in_transaction) is False
    finally:
        release.set()
        await db.close()
    with sqlite3.connect(tmp_path / "t.db") as reader:
        assert reader.execute("SELECT v FROM t").fetchall() == [(1,)]


async def test_closing_ends_the_thread_once_and_a_closed_database_refuses_calls(
    tmp_path: Path,
) -> None:
    before = set(threading.enumerate())
    db = await connect(tmp_path / "t.db")
    (thread,) = set(threading.enumerate()) - before
    assert not thread.daemon  # like any connection: it ends when closed
    await db.close()
    await db.close()
    thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(StorageError, match="closed"):
        await db.fetch_one("SELECT 1")
