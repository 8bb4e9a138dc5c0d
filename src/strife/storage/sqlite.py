"""The one way Strife opens SQLite: pragmas, migrations, one writer with group commit.

Durability costs an fsync per commit. One writer task owns the write
connection and commits many requests' work in one transaction, so an fsync is
shared by a whole batch; nobody is answered before the batch is on disk.
Sharing a connection between concurrent requests without this would let one
request's COMMIT or ROLLBACK take another's half-done work with it.

Each connection is plain `sqlite3` on a thread of its own (`Database`): the
group commit hands that thread a whole batch (BEGIN, one `executemany` per
statement, COMMIT) as one call, which a per-statement async wrapper such as
aiosqlite has no public way to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Literal, NamedTuple, TypeVar

from prometheus_client import Histogram

from strife.observability.logging import get_logger
from strife.observability.metrics import REGISTRY as METRICS

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
T = TypeVar("T")

_log = get_logger("strife.storage")

# With synchronous=FULL a WAL commit is the append of its frames plus one
# fsync, so the COMMIT's own time is what durability costs each batch.
COMMIT_SECONDS = Histogram(
    "strife_storage_commit_seconds",
    "Time of each group commit's COMMIT: the WAL write and its fsync",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=METRICS,
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    sql: str

    def apply(self, raw: sqlite3.Connection) -> None:
        """Run this migration in a transaction of its own."""
        raw.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(self.sql):
                raw.execute(statement)
            raw.execute("INSERT INTO schema_version VALUES (?)", (self.version,))
            raw.execute("COMMIT")
        except BaseException:
            raw.execute("ROLLBACK")
            raise


class Executed(NamedTuple):
    """What a write statement did: rows changed, and the last row id inserted."""

    rowcount: int
    lastrowid: int | None


class Database:
    """A `sqlite3` connection and the one thread that runs its statements.

    Open with `await connect(path)`. Everything goes through `run` (or the
    helpers built on it), one call per hop to the thread, so a batch of
    statements costs one hop. A call once made runs to its end even if its
    caller is cancelled meanwhile, as with aiosqlite: a COMMIT or ROLLBACK is
    never dropped halfway through a transaction. The connection does not check
    which thread uses it, because a `CommitLane` runs a writer's commits on
    the lane's thread instead (only while that writer awaits them, so never
    two at once). The thread is not a daemon: it ends when the database is
    closed.
    """

    def __init__(self, raw: sqlite3.Connection, thread: _Thread) -> None:
        self.raw = raw
        self._thread = thread

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the database's thread."""
        raw = self.raw
        return await self._thread.call(lambda: fn(raw))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Executed:
        def execute(raw: sqlite3.Connection) -> Executed:
            cursor = raw.execute(sql, params)
            return Executed(cursor.rowcount, cursor.lastrowid)

        return await self.run(execute)

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of a query, in one hop."""
        return await self.run(lambda raw: raw.execute(sql, params).fetchall())

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row of a query (or None), in one hop."""
        return await self.run(lambda raw: raw.execute(sql, params).fetchone())

    async def close(self) -> None:
        """Close the connection on its thread, then end the thread (once)."""
        if self._thread.stopped:
            return
        try:
            await self.run(lambda raw: raw.close())
        finally:
            self._thread.stop()


