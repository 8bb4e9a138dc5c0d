"""What a replica keeps on disk: its stable checkpoint and the batches executed after it.

One SQLite file per replica. Two tables:

- `checkpoint`: the latest stable checkpoint (sequence number, state digest, the
  2f+1 signed CHECKPOINTs that certify it, the application snapshot and the
  reply table). Written when a checkpoint becomes stable, replacing the last.
  A paged snapshot (`strife.bft.pages`) is kept as its list of page names and
  digests, its pages in `page`, keyed by digest: a checkpoint writes only the
  pages this file does not hold yet and deletes those no longer listed, so
  its cost follows what changed since the last one.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from strife.bft.messages import Checkpoint, ClientRecord, Request
from strife.bft.pages import Page, frame, frames, is_paged
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
CREATE TABLE IF NOT EXISTS page (digest BLOB PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
"""
_MANIFEST = b"strife-bft/manifest/v1\n"
"""How `checkpoint.snapshot` starts when it lists pages rather than holding the state."""


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
        self._pages: set[bytes] = {bytes(d) for (d,) in self._db.execute("SELECT digest FROM page")}
        self._after_commit: set[bytes] | None = None

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
        snapshot = bytes(snapshot)
        if snapshot.startswith(_MANIFEST):
            snapshot = self._assemble(json.loads(snapshot[len(_MANIFEST) :]))
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
            snapshot,
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
                snapshot = self._store_pages(stable.snapshot)
                self._db.execute("DELETE FROM checkpoint")
                self._db.execute(
                    "INSERT INTO checkpoint VALUES (?, ?, ?, ?, ?)",
                    (
                        stable.seq,
                        stable.digest,
                        _dumps([c.encoded for c in stable.proof]),
                        snapshot,
                        _dumps([_record(c) for c in stable.clients]),
                    ),
                )
                self._db.execute("DELETE FROM executed WHERE seq <= ?", (stable.seq,))

    def _store_pages(self, snapshot: bytes) -> bytes:
        """Write the pages not held yet, drop those no longer listed; what the
        checkpoint row keeps (the manifest, or a snapshot that is not paged).

        The set of digests held is updated only after the transaction commits
        (`_transaction`), so a failed write leaves it telling the truth."""
        listed: list[list[str]] = []
        new: list[tuple[bytes, bytes]] = []
        for name, digest, body in frames(snapshot) if is_paged(snapshot) else ():
            listed.append([name, digest.hex()])
            if digest not in self._pages:
                new.append((digest, bytes(body)))
        self._db.executemany("INSERT OR REPLACE INTO page VALUES (?, ?)", new)
        keep = {bytes.fromhex(d) for _, d in listed}
        gone = self._pages - keep
        self._db.executemany("DELETE FROM page WHERE digest = ?", [(d,) for d in gone])
        self._after_commit = keep
        return _MANIFEST + _dumps(listed).encode() if is_paged(snapshot) else snapshot

    def _assemble(self, listed: list[list[str]]) -> bytes:
        pages = []
        for name, digest_hex in listed:
            digest = bytes.fromhex(digest_hex)
            row = self._db.execute("SELECT body FROM page WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                raise ValueError(f"{self.path}: page {name} of the checkpoint is missing")
            pages.append(Page(name, digest, bytes(row[0])))
        return frame(pages)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._after_commit = None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if self._after_commit is not None:
            self._pages = self._after_commit
