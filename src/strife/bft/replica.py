"""One PBFT replica as a pure state machine: `handle(event) -> outputs`.

The normal case (Castro and Liskov, OSDI 1999, section 4.2): the primary of
view v assigns a batch of client requests the next sequence number n in a
PRE-PREPARE; each backup that accepts it multicasts a PREPARE. A replica holding
the pre-prepare and 2f matching prepares from distinct backups has *prepared*
(v, n, d) and multicasts a COMMIT; with 2f+1 matching commits it has
*committed locally*, and executes n once everything below n is executed.
Any two quorums of 2f+1 share an honest replica, so no two batches prepare at
one (v, n), and a batch committed in one view is carried into every later one.

Around it: checkpoints every K sequence numbers that become *stable* with 2f+1
matching signed CHECKPOINTs and let the log below them go; water marks that
bound the log; view change when the primary stalls (`carried_over` derives the
new view); state transfer when a stable checkpoint is beyond what this replica
executed. Every message is verified against its claimed sender's key before
anything else looks at it; what fails, or can change nothing, is dropped and
counted by reason.

Outputs are returned, never performed: the shell sends, replies and sets
timers. Time never enters except as timer expiries. View change
(`viewchange`) and state transfer (`statetransfer`) live in modules of their
own, as functions of the replica.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from strife.bft import statetransfer, viewchange
from strife.bft.certificates import (
    signed_by,
    valid_batch,
)
from strife.bft.config import Config
from strife.bft.effects import (
    Broadcast,
    CancelTimer,
    CheckpointTaken,
    Dropped,
    Event,
    Executed,
    Output,
    Receive,
    SendReply,
    SetTimer,
    TimerExpired,
)
from strife.bft.log import KEPT_PER_SENDER, Slot, Snapshot, Stable
from strife.bft.messages import (
    Checkpoint,
    ClientRecord,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Reply,
    Request,
    StateReply,
    StateRequest,
    ViewChange,
    batch_digest,
    state_digest,
)
from strife.bft.signing import Signer, Verifier, replica_identity
from strife.bft.statemachine import StateMachine

__all__ = ["Replica"]

_M = TypeVar("_M", bound=Message)

_FUTURE_LIMIT = 2048
"""Messages kept for a view this replica has not entered yet (oldest go first)."""


class Replica:
    """Replica `replica_id` of a group of `config.n`, executing into `app`."""

    def __init__(
        self,
        config: Config,
        replica_id: int,
        signer: Signer,
        verifier: Verifier,
        app: StateMachine,
    ) -> None:
        assert 0 <= replica_id < config.n, replica_id
        assert signer.identity == replica_identity(replica_id), signer.identity
        self.config = config
        self.id = replica_id
        self._signer = signer
        self._verifier = verifier
        self.app = app
        self.view = 0
        self.active = True
        """False from sending a VIEW-CHANGE for `view` until entering it."""
        self.last_executed = 0
        self.next_seq = 0
        self.clients: dict[str, ClientRecord] = {}
        self.pending: dict[str, Request] = {}
        self.timeout = config.timeout
        self.dropped: Counter[str] = Counter()
        self._assigned: set[tuple[str, int]] = set()
        self._slots: dict[int, Slot] = {}
        self._prepared: dict[int, PreparedCert] = {}
        self._checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self._my_checkpoint: Checkpoint | None = None
        digest = state_digest(app.digest(), ())
        self.stable = Stable(0, digest, ())
        self._snapshots = {0: Snapshot(0, digest, app.snapshot(), ())}
        self._stable_proofs: dict[int, tuple[Checkpoint, ...]] = {0: ()}
        """The proof of each stable checkpoint whose snapshot is kept (to hand over)."""
        self._chunks: dict[int, tuple[list[bytes], int]] = {}
        """A kept state cut for handing over, and how many chunks its reply table takes."""
        self._fetch: statetransfer.Fetch | None = None
        self._fetched: dict[bytes, bytes] = {}
        """Chunks of fetches overtaken by a later checkpoint, by digest: most recur."""
        self._view_changes: dict[int, dict[int, ViewChange]] = {}
        self._my_view_change: ViewChange | None = None
        self._new_view_sent: set[int] = set()
        self._escalation_armed = False
        self.new_view: NewView | None = None
        self._future: list[PrePrepare | Prepare | Commit] = []
        self._timers: set[str] = set()
        self._fetch_attempt = 0
        self._ahead_when_armed = 0
        """How far the group was seen to have ordered when the request timer was armed."""
        self._ahead: dict[int, int] = {}
        """The latest view each peer was seen working in, when later than ours."""
        self._filling = False
        """A primary filling its log up to the next checkpoint with empty batches."""

    # -- the one entry point -------------------------------------------------

    def handle(self, event: Event) -> list[Output]:
        out: list[Output] = []
        if isinstance(event, Receive):
            self._receive(event.message, out)
        else:
            assert isinstance(event, TimerExpired), event
            self._timer(event.kind, out)
        self._propose(out)
        self._check()
        return out

    # -- what a journal keeps, and coming back from it ---------------------------

    def saved_checkpoint(self) -> tuple[Stable, Snapshot] | None:
        """The stable checkpoint with its snapshot, once this replica holds that state
        (executed or installed): all a restarted replica needs besides the log above it."""
        snapshot = self._snapshots.get(self.stable.seq)
        if snapshot is None or self.last_executed < self.stable.seq:
            return None
        return self.stable, snapshot

    def resume(
        self,
        stable: Stable,
        snapshot: Snapshot,
        log: Sequence[tuple[int, tuple[Request, ...]]],
    ) -> list[Output]:
        """Restore a saved checkpoint into a replica that has done nothing yet, then
        re-execute the batches committed above it through the one execution path, so
        replies, the reply table and any checkpoint on the way are what they were.

        The replica stays in view 0 and learns the group's view as any replica that
        missed a view change does. Raises ValueError when the snapshot does not hash
        to the checkpoint's digest (a journal damaged or from another group).
        """
        assert self.last_executed == 0 and not self.pending, "resume a fresh replica only"
        assert (snapshot.seq, snapshot.digest) == (stable.seq, stable.digest), "one checkpoint"
        self.app.restore(snapshot.state)
        if state_digest(self.app.digest(), snapshot.clients) != stable.digest:
            raise ValueError("the saved checkpoint does not match its digest")
        self.clients = {record.client: record for record in snapshot.clients}
        self.last_executed = stable.seq
        self.stable = stable
        self._snapshots = {stable.seq: snapshot}
        self._stable_proofs = {stable.seq: stable.proof}
        primary = self.config.primary(0)
        for seq, requests in log:
            pp = PrePrepare(0, seq, batch_digest(requests), requests, primary)
            self._slots[seq] = Slot(pre_prepare=pp, committed=True)
        out: list[Output] = []
        if stable.seq > 0:
            # Our word on the state we hold, for the node to repeat while the group is
            # quiet: a peer behind needs 2f + 1 of them to learn how far to catch up,
            # and a replica that only restarted would otherwise have none to give.
            self._my_checkpoint = self._sign(Checkpoint(stable.seq, stable.digest, self.id))
            out.append(Broadcast(self._my_checkpoint))
        self._execute(out)
        self.next_seq = self.last_executed
        return out

    @property
    def is_primary(self) -> bool:
        return self.config.primary(self.view) == self.id

    def _check(self) -> None:
        """Cheap invariants, after every event (our bugs, never a peer's input)."""
        # A stable checkpoint ahead of execution is always being fetched.
        assert self.stable.seq <= self.last_executed or "state" in self._timers
        low = self.stable.seq
        assert (
            not self._slots
            or low < min(self._slots) <= max(self._slots) <= low + self.config.window
        )
        assert not self._prepared or min(self._prepared) > low
        assert all(r.timestamp > self._executed_ts(c) for c, r in self.pending.items())
        assert self.active or self._my_view_change is not None

    def _executed_ts(self, client: str) -> int:
        record = self.clients.get(client)
        return 0 if record is None else record.timestamp

    # -- plumbing ------------------------------------------------------------

    def _sign(self, message: _M) -> _M:
        signed: _M = replace(message, signature=self._signer.sign(message.payload))
        return signed

    def _drop(self, reason: str, message: Message, out: list[Output]) -> None:
        self.dropped[reason] += 1
        out.append(Dropped(reason, message))

    def _set_timer(self, kind: str, after: float, out: list[Output]) -> None:
        self._timers.add(kind)
        out.append(SetTimer(kind, after))

    def _cancel_timer(self, kind: str, out: list[Output]) -> None:
        if kind in self._timers:
            self._timers.discard(kind)
            out.append(CancelTimer(kind))

    def _in_window(self, seq: int) -> bool:
        return self.stable.seq < seq <= self.stable.seq + self.config.window

    def _slot(self, seq: int) -> Slot:
        return self._slots.setdefault(seq, Slot())

    def _receive(self, message: Message, out: list[Output]) -> None:
        if not signed_by(self._verifier, message):
            self._drop("bad-signature", message, out)
            return
        if not isinstance(message, Request) and message.replica == self.id:
            self._drop("own-message", message, out)
            return
        match message:
            case Request():
                self._on_request(message, out)
            case PrePrepare() | Prepare() | Commit():
                self._on_agreement(message, out)
            case Checkpoint():
                self._on_checkpoint(message, out)
            case ViewChange():
                viewchange.on_view_change(self, message, out)
            case NewView():
                viewchange.on_new_view(self, message, out)
            case StateRequest():
                statetransfer.on_state_request(self, message, out)
            case StateReply():
                statetransfer.on_state_reply(self, message, out)
            case Reply():
                self._drop("reply-to-replica", message, out)

    # -- requests and the normal case ----------------------------------------

    def _on_request(self, request: Request, out: list[Output]) -> None:
        if len(request.operation) > self.config.max_operation_bytes or request.timestamp < 1:
            self._drop("bad-request", request, out)
            return
        record = self.clients.get(request.client)
        if record is not None and request.timestamp <= record.timestamp:
            if request.timestamp == record.timestamp:  # a retry: the same answer again
                self._reply(record, out)
            else:
                self._drop("old-request", request, out)
            return
        held = self.pending.get(request.client)
        if held is not None and held.timestamp >= request.timestamp:
            self.dropped["repeated-request"] += 1
            return
        self.pending[request.client] = request
        if self.active and "request" not in self._timers:
            self._arm_request_timer(out)

    def _reply(self, record: ClientRecord, out: list[Output]) -> None:
        reply = Reply(self.view, record.timestamp, record.client, self.id, record.result)
        out.append(SendReply(self._sign(reply)))

    def _propose(self, out: list[Output]) -> None:
        """As primary, give waiting requests sequence numbers, a batch at a time."""
        if not self.active or not self.is_primary:
            return
        limit = self.stable.seq + self.config.window
        while (
            self.next_seq < limit and self.next_seq - self.last_executed < self.config.max_in_flight
        ):
            batch = tuple(
                r for r in self.pending.values() if (r.client, r.timestamp) not in self._assigned
            )[: self.config.batch_size]
            if not batch and not self._filling:
                return
            self.next_seq += 1
            if self.next_seq % self.config.checkpoint_interval == 0:
                self._filling = False
            pp = self._sign(
                PrePrepare(self.view, self.next_seq, batch_digest(batch), batch, self.id)
            )
            self._slot(pp.seq).pre_prepare = pp
            self._assigned.update((r.client, r.timestamp) for r in batch)
            out.append(Broadcast(pp))
            self._advance(pp.seq, out)

    def _on_agreement(self, message: PrePrepare | Prepare | Commit, out: list[Output]) -> None:
        if message.view > self.view or (message.view == self.view and not self.active):
            self._future.append(message)
            if len(self._future) > _FUTURE_LIMIT:
                self._drop("future-overflow", self._future.pop(0), out)
            if message.view > self.view:
                self._note_ahead(message.replica, message.view, out)
            return
        if message.view < self.view:
            self._drop("old-view", message, out)
            return
        if not self._in_window(message.seq):
            self._drop("out-of-window", message, out)
            return
        primary = self.config.primary(self.view)
        slot = self._slot(message.seq)
        if isinstance(message, PrePrepare):
            if message.replica != primary:
                self._drop("not-primary", message, out)
                return
            if slot.pre_prepare is not None:
                reason = "duplicate" if slot.pre_prepare == message else "equivocation"
                self._drop(reason, message, out)
                return
            if not valid_batch(self.config, self._verifier, message):
                self._drop("bad-batch", message, out)
                return
            self._accept_pre_prepare(message, out)
        elif isinstance(message, Prepare):
            if message.replica == primary:
                self._drop("prepare-from-primary", message, out)
                return
            if slot.prepares.setdefault(message.replica, message) != message:
                self._drop("conflicting-prepare", message, out)
                return
        elif slot.commits.setdefault(message.replica, message) != message:
            self._drop("conflicting-commit", message, out)
            return
        self._advance(message.seq, out)

    def _accept_pre_prepare(self, pp: PrePrepare, out: list[Output]) -> None:
        slot = self._slot(pp.seq)
        slot.pre_prepare = pp
        self._assigned.update((r.client, r.timestamp) for r in pp.batch)
        if not self.is_primary:
            prepare = self._sign(Prepare(self.view, pp.seq, pp.digest, self.id))
            slot.prepares[self.id] = prepare
            out.append(Broadcast(prepare))

    def _advance(self, seq: int, out: list[Output]) -> None:
        """Move one slot on: prepared -> COMMIT sent -> committed locally -> execute."""
        slot = self._slots.get(seq)
        if slot is None or slot.pre_prepare is None:
            return
        pp = slot.pre_prepare
        if not slot.prepared:
            matching = sorted(
                (p for p in slot.prepares.values() if p.digest == pp.digest),
                key=lambda p: p.replica,
            )
            if len(matching) < 2 * self.config.f:
                return
            slot.prepared = True
            self._prepared[seq] = PreparedCert(pp, tuple(matching[: 2 * self.config.f]))
            commit = self._sign(Commit(self.view, seq, pp.digest, self.id))
            slot.commits[self.id] = commit
            out.append(Broadcast(commit))
        if not slot.committed:
            votes = sum(1 for c in slot.commits.values() if c.digest == pp.digest)
            if votes < self.config.quorum:
                return
            slot.committed = True
            self._execute(out)

    def _execute(self, out: list[Output]) -> None:
        """Execute committed batches in sequence order, each request once per client timestamp."""
        ran = False
        while (slot := self._slots.get(self.last_executed + 1)) is not None and slot.committed:
            assert slot.pre_prepare is not None
            seq = self.last_executed + 1
            results: list[tuple[Request, bytes]] = []
            for request in slot.pre_prepare.batch:
                if request.timestamp <= self._executed_ts(request.client):
                    continue  # a retry that was ordered twice: it ran the first time
                result = self.app.execute(request.operation)
                record = ClientRecord(request.client, request.timestamp, result)
                self.clients[request.client] = record
                held = self.pending.get(request.client)
                if held is not None and held.timestamp <= request.timestamp:
                    del self.pending[request.client]
                results.append((request, result))
                self._reply(record, out)
            self.last_executed = seq
            ran = True
            out.append(Executed(seq, slot.pre_prepare.digest, tuple(results)))
            if seq % self.config.checkpoint_interval == 0:
                self._take_checkpoint(seq, out)
        if ran:
            self.timeout = self.config.timeout
            self._restart_request_timer(out)
            if self.is_primary and self.next_seq % self.config.checkpoint_interval:
                self._set_timer("fill", self.config.timeout, out)
            else:
                self._cancel_timer("fill", out)

    def _restart_request_timer(self, out: list[Output]) -> None:
        self._cancel_timer("request", out)
        if self.pending and self.active:
            self._arm_request_timer(out)

    def _arm_request_timer(self, out: list[Output]) -> None:
        self._ahead_when_armed = self._group_ahead()
        self._set_timer("request", self.timeout, out)

    def _group_ahead(self) -> int:
        """The furthest sequence number the group is seen to have ordered in this view:
        the stable checkpoint, or one with 2f+1 matching COMMITs (whether or not this
        replica has its pre-prepare). Beyond `last_executed`, this replica is behind."""
        ahead = self.stable.seq
        for seq, slot in self._slots.items():
            if seq > ahead and slot.commits:
                votes = Counter(c.digest for c in slot.commits.values())
                if max(votes.values()) >= self.config.quorum:
                    ahead = seq
        return ahead

    def _note_ahead(self, replica: int, view: int, out: list[Output]) -> None:
        """A peer works in a later view. Once f + 1 do (one of them honest, so a quorum
        formed that view), this replica's view can never gather 2f + 1 again: it asks
        to move on at once, rather than when its timer expires, and the replicas in
        the later view answer its VIEW-CHANGE with their NEW-VIEW. A replica that
        restarted into view 0 so rejoins the group's view within one round trip."""
        self._ahead[replica] = max(view, self._ahead.get(replica, 0))
        ahead = sum(1 for v in self._ahead.values() if v > self.view)
        if self.active and ahead >= self.config.weak:
            self._ahead.clear()
            viewchange.start_view_change(self, self.view + 1, out)

    def _on_request_timer(self, out: list[Output]) -> None:
        """A request waited too long: suspect the primary, unless the group visibly
        went on ordering since the timer was armed while this replica fell behind (it
        restarted, or missed messages): its requests may be done already, and it is
        catching up. Waiting costs no liveness: if the primary is faulty, the replicas
        that are not behind suspect it, and f + 1 of them bring this one along."""
        ahead = self._group_ahead()
        if ahead > self.last_executed and ahead > self._ahead_when_armed:
            self._arm_request_timer(out)
            return
        viewchange.start_view_change(self, self.view + 1, out)

    # -- checkpoints and garbage collection -----------------------------------

    def _client_table(self) -> tuple[ClientRecord, ...]:
        return tuple(sorted(self.clients.values(), key=lambda r: r.client))

    def _take_checkpoint(self, seq: int, out: list[Output]) -> None:
        clients = self._client_table()
        digest = state_digest(self.app.digest(), clients)
        self._snapshots[seq] = Snapshot(seq, digest, self.app.snapshot(), clients)
        checkpoint = self._sign(Checkpoint(seq, digest, self.id))
        self._my_checkpoint = checkpoint
        out.append(CheckpointTaken(seq, digest))
        out.append(Broadcast(checkpoint))
        self._record_checkpoint(checkpoint, out)

    def _on_checkpoint(self, checkpoint: Checkpoint, out: list[Output]) -> None:
        if checkpoint.seq <= self.stable.seq:
            self.dropped["old-checkpoint"] += 1
            return
        if checkpoint.seq % self.config.checkpoint_interval:
            self._drop("bad-checkpoint", checkpoint, out)
            return
        self._record_checkpoint(checkpoint, out)

    def _record_checkpoint(self, checkpoint: Checkpoint, out: list[Output]) -> None:
        by_replica = self._checkpoints.setdefault(checkpoint.seq, {})
        if by_replica.setdefault(checkpoint.replica, checkpoint) != checkpoint:
            self._drop("conflicting-checkpoint", checkpoint, out)
            return
        # A peer's checkpoints are kept for its few highest sequence numbers only.
        mine = sorted(s for s, held in self._checkpoints.items() if checkpoint.replica in held)
        for seq in mine[:-KEPT_PER_SENDER]:
            del self._checkpoints[seq][checkpoint.replica]
        matching = sorted(
            (c for c in by_replica.values() if c.state_digest == checkpoint.state_digest),
            key=lambda c: c.replica,
        )
        if len(matching) >= self.config.quorum and checkpoint.seq > self.stable.seq:
            self._make_stable(checkpoint.seq, checkpoint.state_digest, tuple(matching), out)

    def _make_stable(
        self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...], out: list[Output]
    ) -> None:
        """A certified checkpoint: forget the log below it; fetch its state if behind."""
        assert seq > self.stable.seq, (seq, self.stable.seq)
        self.stable = Stable(seq, digest, proof)
        self._slots = {n: s for n, s in self._slots.items() if n > seq}
        self._prepared = {n: c for n, c in self._prepared.items() if n > seq}
        self._checkpoints = {n: c for n, c in self._checkpoints.items() if n > seq}
        self._stable_proofs[seq] = proof
        kept = sorted(self._stable_proofs)[-statetransfer.KEPT_SNAPSHOTS :]
        self._stable_proofs = {n: self._stable_proofs[n] for n in kept}
        self._snapshots = {
            n: s for n, s in self._snapshots.items() if n >= seq or n in self._stable_proofs
        }
        self._chunks = {n: c for n, c in self._chunks.items() if n in self._snapshots}
        own = self._snapshots.get(seq)
        if own is not None and own.digest != digest:
            # 2f+1 replicas certified another state than ours: ours is wrong.
            self.dropped["diverged-from-certified-state"] += 1
            del self._snapshots[seq]
            self._chunks.pop(seq, None)
            self.last_executed = min(self.last_executed, seq - 1)
        self.next_seq = max(self.next_seq, seq)
        if self.last_executed < seq:
            self._fetch_attempt = 0
            statetransfer.fetch_state(self, out)

    # -- view change ---------------------------------------------------------

    def _timer(self, kind: str, out: list[Output]) -> None:
        self._timers.discard(kind)
        if kind == "request":
            if self.active and self.pending:
                self._on_request_timer(out)
        elif kind == "view-change":
            if not self.active:
                self.timeout *= 2
                viewchange.start_view_change(self, self.view + 1, out)
        elif kind == "resend":
            if not self.active and self._my_view_change is not None:
                out.append(Broadcast(self._my_view_change))
                viewchange.resend_checkpoint(self, out)
                self._set_timer("resend", self.config.timeout, out)
        elif kind == "state" and self.last_executed < self.stable.seq:
            statetransfer.fetch_state(self, out)
        elif kind == "fill":
            # Idle since the last batch, short of a checkpoint: empty batches up to it
            # (the `_propose` after every event sends them), so the group's state gets
            # certified and a replica that missed the last batches, with no traffic
            # left to show it, learns how far behind it is and fetches the state.
            idle = not self.pending and self.next_seq == self.last_executed
            if self.active and self.is_primary and idle:
                self._filling = self.next_seq % self.config.checkpoint_interval != 0