class _Thread:
    """One thread running calls in order, each answered on its caller's loop.

    Unlike a one-thread executor's, a call once queued always runs (cancelling
    its caller does not withdraw it), and costs only a queue put and one
    `call_soon_threadsafe` back.
    """

    def __init__(self) -> None:
        self._calls: SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            SimpleQueue()
        )
        self.stopped = False
        self._thread = threading.Thread(target=self._serve, name="sqlite")
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self.stopped:
            raise StorageError("database is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((fn, future))
        return future

    def stop(self) -> None:
        """End the thread once the calls made so far have run."""
        if not self.stopped:
            self.stopped = True
            self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future = call
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller, like a result
                _answer(future, _set_exception, exc)
            else:
                _answer(future, _set_result, result)


def _answer(
    future: asyncio.Future[T], settle: Callable[[asyncio.Future[T], Any], None], value: Any
) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        future.get_loop().call_soon_threadsafe(settle, future, value)


def _set_result(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # a caller cancelled meanwhile
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _open(path: str | Path, synchronous: Synchronous) -> sqlite3.Connection:
    raw = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute(f"PRAGMA synchronous={synchronous}")
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        raw.close()  # a file that is not a database fails here
        raise
    return raw


async def connect(path: str | Path, *, synchronous: Synchronous = "FULL") -> Database:
    """Open a connection in WAL mode with an explicit `synchronous` level."""
    thread = _Thread()
    try:
        raw = await thread.call(lambda: _open(path, synchronous))
    except BaseException:
        thread.stop()
        raise
    return Database(raw, thread)


async def close_quietly(db: Database, timeout_s: float = 10.0) -> None:
    """Close `db` and end its thread, whatever state the database is in."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(db.close(), timeout_s)


async def close_all(*dbs: Database | None) -> None:
    """Close every database given (None: never opened), e.g. after a failed open."""
    for db in dbs:
        if db is not None:
            await close_quietly(db)


class StorageError(Exception):
    """A database cannot be used as it is: unreadable, not writable, refused."""


async def check_writable(db: Database, path: str | Path) -> None:
    """Commit a one-page write, so that a database that cannot take writes
    fails at start, before its server says it is healthy.

    SQLite opens a file it may not write (an immutable file, a read-only
    mount) read-only without a word, and a full disk shows only on the next
    commit. The write counts the opens in the header's `user_version`.
    """

    def probe(raw: sqlite3.Connection) -> None:
        raw.execute("BEGIN IMMEDIATE")
        try:
            (opens,) = raw.execute("PRAGMA user_version").fetchone()
            raw.execute(f"PRAGMA user_version = {(int(opens) + 1) % 2**31}")
            raw.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                raw.execute("ROLLBACK")
            raise

    try:
        await db.run(probe)
    except sqlite3.Error as exc:
        raise StorageError(f"database {path} cannot be written: {exc}") from exc


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a path names: a file deleted, or replaced by a copy or a
    restore, is another file (or none) under the same name."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: str | Path) -> FileIdentity | None:
        try:
            found = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(found.st_dev, found.st_ino)


async def watch_file(path: str | Path, identity: FileIdentity, interval_s: float = 1.0) -> str:
    """Return, saying what happened, once `path` no longer names the file
    `identity` was taken from.

    A process whose database was deleted or replaced under it keeps writing
    to the old file, which nobody will ever open again: everything it
    acknowledges from then on is lost at its next restart.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            now = FileIdentity.of(path)
        except OSError as exc:
            return f"database {path} cannot be checked: {exc}"
        if now is None:
            return f"database {path} was deleted"
        if now != identity:
            return f"database {path} was replaced by another file"


def open_lookup(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for point lookups run on the event loop itself.

    An indexed single-row read takes microseconds; a hop to a database
    thread and back takes more than that in wake-ups alone. Scans and
    anything that can touch many pages belong on a reader `Database`.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=1")
    return conn


async def migrate(db: Database, migrations: Sequence[Migration]) -> int:
    """Apply the migrations newer than the database, each in its own transaction."""
    versions = [m.version for m in migrations]
    assert versions == sorted(set(versions)), "migrations must be ordered and unique"
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = await db.fetch_one("SELECT MAX(version) FROM schema_version")
    current = int(row[0]) if row and row[0] is not None else 0
    for migration in migrations:
        if migration.version <= current:
            continue
        await db.run(migration.apply)
        _log.info("migrated", version=migration.version)
        current = migration.version
    return current


def _statements(sql: str) -> list[str]:
    """Split a script into complete statements (a trigger body keeps its semicolons)."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return [s for s in statements if s.strip(" ;\n")]


class QueueFullError(Exception):
    """The writer's queue is at its bound: shed load instead of queueing forever."""


class WriterFailedError(Exception):
    """The writer hit a storage error; the process must stop and recover from disk."""


class Writes:
    """Rows one batch will write, in the order they were added.

    Consecutive rows of the same statement travel in one `executemany`; a
    statement never runs ahead of one added before it. A payment's decision
    (`UPDATE ... WHERE state = 'PENDING'`) added after its `INSERT` must find
    the row, even when an earlier payment of the batch put the same UPDATE
    first: grouping by statement kind across the batch would run it too early.

    `joinable` statements are exempt: each of their rows joins the first run
    of its statement in the batch. That is only for a statement whose table no
    other statement of the batch reads or writes, and whose rows keep their
    order among themselves (an append-only audit line, a whole-row snapshot
    upsert where the last one wins): moving such a row earlier changes nothing
    any other statement sees, and saves an `executemany` per row.
    """

    def __init__(self, joinable: frozenset[str] = frozenset()) -> None:
        self._joinable = joinable
        self._runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._first: dict[str, list[tuple[Any, ...]]] = {}

    def add(self, sql: str, row: tuple[Any, ...]) -> None:
        if sql in self._joinable and sql in self._first:
            self._first[sql].append(row)
        elif self._runs and self._runs[-1][0] == sql:
            self._runs[-1][1].append(row)
        else:
            rows = [row]
            self._runs.append((sql, rows))
            self._first.setdefault(sql, rows)

    def extend(self, other: Writes) -> None:
        for sql, rows in other._runs:
            for row in rows:
                self.add(sql, row)

    def execute_sync(self, conn: sqlite3.Connection) -> None:
        for sql, rows in self._runs:
            conn.executemany(sql, rows)

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self._runs)


# Synchronous, so that every piece of work in a batch sees the effects of the
# ones before it without interleaving; it records its rows in the Writes given.
Work = Callable[[Writes], Any]
InThread = Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]
Preload = Callable[[InThread[Any], list[Any]], Awaitable[None]]


def _write_batch(conn: sqlite3.Connection, writes: Writes) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        writes.execute_sync(conn)
        with COMMIT_SECONDS.time():
            conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")
        raise


class CommitLane:
    """One database thread for the group commits of several databases.

    A process serving several banks has a writer per database. Left to
    themselves, the writers a single call woke would each hop to their own
    connection's thread and back: a thread wake-up, a GIL hand-off and a loop
    wake-up apiece. Commits handed to one lane in the same loop turn go to
    its thread together and run one after another (each its own transaction
    and fsync, on its own file), and come back with one wake-up.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")
        self._pending: list[tuple[sqlite3.Connection, Writes, asyncio.Future[None]]] = []

    def commit(self, conn: sqlite3.Connection, writes: Writes) -> asyncio.Future[None]:
        """Commit `writes` on `conn` with the others of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((conn, writes, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs, self._pending = self._pending, []
        ran = loop.run_in_executor(self._executor, _write_batches, [(c, w) for c, w, _ in jobs])

        def settle(done: asyncio.Future[list[BaseException | None]]) -> None:
            crashed = done.exception()  # the lane itself, not one database
            for index, (_, _, future) in enumerate(jobs):
                if future.done():
                    continue
                error = crashed if crashed is not None else done.result()[index]
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

        ran.add_done_callback(settle)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _write_batches(jobs: list[tuple[sqlite3.Connection, Writes]]) -> list[BaseException | None]:
    """Each connection's batch in its own transaction; one failing leaves the rest."""
    failures: list[BaseException | None] = []
    for conn, writes in jobs:
        try:
            _write_batch(conn, writes)
        except Exception as exc:  # that writer stops (fail-stop); the others go on
            failures.append(exc)
        else:
            failures.append(None)
    return failures


@dataclass(slots=True)
class _Item:
    work: Work
    key: Any
    future: asyncio.Future[Any]


class GroupCommitWriter:
    """A single task that applies submitted work in batches, one COMMIT per batch.

    Per batch: `preload` (one query fetching what the batch's keys need; this
    task is the only writer, so nothing changes underneath it), each work in
    order, then one call on the database thread (the connection's own, or a
    CommitLane's shared by several writers) running BEGIN IMMEDIATE, one
    `executemany` per statement and COMMIT; then every caller gets its result.
    A work that raises one of `expected_errors` fails alone and must have
    changed nothing; any other exception, or a failed COMMIT, stops the writer
    for good (fail-stop), because in-memory state above may no longer match
    the disk.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 256,
        max_queue: int = 8192,
        expected_errors: tuple[type[Exception], ...] = (),
        preload: Preload | None = None,
        on_commit: Callable[[int], None] | None = None,
        lane: CommitLane | None = None,
        joinable: frozenset[str] = frozenset(),
    ) -> None:
        assert 1 <= max_batch <= max_queue
        self._joinable = joinable  # see Writes
        self._db = db
        self._lane = lane
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._expected = expected_errors
        self._preload = preload
        self._on_commit = on_commit
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="sqlite-writer")
        return self._task

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def submit(self, work: Work, key: Any = None) -> Any:
        """Apply `work` in the next batch; return its result once committed."""
        return await self.enqueue(work, key)

    def enqueue(self, work: Work, key: Any = None) -> asyncio.Future[Any]:
        """Queue `work` now (raising QueueFullError at the bound); the future
        resolves once its batch has committed. Work runs in queue order."""
        if self.failure is not None:
            raise WriterFailedError("storage writer has failed") from self.failure
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(work, key, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"write queue full ({self._queue.maxsize})") from None
        return future

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None or self._task.done():
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._commit(batch)
            except BaseException as exc:
                self.failure = exc
                self._fail(batch, exc)
                raise
            for item, (ok, value) in zip(batch, results, strict=True):
                if not item.future.done():
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)
                self._queue.task_done()
            if self._on_commit is not None:
                self._on_commit(len(batch))

    async def _commit(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        db = self._db
        if self._preload is not None:
            await self._preload(db.run, [item.key for item in batch])
        writes = Writes(self._joinable)
        results: list[tuple[bool, Any]] = []
        for item in batch:
            mine = Writes(self._joinable)
            try:
                value = item.work(mine)
            except self._expected as exc:
                results.append((False, exc))
                continue
            writes.extend(mine)
            results.append((True, value))
        if len(writes):
            if self._lane is not None:
                await self._lane.commit(db.raw, writes)
            else:
                await db.run(lambda raw: _write_batch(raw, writes))
        return results

    def _fail(self, batch: list[_Item], exc: BaseException) -> None:
        _log.error("writer_failed", error=repr(exc))
        pending = list(batch)
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for item in pending:
            if not item.future.done():
                item.future.set_exception(WriterFailedError(f"storage writer failed: {exc!r}"))
            self._queue.task_done()


async def close_store(
    writer: GroupCommitWriter,
    lookup: sqlite3.Connection,
    *dbs: Database,
) -> None:
    """Finish what the writer has queued, then close every database, also
    after a writer failure."""
    try:
        await writer.close()
    finally:
        await close_all(*dbs)
        lookup.close()
