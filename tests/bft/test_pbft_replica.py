"""The PBFT replica as a state machine, driven by hand: one message at a time, in order."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import pytest

from strife.bft.client import Client
from strife.bft.config import Config
from strife.bft.effects import (
    Broadcast,
    CancelTimer,
    Executed,
    Output,
    Receive,
    Send,
    SendReply,
    SetTimer,
    StateInstalled,
    TimerExpired,
    ViewEntered,
)
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
)
from strife.bft.replica import Replica
from strife.bft.signing import Keys, keyed_hash_keys, replica_identity
from strife.bft.statemachine import Accounts
from strife.bft.wire import encode, encode_records

CLIENTS = ("client-a", "client-b", "client-c", "client-d")


M = TypeVar("M", bound=Message)


def sign(keys: Keys, message: M, identity: str) -> M:
    signed: M = replace(message, signature=keys.signer(identity).sign(message.payload))
    return signed


class Group:
    """Four replicas and a FIFO network that delivers everything unless told not to."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config(
            n=4, checkpoint_interval=2, window=4, batch_size=3, max_in_flight=1
        )
        ids = [replica_identity(r) for r in range(self.config.n)]
        self.keys = keyed_hash_keys([*ids, *CLIENTS], seed=7)
        self.apps = [Accounts() for _ in range(self.config.n)]
        self.replicas = [
            Replica(self.config, r, self.keys.signer(ids[r]), self.keys.verifier, self.apps[r])
            for r in range(self.config.n)
        ]
        self.clients = {
            c: Client(self.config, self.keys.signer(c), self.keys.verifier) for c in CLIENTS
        }
        self.queue: deque[tuple[int, Message]] = deque()
        self.replies: list[Reply] = []
        self.executed: dict[int, list[Executed]] = {r: [] for r in range(self.config.n)}
        self.timers: dict[int, dict[str, float]] = {r: {} for r in range(self.config.n)}
        self.outputs: dict[int, list[Output]] = {r: [] for r in range(self.config.n)}
        self.down: set[int] = set()
        self.block: Callable[[int, Message], bool] = lambda to, message: False
        self.held: list[tuple[int, Message]] = []

    def request(self, client: str, operation: str) -> Request:
        request = self.clients[client].request(operation.encode())
        self.submit(request)
        return request

    def call(self, client: str, operation: str) -> bytes | None:
        """Request, run the network dry, and return what the client accepted."""
        self.request(client, operation)
        self.run()
        return self.accepted(client)

    def submit(self, message: Message, to: range | list[int] | None = None) -> None:
        for r in to if to is not None else range(self.config.n):
            self.queue.append((r, message))

    def apply(self, r: int, outputs: list[Output]) -> None:
        self.outputs[r] += outputs
        for o in outputs:
            match o:
                case Send():
                    self.queue.append((o.to, o.message))
                case Broadcast():
                    self.queue.extend((to, o.message) for to in range(self.config.n) if to != r)
                case SendReply():
                    self.replies.append(o.reply)
                case SetTimer():
                    self.timers[r][o.kind] = o.after
                case CancelTimer():
                    self.timers[r].pop(o.kind, None)
                case Executed():
                    self.executed[r].append(o)

    def run(self) -> None:
        while self.queue:
            to, message = self.queue.popleft()
            if to in self.down:
                continue
            if self.block(to, message):
                self.held.append((to, message))
                continue
            self.apply(to, self.replicas[to].handle(Receive(message)))

    def fire(self, r: int, kind: str) -> None:
        assert kind in self.timers[r], (r, kind, self.timers[r])
        del self.timers[r][kind]
        self.apply(r, self.replicas[r].handle(TimerExpired(kind)))

    def release(self) -> None:
        held, self.held = self.held, []
        self.block = lambda to, message: False
        self.queue.extend(held)
        self.run()

    def accepted(self, client: str) -> bytes | None:
        result = None
        for reply in self.replies:
            if reply.client == client:
                accepted = self.clients[client].on_reply(reply)
                if accepted is not None:
                    result = accepted.result
        return result

    def seqs(self, r: int) -> list[int]:
        return [e.seq for e in self.executed[r]]


