"""Between a replica and its journal: what to save, and how to come back from it.

`stable_state` reads a replica's stable checkpoint with its snapshot (what the
journal keeps); `resume` puts a freshly built replica back at a saved
checkpoint and re-executes the requests logged above it through the replica's
own execution path, so replies, the reply table and any checkpoint on the way
are exactly what they were. A resumed replica starts in view 0 and learns the
group's view as any replica that missed a view change does (its view-change
is answered with the group's NEW-VIEW).
"""

from __future__ import annotations

from strife.bft.effects import Output
from strife.bft.journal import Saved
from strife.bft.log import Slot, Snapshot, Stable
from strife.bft.messages import PrePrepare, batch_digest, state_digest
from strife.bft.replica import Replica

__all__ = ["resume", "stable_state"]


def stable_state(replica: Replica) -> Saved | None:
    """The stable checkpoint with its snapshot, once this replica holds it (ran or installed)."""
    stable = replica.stable
    snapshot = replica._snapshots.get(stable.seq)
    if snapshot is None or replica.last_executed < stable.seq:
        return None
    return Saved(stable.seq, stable.digest, stable.proof, snapshot.state, snapshot.clients, ())


def resume(replica: Replica, saved: Saved) -> list[Output]:
    """Restore `saved` into a replica that has done nothing yet; the outputs of re-execution.

    Raises ValueError when the journal's snapshot does not hash to its digest.
    """
    assert replica.last_executed == 0 and not replica.pending, "resume a fresh replica only"
    replica.app.restore(saved.snapshot)
    if state_digest(replica.app.digest(), saved.clients) != saved.digest:
        raise ValueError("the journal's checkpoint does not match its digest")
    replica.clients = {record.client: record for record in saved.clients}
    replica.last_executed = saved.seq
    replica.stable = Stable(saved.seq, saved.digest, saved.proof)
    replica._snapshots = {
        saved.seq: Snapshot(saved.seq, saved.digest, saved.snapshot, saved.clients)
    }
    primary = replica.config.primary(0)
    for seq, requests in saved.log:
        pp = PrePrepare(0, seq, batch_digest(requests), requests, primary)
        replica._slots[seq] = Slot(pre_prepare=pp, committed=True)
    out: list[Output] = []
    replica._execute(out)
    replica.next_seq = replica.last_executed
    return out
