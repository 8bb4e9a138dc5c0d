"""What a replica keeps on disk: its stable checkpoint and the batches executed after it.

One SQLite file per replica. Two tables:

- `checkpoint`: the latest stable checkpoint (sequence number, state digest, the
  2f+1 signed CHECKPOINTs that certify it, the application snapshot and the
  reply table). Written when a checkpoint becomes stable, replacing the last.
- `executed`: per sequence number above it, the requests that ran (each signed
  by its client), written before any reply for them leaves the process and
  discarded once a later checkpoint is stable.

A restarted replica restores the checkpoint and re-executes the logged requests
on it, so every result it ever replied with is still in its state; whatever
the group did meanwhile it learns like any replica that fell behind (a state
transfer, once a later checkpoint is stable). A replica that loses its file
entirely starts from the genesis state and catches up the same way.

Writes are synchronous on the replica's event loop, one transaction per
event: they are small (a batch of requests), and a reply must not leave before
what it reports is on disk.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from strife.bft.messages import Checkpoint, ClientRecord, Request
from strife.bft.wire import decode_checkpoint, decode_client_record, decode_request

__all__ = ["Journal", "Saved"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    seq INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    proof TEXT NOT NULL,
    snapshot BLOB NOT NULL,
    clients TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS executed (seq INTEGER PRIMARY KEY, requests TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Saved:
    """A stable checkpoint and what executed above it, as read back."""

    seq: int
    digest: bytes
    proof: tuple[Checkpoint, ...]
    snapshot: bytes
    clients: tuple[ClientRecord, ...]
    log: tuple[tuple[int, tuple[Request, ...]], ...]


def _record(record: ClientRecord) -> dict[str, object]:
    return {"client": record.client, "timestamp": record.timestamp, "result": record.result.hex()}


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Journal:
    def __init__(
        self, path: Path, *, synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def identity(self, group: str, replica: int) -> None:
        """Bind the file to one replica of one group; another's file is refused."""
        expected = _dumps({"group": group, "replica": replica})
        row = self._db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('owner', ?)", (expected,))
        elif row[0] != expected:
            raise ValueError(f"{self.path} belongs to {row[0]}, not {expected}")

    def load(self) -> Saved | None:
        row = self._db.execute(
            "SELECT seq, digest, proof, snapshot, clients FROM checkpoint ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        seq, digest, proof, snapshot, clients = row
        log = tuple(
            (s, tuple(decode_request(r) for r in json.loads(requests)))
            for s, requests in self._db.execute(
                "SELECT seq, requests FROM executed WHERE seq > ? ORDER BY seq", (seq,)
            )
        )
        return Saved(
            seq,
            bytes(digest),
            tuple(decode_checkpoint(c) for c in json.loads(proof)),
            bytes(snapshot),
            tuple(decode_client_record(c) for c in json.loads(clients)),
            log,
        )

    def write(
        self,
        executed: list[tuple[int, tuple[Request, ...]]],
        stable: Saved | None,
        *,
        reset_log: bool = False,
    ) -> None:
        """One event's changes in one transaction (before its replies are sent)."""
        with self._transaction():
            if reset_log:
                self._db.execute("DELETE FROM executed")
            self._db.executemany(
                "INSERT OR REPLACE INTO executed VALUES (?, ?)",
                [(seq, _dumps([r.encoded for r in requests])) for seq, requests in executed],
            )
            if stable is not None:
                self._db.execute("DELETE FROM checkpoint")
                self._db.execute(
                    "INSERT INTO checkpoint VALUES (?, ?, ?, ?, ?)",
                    (
                        stable.seq,
                        stable.digest,
                        _dumps([c.encoded for c in stable.proof]),
                        stable.snapshot,
                        _dumps([_record(c) for c in stable.clients]),
                    ),
                )
                self._db.execute("DELETE FROM executed WHERE seq <= ?", (stable.seq,))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