def test_one_request_runs_everywhere_and_the_client_accepts_it() -> None:
    group = Group()
    group.request("client-a", "deposit a 100")
    group.run()
    for r in range(4):
        assert group.seqs(r) == [1]
        assert group.apps[r].balances == {"a": 100}
    assert {reply.result for reply in group.replies} == {b"ok 100"}
    assert len(group.replies) == 4
    assert group.accepted("client-a") == b"ok 100"


def test_requests_waiting_on_the_primary_go_out_as_one_batch() -> None:
    group = Group()
    for client in CLIENTS:  # all four reach the primary before its first pre-prepare goes out
        group.request(client, f"deposit {client} 5")
    group.run()
    batches = [len(e.results) for e in group.executed[0]]
    assert batches == [1, 3]  # the first alone (nothing in flight), then a batch of B = 3
    assert group.seqs(3) == [1, 2]
    for client in CLIENTS:
        assert group.accepted(client) == b"ok 5"


def test_a_retried_request_executes_once_and_gets_the_same_reply() -> None:
    group = Group()
    request = group.request("client-a", "deposit a 100")
    group.run()
    group.replies.clear()
    group.submit(request)  # the client retries: the reply was lost
    group.run()
    assert all(group.seqs(r) == [1] for r in range(4))
    assert [reply.result for reply in group.replies] == [b"ok 100"] * 4
    assert group.apps[1].balances == {"a": 100}
    # An older timestamp than the last executed one is refused.
    older = sign(group.keys, Request("client-a", 0, b"deposit a 1"), "client-a")
    group.submit(older)
    group.run()
    assert group.replicas[2].dropped["bad-request"] == 1


def test_a_request_ordered_twice_runs_once() -> None:
    """A faulty primary puts one request in two batches: the second is skipped."""
    group = Group()
    keys = group.keys
    request = group.clients["client-a"].request(b"deposit a 100")
    backup = group.replicas[1]
    for seq in (1, 2):
        batch = (request,)
        pp = sign(keys, PrePrepare(0, seq, batch_digest(batch), batch, 0), "replica-0")
        outputs = backup.handle(Receive(pp))
        for r in (2, 3):
            backup.handle(Receive(sign(keys, Prepare(0, seq, pp.digest, r), f"replica-{r}")))
        for r in (0, 2):
            outputs += backup.handle(
                Receive(sign(keys, Commit(0, seq, pp.digest, r), f"replica-{r}"))
            )
    executed = [o for o in backup.handle(Receive(request)) if isinstance(o, Executed)]
    assert not executed
    assert backup.last_executed == 2
    assert group.apps[1].balances == {"a": 100}


def test_checkpoints_become_stable_and_the_log_below_them_goes() -> None:
    group = Group()
    for i in range(4):
        group.request("client-a", f"deposit a {i + 1}")
        group.run()
        assert group.accepted("client-a") is not None
    for replica in group.replicas:
        assert replica.last_executed == 4
        assert replica.stable.seq == 4
        assert len(replica.stable.proof) >= 3
        assert not replica._slots and not replica._prepared and not replica._checkpoints
        # The last two stable checkpoints' snapshots, kept to hand over.
        assert set(replica._snapshots) == {2, 4}


def test_a_replica_resumed_from_its_checkpoint_and_log_is_the_replica_it_was() -> None:
    group = Group()
    for i in range(3):  # a checkpoint at 2 becomes stable; 3 stays in the log above it
        group.request("client-a", f"deposit a {i + 1}")
        group.run()
        assert group.accepted("client-a") is not None
    before = group.replicas[1]
    saved = before.saved_checkpoint()
    assert saved is not None
    stable, snapshot = saved
    assert stable.seq == 2 and before.last_executed == 3
    log = [(e.seq, tuple(r for r, _ in e.results)) for e in group.executed[1] if e.seq > stable.seq]
    fresh = Replica(
        group.config, 1, group.keys.signer(replica_identity(1)), group.keys.verifier, Accounts()
    )
    outputs = fresh.resume(stable, snapshot, log)
    assert (fresh.last_executed, fresh.stable) == (3, stable)
    assert fresh.app.digest() == before.app.digest()
    assert fresh.clients == before.clients
    # Re-execution replies again, exactly as the first time.
    assert [o.reply.result for o in outputs if isinstance(o, SendReply)] == [b"ok 6"]
    # And it vouches for the checkpoint it came back to, for peers that are behind.
    said = [o.message for o in outputs if isinstance(o, Broadcast)]
    assert [(c.seq, c.state_digest, c.replica) for c in said if isinstance(c, Checkpoint)] == [
        (2, stable.digest, 1)
    ]
    # A snapshot that does not hash to the checkpoint's digest is refused.
    other = Replica(
        group.config, 1, group.keys.signer(replica_identity(1)), group.keys.verifier, Accounts()
    )
    with pytest.raises(ValueError):
        other.resume(stable, replace(snapshot, clients=()), ())


