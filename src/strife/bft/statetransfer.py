"""State transfer: catching up to a stable checkpoint beyond what this replica executed.

The log below a stable checkpoint is gone everywhere, so a replica that fell
behind it (partitioned, or it missed messages) cannot execute its way there.
It fetches the snapshot from a replica of the checkpoint's proof, in chunks
of at most `Config.state_chunk_bytes` (`pages.split`), so that no message
outgrows the wire however large the state. Every STATE-REPLY carries the
SHA-256 of every chunk and the 2f+1 checkpoints that certify the snapshot:
the replica takes the chunks it already holds from its own state (most of
them, when it was not far behind: a paged state is cut where its pages say,
so unchanged pages give unchanged chunks), asks its source for the others a
few at a time, and checks each against its digest as it comes. Once every
chunk is in, the snapshot is installed only if the application, restored
from it, hashes to the certified digest (with the reply table that came with
it); otherwise the application is put back as it was and the fetch starts
over from the next holder. A source that stops answering is replaced when
the timer expires, keeping the chunks already in. A faulty replica can delay
a state transfer, never corrupt one.

A fetch is pinned to one checkpoint, and a replica keeps the snapshots of its
last `KEPT_SNAPSHOTS` stable checkpoints to serve it, so a transfer that takes
longer than the group needs to make one more checkpoint stable still
completes; the next transfer, if the group moved on meanwhile, fetches only
what changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from strife.bft.certificates import valid_checkpoint_proof
from strife.bft.effects import Output, Send, StateInstalled
from strife.bft.log import Snapshot
from strife.bft.messages import Checkpoint, ClientRecord, StateReply, StateRequest, state_digest
from strife.bft.pages import split
from strife.bft.wire import WireError, decode_records, encode_records

if TYPE_CHECKING:
    from strife.bft.replica import Replica

__all__ = ["KEPT_SNAPSHOTS", "Fetch", "fetch_state", "on_state_reply", "on_state_request"]

IN_FLIGHT = 4
"""Chunks asked for ahead of those received."""
KEPT_SNAPSHOTS = 2
"""Stable checkpoints whose snapshots a replica keeps to hand over."""


@dataclass
class Fetch:
    """A snapshot being fetched: the checkpoint it is pinned to and the chunks in."""

    seq: int
    digest: bytes
    digests: tuple[bytes, ...]
    table_chunks: int
    proof: tuple[Checkpoint, ...]
    source: int
    chunks: dict[int, bytes] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def fetch_state(replica: Replica, out: list[Output]) -> None:
    """Ask the next holder: for the missing chunks of the fetch under way, or for the
    first chunk of the stable checkpoint's snapshot."""
    fetch = replica._fetch
    if fetch is not None and fetch.seq < replica.stable.seq:
        # Overtaken: a later checkpoint is stable. What came in will mostly recur.
        replica._fetched.update((fetch.digests[i], c) for i, c in fetch.chunks.items())
        fetch = replica._fetch = None
    proof = fetch.proof if fetch is not None else replica.stable.proof
    holders = [c.replica for c in proof if c.replica != replica.id]
    assert holders, "a stable checkpoint we did not execute was certified by others"
    target = holders[replica._fetch_attempt % len(holders)]
    replica._fetch_attempt += 1
    if fetch is None:
        out.append(Send(target, replica._sign(StateRequest(replica.stable.seq, 0, replica.id))))
    else:
        fetch.source, fetch.asked = target, set()
        _ask(replica, fetch, out)
    replica._set_timer("state", replica.timeout, out)


def _ask(replica: Replica, fetch: Fetch, out: list[Output]) -> None:
    count = len(fetch.digests)
    missing = (i for i in range(count) if i not in fetch.chunks and i not in fetch.asked)
    for index in missing:
        if len(fetch.asked) >= IN_FLIGHT:
            break
        fetch.asked.add(index)
        request = StateRequest(fetch.seq, index, replica.id)
        out.append(Send(fetch.source, replica._sign(request)))


def on_state_request(replica: Replica, request: StateRequest, out: list[Output]) -> None:
    """Hand over a chunk of the snapshot asked for, or of our stable one if later."""
    snapshot = replica._snapshots.get(request.seq)
    if snapshot is None or request.seq > replica.stable.seq:
        snapshot = replica._snapshots.get(replica.stable.seq)
    if snapshot is None or snapshot.seq < request.seq or snapshot.seq == 0:
        replica._drop("no-snapshot", request, out)
        return
    chunks, table_chunks = _chunks_of(replica, snapshot)
    index = request.index if snapshot.seq == request.seq else 0
    if not 0 <= index < len(chunks):
        replica._drop("bad-state-request", request, out)
        return
    proof = replica._stable_proofs[snapshot.seq]
    digests = tuple(_sha(c) for c in chunks)
    reply = StateReply(snapshot.seq, index, digests, table_chunks, chunks[index], proof, replica.id)
    out.append(Send(request.replica, replica._sign(reply)))


