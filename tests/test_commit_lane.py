"""Several databases' group commits on one shared thread (CommitLane)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from strife.storage import sqlite as storage
from strife.storage.sqlite import CommitLane, Database, GroupCommitWriter, Writes, connect

INSERT = "INSERT INTO t (v) VALUES (?)"


async def _database(path: Path) -> tuple[Database, sqlite3.Connection]:
    conn = await connect(path)
    await conn.execute("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")
    return conn, sqlite3.connect(path)


def insert(value: int) -> Callable[[Writes], int]:
    def work(writes: Writes) -> int:
        writes.add(INSERT, (value,))
        return value

    return work


def _rows(reader: sqlite3.Connection) -> list[int]:
    return [v for (v,) in reader.execute("SELECT v FROM t ORDER BY v")]


async def test_writers_of_one_turn_commit_in_one_hop_each_in_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[tuple[str, int]] = []
    real = storage._write_batches

    def counted(jobs: list[tuple[sqlite3.Connection, Writes]]) -> list[BaseException | None]:
        hops.append((threading.current_thread().name, len(jobs)))
        return real(jobs)

    monkeypatch.setattr(storage, "_write_batches", counted)
    lane = CommitLane()
    opened = [await _database(tmp_path / f"bank-{n}.db") for n in range(3)]
    writers = [GroupCommitWriter(conn, lane=lane) for conn, _ in opened]
    tasks = [writer.start() for writer in writers]
    try:
        results = await asyncio.gather(*(w.submit(insert(n)) for n, w in enumerate(writers)))
        assert results == [0, 1, 2]
        assert hops == [(hops[0][0], 3)]  # three databases, one trip to the lane's thread
        assert hops[0][0].startswith("sqlite-commit")
        assert [_rows(reader) for _, reader in opened] == [[0], [1], [2]]

        # A storage failure at one database stops that writer only.
        failed: list[BaseException | int] = await asyncio.gather(
            writers[0].submit(insert(0)),  # violates UNIQUE: the COMMIT's batch fails
            writers[1].submit(insert(10)),
            return_exceptions=True,
        )
        assert isinstance(failed[0], storage.WriterFailedError)
        assert "UNIQUE" in str(failed[0])
        assert failed[1] == 10
        assert tasks[0].done() and not tasks[1].done()
        assert isinstance(tasks[0].exception(), sqlite3.IntegrityError)  # the writer stopped
        assert [_rows(reader) for _, reader in opened] == [[0], [1, 10], [2]]
    finally:
        for writer, task in zip(writers, tasks, strict=True):
            if not task.done():
                await writer.close()
        for conn, reader in opened:
            await conn.close()
            reader.close()
        lane.close()