def test_an_idle_primary_fills_up_to_a_checkpoint_and_a_replica_behind_catches_up() -> None:
    group = Group(Config(n=4, checkpoint_interval=4, window=8, batch_size=3, max_in_flight=1))
    group.down = {3}
    assert group.call("client-a", "deposit a 5") == b"ok 5"
    group.down = set()
    # The group goes quiet three short of a checkpoint: nothing would ever tell
    # replica 3 it missed sequence number 1. The primary, idle, fills up to the
    # checkpoint with empty batches; the checkpoint becomes stable, and replica 3
    # fetches the state it certifies.
    assert "fill" in group.timers[0]
    group.fire(0, "fill")
    group.run()
    for r in range(3):
        assert group.replicas[r].last_executed == 4 and group.replicas[r].stable.seq == 4
    assert [len(e.results) for e in group.executed[1]] == [1, 0, 0, 0]
    behind = _catch_up(group, 3)
    assert behind.last_executed == 4 and group.apps[3].balances == {"a": 5}
    # At a checkpoint already, an idle primary proposes nothing more.
    assert "fill" not in group.timers[0]


def test_the_high_water_mark_holds_the_primary_until_a_checkpoint_is_stable() -> None:
    group = Group()
    group.block = lambda to, message: isinstance(message, Checkpoint)
    for i in range(5):
        client = "client-a" if i < 4 else "client-b"
        group.request(client, f"deposit a {i + 1}")
        group.run()
        assert (group.accepted(client) is not None) == (i < 4)
    # window = 4: sequence numbers 1..4 ran, the fifth request waits at the low mark 0.
    assert [r.last_executed for r in group.replicas] == [4, 4, 4, 4]
    assert "client-b" in group.replicas[0].pending
    group.release()  # the checkpoints arrive: 2 and 4 become stable, the primary goes on
    assert [r.last_executed for r in group.replicas] == [5, 5, 5, 5]
    assert group.accepted("client-b") == b"ok 15"


def view_change_to_1(group: Group) -> None:
    for r in (1, 2, 3):
        group.fire(r, "request")
    group.run()


def test_a_silent_primary_is_replaced_and_the_request_runs_in_the_new_view() -> None:
    group = Group()
    group.down = {0}
    group.request("client-a", "deposit a 7")
    group.run()
    assert all("request" in group.timers[r] for r in (1, 2, 3))
    view_change_to_1(group)
    for r in (1, 2, 3):
        assert group.replicas[r].view == 1 and group.replicas[r].active
        assert any(isinstance(o, ViewEntered) and o.view == 1 for o in group.outputs[r])
        assert group.seqs(r) == [1]
    assert group.accepted("client-a") == b"ok 7"


def test_a_replica_restarted_into_view_0_rejoins_the_groups_view_at_once() -> None:
    group = Group()
    group.down = {0}
    group.request("client-a", "deposit a 7")
    group.run()
    view_change_to_1(group)
    assert group.accepted("client-a") == b"ok 7"
    # Replica 0 comes back as a fresh process would: view 0, nothing executed.
    group.apps[0] = Accounts()
    group.replicas[0] = Replica(
        group.config, 0, group.keys.signer(replica_identity(0)), group.keys.verifier, group.apps[0]
    )
    group.down = set()
    # Two peers working in view 1 show it view 0 is over: it asks to move, is
    # answered with their NEW-VIEW, and takes part in view 1 from then on.
    assert group.call("client-b", "deposit b 5") == b"ok 5"
    back = group.replicas[0]
    assert (back.view, back.active) == (1, True)
    assert not any("request" in group.timers[r] for r in range(4) if r != 0)
    assert any(isinstance(o, ViewEntered) and o.view == 1 for o in group.outputs[0])