def _chunks_of(replica: Replica, snapshot: Snapshot) -> tuple[list[bytes], int]:
    """A kept state's chunks, the reply table's first, cut once (a fetch asks for each)."""
    cut = replica._chunks.get(snapshot.seq)
    if cut is None:
        size = replica.config.state_chunk_bytes
        table = split(encode_records(snapshot.clients), size)
        cut = replica._chunks[snapshot.seq] = (table + split(snapshot.state, size), len(table))
    return cut


def on_state_reply(replica: Replica, reply: StateReply, out: list[Output]) -> None:
    """Take a chunk of a snapshot its certificate vouches for; install once all are in."""
    count = len(reply.chunks)
    if not reply.proof or not 0 < reply.table_chunks < count:
        replica._drop("bad-state-chunk", reply, out)
        return
    if reply.seq <= replica.last_executed:
        replica.dropped["unneeded-state"] += 1
        return
    fetch = replica._fetch
    if fetch is not None and reply.seq < fetch.seq:
        replica.dropped["unneeded-state"] += 1
        return
    if fetch is None or reply.seq > fetch.seq:
        digest = reply.proof[0].state_digest
        if not valid_checkpoint_proof(
            replica.config, replica._verifier, reply.seq, digest, reply.proof
        ):
            replica._drop("bad-state-proof", reply, out)
            return
        if fetch is not None:  # overtaken: what came in will mostly recur
            replica._fetched.update((fetch.digests[i], c) for i, c in fetch.chunks.items())
        fetch = replica._fetch = Fetch(
            reply.seq, digest, reply.chunks, reply.table_chunks, reply.proof, reply.replica
        )
        # What this replica holds already: its own state, cut the same way.
        own = split(replica.app.snapshot(), replica.config.state_chunk_bytes)
        held = {**{_sha(c): c for c in own}, **replica._fetched}
        for i, chunk_digest in enumerate(fetch.digests):
            if chunk_digest in held:
                fetch.chunks[i] = held[chunk_digest]
    same = (reply.chunks, reply.table_chunks) == (fetch.digests, fetch.table_chunks)
    if reply.replica != fetch.source or not same or not 0 <= reply.index < len(fetch.digests):
        replica._drop("bad-state-chunk", reply, out)
        return
    if _sha(reply.chunk) != fetch.digests[reply.index]:
        replica._drop("bad-state-chunk", reply, out)
        return
    fetch.chunks[reply.index] = reply.chunk
    fetch.asked.discard(reply.index)
    replica._set_timer("state", replica.timeout, out)  # progress: the source is alive
    if len(fetch.chunks) < len(fetch.digests):
        _ask(replica, fetch, out)
        return
    replica._fetch, replica._fetched = None, {}
    table = b"".join(fetch.chunks[i] for i in range(fetch.table_chunks))
    state = b"".join(fetch.chunks[i] for i in range(fetch.table_chunks, count))
    try:
        clients = decode_records(table)
    except WireError:
        replica.dropped["bad-snapshot"] += 1
        return
    _install(replica, fetch, clients, state, out)


def _install(
    replica: Replica,
    fetch: Fetch,
    clients: tuple[ClientRecord, ...],
    snapshot: bytes,
    out: list[Output],
) -> None:
    previous = replica.app.snapshot()
    try:
        replica.app.restore(snapshot)
        installed = state_digest(replica.app.digest(), clients) == fetch.digest
    except ValueError:
        installed = False
    if not installed:
        replica.app.restore(previous)
        replica.dropped["bad-snapshot"] += 1
        return  # the state timer asks the next holder
    replica.clients = {record.client: record for record in clients}
    replica.pending = {
        c: r for c, r in replica.pending.items() if r.timestamp > replica._executed_ts(c)
    }
    replica.last_executed = fetch.seq
    clients = replica._client_table()
    replica._snapshots[fetch.seq] = Snapshot(fetch.seq, fetch.digest, snapshot, clients)
    if fetch.seq > replica.stable.seq:
        replica._make_stable(fetch.seq, fetch.digest, fetch.proof, out)
    replica._stable_proofs.setdefault(fetch.seq, fetch.proof)
    replica._slots = {n: s for n, s in replica._slots.items() if n > fetch.seq}
    if replica.last_executed >= replica.stable.seq:
        replica._cancel_timer("state", out)
    out.append(StateInstalled(fetch.seq, fetch.digest))
    replica._execute(out)
    replica._restart_request_timer(out)
