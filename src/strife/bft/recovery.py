"""Between a replica and its journal: what to save, and how to come back from it.

`stable_state` reads a replica's stable checkpoint with its snapshot in the
journal's shape; `resume` hands a journal's checkpoint and log to a freshly
built replica (`Replica.resume`, which re-executes the log through its own
execution path).
"""

from __future__ import annotations

from strife.bft.effects import Output
from strife.bft.journal import Saved
from strife.bft.log import Snapshot, Stable
from strife.bft.replica import Replica

__all__ = ["resume", "stable_state"]


def stable_state(replica: Replica) -> Saved | None:
    """The stable checkpoint with its snapshot, once this replica holds it (ran or installed)."""
    saved = replica.saved_checkpoint()
    if saved is None:
        return None
    stable, snapshot = saved
    return Saved(stable.seq, stable.digest, stable.proof, snapshot.state, snapshot.clients, ())


def resume(replica: Replica, saved: Saved) -> list[Output]:
    """Restore `saved` into a replica that has done nothing yet; the outputs of re-execution.

    Raises ValueError when the journal's snapshot does not hash to its digest.
    """
    stable = Stable(saved.seq, saved.digest, saved.proof)
    snapshot = Snapshot(saved.seq, saved.digest, saved.snapshot, saved.clients)
    return replica.resume(stable, snapshot, saved.log)