def test_a_prepared_batch_is_carried_into_the_new_view() -> None:
    group = Group()
    group.block = lambda to, message: isinstance(message, Commit)
    group.request("client-a", "deposit a 7")
    group.run()
    prepared = group.replicas[2]._prepared[1]
    assert not any(group.seqs(r) for r in range(4))
    group.held.clear()  # those commits are lost; the primary goes silent
    group.block = lambda to, message: False
    group.down = {0}
    view_change_to_1(group)
    for r in (1, 2, 3):
        assert group.replicas[r].view == 1
        assert [(e.seq, e.digest) for e in group.executed[r]] == [(1, prepared.pre_prepare.digest)]
    nv = group.replicas[2].new_view
    assert nv is not None and [pp.seq for pp in nv.pre_prepares] == [1]


def test_a_replica_behind_a_group_that_goes_on_waits_before_suspecting_the_primary() -> None:
    group = Group()
    group.block = lambda to, message: to == 3 and isinstance(message, PrePrepare)
    group.request("client-a", "deposit a 5")
    group.run()
    assert group.accepted("client-a") == b"ok 5"
    behind = group.replicas[3]
    assert behind.last_executed == 0 and "request" in group.timers[3]
    # 2f+1 COMMITs for 1 show the group ordered what this replica waits on.
    group.fire(3, "request")
    assert (behind.view, behind.active) == (0, True)
    assert "request" in group.timers[3]
    # No further progress by the next expiry: now it suspects the primary.
    group.fire(3, "request")
    assert (behind.view, behind.active) == (1, False)


def test_the_view_change_timeout_doubles_until_a_new_view_makes_progress() -> None:
    group = Group()
    group.down = {0}
    group.block = lambda to, message: isinstance(message, NewView)  # view 1 never arrives
    group.request("client-a", "deposit a 7")
    group.run()
    view_change_to_1(group)
    assert [r.view for r in group.replicas[1:]] == [1, 1, 1]
    assert not group.replicas[2].active and "view-change" in group.timers[2]
    for r in (2, 3):
        group.fire(r, "view-change")
        assert group.replicas[r].timeout == 2.0 and group.replicas[r].view == 2
    group.run()  # replica 1 follows f + 1 view-changes to view 2; its primary (2) sends a new view
    assert group.replicas[1].view == 2
    group.release()
    for r in (1, 2, 3):
        assert group.replicas[r].active and group.replicas[r].view == 2
        assert group.seqs(r) == [1]
        assert group.replicas[r].timeout == 1.0  # progress in the new view resets it
    assert group.accepted("client-a") == b"ok 7"


def test_a_replica_that_moved_on_counts_towards_the_quorum_that_arms_the_timer() -> None:
    """Simulator seed 23712: view 1's primary is silent, and replica 2's VIEW-CHANGE
    for view 1 was lost on its way to 0 and 3. Replica 2 saw 2f + 1 and moved to
    view 2; 0 and 3 each held two for view 1 and one for view 2, armed no timer,
    and waited forever. Replica 2's VIEW-CHANGE for view 2 says it gave up on
    view 1 too, so it counts, and the group reaches view 2."""
    group = Group()
    group.down = {1}
    group.block = lambda to, message: (
        isinstance(message, PrePrepare)
        or (isinstance(message, ViewChange) and message.replica == 2 and message.view == 1)
    )
    group.request("client-a", "deposit a 7")
    group.run()
    for r in (0, 2, 3):
        group.fire(r, "request")
    group.run()
    assert [group.replicas[r].view for r in (0, 2, 3)] == [1, 1, 1]
    assert "view-change" in group.timers[2]
    assert not any("view-change" in group.timers[r] for r in (0, 3))
    group.held.clear()  # lost for good
    group.block = lambda to, message: False
    group.fire(2, "view-change")
    group.run()
    for r in (0, 3):
        assert group.replicas[r].view == 1 and "view-change" in group.timers[r]
        group.fire(r, "view-change")
    group.run()
    for r in (0, 2, 3):
        assert group.replicas[r].active and group.replicas[r].view == 2
        assert group.seqs(r) == [1]
    assert group.accepted("client-a") == b"ok 7"


def test_a_new_view_that_does_not_follow_from_its_proof_is_refused() -> None:
    group = Group()
    group.block = lambda to, message: isinstance(message, Commit | NewView)
    group.request("client-a", "deposit a 7")
    group.run()
    group.held.clear()
    group.down = {0}
    view_change_to_1(group)
    new_views = [m for to, m in group.held if isinstance(m, NewView)]
    assert new_views
    honest = new_views[0]
    assert len(honest.pre_prepares) == 1
    tampered = sign(group.keys, replace(honest, pre_prepares=()), "replica-1")
    wrong_signer = sign(group.keys, honest, "replica-2")
    thin = sign(group.keys, replace(honest, view_changes=honest.view_changes[:2]), "replica-1")
    backup = group.replicas[2]
    for message in (tampered, wrong_signer, thin):
        backup.handle(Receive(message))
    assert backup.dropped["bad-new-view"] == 2
    assert backup.dropped["bad-signature"] == 1
    assert not backup.active and backup.view == 1
    backup.handle(Receive(honest))
    assert backup.active


def test_forged_and_replayed_messages_are_dropped_and_counted() -> None:
    group = Group()
    group.request("client-a", "deposit a 7")
    group.run()
    keys = group.keys
    backup = group.replicas[1]
    digest = group.executed[1][0].digest
    # Replica 3 claims to be replica 2: the signature is 3's.
    forged = sign(keys, Prepare(0, 2, digest, 2), "replica-3")
    # Mallory signs for client-b.
    invented = sign(keys, Request("client-b", 1, b"deposit mallory 9"), "client-a")
    # A pre-prepare from a backup, and one altered after signing.
    not_primary = sign(keys, PrePrepare(0, 2, batch_digest(()), (), 2), "replica-2")
    pp = sign(keys, PrePrepare(0, 2, batch_digest(()), (), 0), "replica-0")
    altered = replace(pp, seq=3)
    for message in (forged, invented, not_primary, altered):
        backup.handle(Receive(message))
    assert backup.dropped["bad-signature"] == 3
    assert backup.dropped["not-primary"] == 1
    # Replays: every message replica 1 already received, again.
    before = (backup.last_executed, dict(group.apps[1].balances))
    replayed = [m for to, m in _delivered(group) if to == 1]
    outputs = [o for m in replayed for o in backup.handle(Receive(m))]
    assert not any(isinstance(o, Executed | Broadcast) for o in outputs)
    assert (backup.last_executed, group.apps[1].balances) == before
    assert "client-b" not in backup.pending


def _delivered(group: Group) -> list[tuple[int, Message]]:
    """Rebuild what the network carried to each replica from what each replica sent."""
    out: list[tuple[int, Message]] = []
    for r, outputs in group.outputs.items():
        for o in outputs:
            if isinstance(o, Broadcast):
                out += [(to, o.message) for to in range(4) if to != r]
    return out


def test_a_replica_that_fell_behind_installs_the_certified_state() -> None:
    group = Group()
    group.down = {3}
    for i in range(4):
        assert group.call("client-a", f"deposit a {i + 1}") is not None
    assert group.replicas[3].last_executed == 0
    group.down = set()
    for i in range(2):  # sequence numbers 5 and 6 are beyond 3's window; checkpoint 6 is not
        assert group.call("client-b", f"deposit b {i + 1}") is not None
    lagging = group.replicas[3]
    installed = [o for o in group.outputs[3] if isinstance(o, StateInstalled)]
    assert [o.seq for o in installed] == [6]
    assert lagging.last_executed == 6 and lagging.stable.seq == 6
    assert group.apps[3].balances == group.apps[0].balances == {"a": 10, "b": 3}
    assert installed[0].state_digest == group.replicas[0].stable.digest
    group.request("client-c", "deposit c 1")  # and it takes part again
    group.run()
    assert group.seqs(3) == [7]


def _chunked(snapshot: bytes, size: int) -> list[bytes]:
    return [snapshot[i : i + size] for i in range(0, len(snapshot), size)] or [b""]


def test_a_snapshot_that_does_not_match_its_certificate_is_refused() -> None:
    group = Group()
    for i in range(2):
        assert group.call("client-a", f"deposit a {i + 1}") is not None
    honest = group.replicas[0]
    proof = honest.stable.proof

    def fresh() -> Replica:
        return Replica(
            group.config, 3, group.keys.signer("replica-3"), group.keys.verifier, Accounts()
        )

    def reply(index: int, state: list[bytes], clients: tuple[ClientRecord, ...] = ()) -> Receive:
        """Chunk `index` of the reply table (one chunk) followed by `state`'s chunks."""
        chunks = [encode_records(clients), *state]
        digests = tuple(hashlib.sha256(c).digest() for c in chunks)
        message = StateReply(2, index, digests, 1, chunks[index], proof, 0)
        return Receive(sign(group.keys, message, "replica-0"))

    # A faulty holder's snapshot, consistent with the chunk digests it lists: the
    # restored state does not hash to the certified digest, and nothing changes.
    for lie in (b'{"mallory": 1000}', b"\xff not json"):
        liar = fresh()
        liar.handle(reply(0, [lie]))
        liar.handle(reply(1, [lie]))
        assert liar.dropped["bad-snapshot"] == 1 and liar.last_executed == 0
        assert liar.app.snapshot() == b"{}"
    # A chunk that is not the one its reply's list names is refused on arrival.
    good = honest._snapshots[2]
    state = _chunked(good.state, 3)
    assert len(state) > 2
    tampered = fresh()
    chunks = [encode_records(good.clients), *state]
    digests = tuple(hashlib.sha256(c).digest() for c in chunks)
    forged = StateReply(2, 0, digests, 1, b"XXXX", proof, 0)
    tampered.handle(Receive(sign(group.keys, forged, "replica-0")))
    assert tampered.dropped["bad-state-chunk"] == 1
    # The honest state, chunk by chunk: installed once the last one is in.
    installing = fresh()
    outputs: list[Output] = []
    for index in range(len(chunks)):
        outputs += installing.handle(reply(index, state, good.clients))
    assert [o.seq for o in outputs if isinstance(o, StateInstalled)] == [2]
    assert installing.app.snapshot() == group.apps[0].snapshot()
    assert installing.clients == honest.clients


def _tiny_chunks() -> Group:
    """A group whose snapshots (a few dozen bytes) travel in chunks of 8."""
    return Group(
        Config(
            n=4, checkpoint_interval=2, window=4, batch_size=3, max_in_flight=1,
            state_chunk_bytes=8,
        )
    )  # fmt: skip


def _catch_up(group: Group, r: int) -> Replica:
    """Let replica `r`'s state timer run until it has fetched what it was behind by."""
    behind = group.replicas[r]
    while "state" in group.timers[r] and behind.last_executed < behind.stable.seq:
        group.fire(r, "state")
        group.run()
    return behind


def test_a_replica_far_behind_fetches_the_state_in_chunks_and_catches_up() -> None:
    group = _tiny_chunks()
    group.down = {3}
    for i in range(6):
        assert group.call("client-a", f"deposit k{i} {i + 1}") is not None
    group.down = set()
    for i in range(2):  # the next checkpoint to become stable shows replica 3 it is behind
        assert group.call("client-a", f"deposit a {i + 1}") is not None
    behind = _catch_up(group, 3)
    assert behind.last_executed == group.replicas[0].last_executed
    assert group.apps[3].balances == group.apps[0].balances
    asked = [
        o.message for o in group.outputs[3]
        if isinstance(o, Send) and isinstance(o.message, StateRequest)
    ]  # fmt: skip
    assert len({m.index for m in asked}) > 1  # the snapshot came in more than one chunk


@pytest.mark.parametrize("n", [4, 7])
def test_group_sizes(n: int) -> None:
    group = Group(Config(n=n, checkpoint_interval=2, window=4, batch_size=2, max_in_flight=1))
    group.request("client-a", "deposit a 3")
    group.run()
    assert all(group.seqs(r) == [1] for r in range(n))
    assert group.accepted("client-a") == b"ok 3"


def test_config_refuses_a_group_that_is_not_3f_plus_1() -> None:
    for n in (3, 5, 6):
        with pytest.raises(ValueError):
            Config(n=n)
    with pytest.raises(ValueError):
        Config(checkpoint_interval=8, window=8)


def test_a_replica_a_little_behind_fetches_only_the_chunks_it_lacks() -> None:
    group = _tiny_chunks()
    for i in range(4):
        assert group.call("client-a", f"deposit k{i} {i + 1}") is not None
    group.down = {3}
    for _ in range(4):  # only the last key changes: the snapshot's head stays the same
        assert group.call("client-a", "deposit z9 1") is not None
    group.down = set()
    for _ in range(2):
        assert group.call("client-a", "deposit z9 1") is not None
    behind = _catch_up(group, 3)
    assert behind.last_executed == group.replicas[0].last_executed
    assert group.apps[3].balances == group.apps[0].balances
    replies = [m for to, m in _sent(group) if to == 3 and isinstance(m, StateReply)]
    assert replies
    # The first reply brings chunk 0 with the list; of the rest, only those not held.
    fetched = {m.index for m in replies} - {0}
    assert fetched and len(fetched) < len(replies[0].chunks) - 1


def _sent(group: Group) -> list[tuple[int, Message]]:
    """Every point-to-point message the replicas sent, with its destination."""
    return [
        (o.to, o.message)
        for outputs in group.outputs.values()
        for o in outputs
        if isinstance(o, Send)
    ]


@pytest.mark.parametrize(
    "config",
    [
        Config(
            n=4,
            checkpoint_interval=2,
            window=4,
            batch_size=3,
            max_operation_bytes=300,
            state_chunk_bytes=1024,
        ),
        Config(
            n=7,
            checkpoint_interval=4,
            window=8,
            batch_size=2,
            max_operation_bytes=100,
            state_chunk_bytes=1024,
        ),
        Config(n=4, checkpoint_interval=8, window=16, batch_size=8),
    ],
)
def test_the_largest_new_view_fits_the_bound_replica_links_are_made_for(config: Config) -> None:
    """A NEW-VIEW from 2f+1 VIEW-CHANGEs that each prepared the whole window, every
    batch full of the largest requests: the transport must carry it, or a view
    change under load would be lost and the group stall."""
    op = b"\xff" * config.max_operation_bytes
    request = Request("gateway/gw-1#31", 2**62, op, bytes(64))

    def pre_prepare(seq: int) -> PrePrepare:
        return PrePrepare(9, seq, bytes(32), (request,) * config.batch_size, 1, bytes(64))

    prepares = tuple(Prepare(9, 1, bytes(32), r, bytes(64)) for r in range(2 * config.f))
    proof = tuple(Checkpoint(8, bytes(32), r, bytes(64)) for r in range(config.quorum))
    certs = tuple(PreparedCert(pre_prepare(seq), prepares) for seq in range(9, 9 + config.window))
    view_change = ViewChange(10, 8, bytes(32), proof, certs, 2, bytes(64))
    new_view = NewView(
        10,
        (view_change,) * config.quorum,
        tuple(pre_prepare(seq) for seq in range(9, 9 + config.window)),
        2,
        bytes(64),
    )
    size = len(encode(new_view))
    # The bound holds, and is not so loose that it says nothing (chunks are smaller).
    assert 2 * config.state_chunk_bytes < size <= config.largest_message_bytes
    assert size > 0.5 * config.largest_message_bytes


def test_a_group_whose_new_view_could_outgrow_any_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="NEW-VIEW"):
        Config(n=4, checkpoint_interval=512, window=1024, batch_size=64)
