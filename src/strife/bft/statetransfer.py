"""State transfer: catching up to a stable checkpoint beyond what this replica executed.

The log below a stable checkpoint is gone everywhere, so a replica that fell
behind it (partitioned, or it missed messages) cannot execute its way there.
It asks a replica of the checkpoint's proof for the snapshot, and installs a
reply only if its 2f+1 checkpoints verify and the snapshot, restored, hashes
to their digest (with the reply table that came with it); otherwise the
application is put back as it was and the next replica is asked when the
timer expires. A faulty replica can delay a state transfer, never corrupt one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strife.bft.certificates import valid_checkpoint_proof
from strife.bft.effects import Output, Send, StateInstalled
from strife.bft.log import Snapshot
from strife.bft.messages import StateReply, StateRequest, state_digest

if TYPE_CHECKING:
    from strife.bft.replica import Replica

__all__ = ["fetch_state", "on_state_reply", "on_state_request"]


def fetch_state(replica: Replica, out: list[Output]) -> None:
    """Ask the next replica of the stable checkpoint's proof for its snapshot."""
    holders = [c.replica for c in replica.stable.proof if c.replica != replica.id]
    assert holders, "a stable checkpoint we did not execute was certified by others"
    target = holders[replica._fetch_attempt % len(holders)]
    replica._fetch_attempt += 1
    out.append(Send(target, replica._sign(StateRequest(replica.stable.seq, replica.id))))
    replica._set_timer("state", replica.timeout, out)


def on_state_request(replica: Replica, request: StateRequest, out: list[Output]) -> None:
    """Hand over our stable snapshot with its proof, if we hold one at or beyond `request.seq`."""
    snapshot = replica._snapshots.get(replica.stable.seq)
    if snapshot is None or replica.stable.seq < request.seq or replica.stable.seq == 0:
        replica._drop("no-snapshot", request, out)
        return
    reply = StateReply(
        snapshot.seq, snapshot.state, snapshot.clients, replica.stable.proof, replica.id
    )
    out.append(Send(request.replica, replica._sign(reply)))


def on_state_reply(replica: Replica, reply: StateReply, out: list[Output]) -> None:
    """Install a snapshot that its certificate vouches for; put everything back otherwise."""
    if reply.seq <= replica.last_executed or not reply.proof:
        replica.dropped["unneeded-state"] += 1
        return
    digest = reply.proof[0].state_digest
    if not valid_checkpoint_proof(
        replica.config, replica._verifier, reply.seq, digest, reply.proof
    ):
        replica._drop("bad-state-proof", reply, out)
        return
    previous = replica.app.snapshot()
    try:
        replica.app.restore(reply.snapshot)
        installed = state_digest(replica.app.digest(), reply.clients) == digest
    except ValueError:
        installed = False
    if not installed:
        replica.app.restore(previous)
        replica._drop("bad-snapshot", reply, out)
        return
    replica.clients = {record.client: record for record in reply.clients}
    replica.pending = {
        c: r for c, r in replica.pending.items() if r.timestamp > replica._executed_ts(c)
    }
    replica.last_executed = reply.seq
    clients = replica._client_table()
    replica._snapshots[reply.seq] = Snapshot(reply.seq, digest, reply.snapshot, clients)
    if reply.seq > replica.stable.seq:
        replica._make_stable(reply.seq, digest, reply.proof, out)
    replica._slots = {n: s for n, s in replica._slots.items() if n > reply.seq}
    if replica.last_executed >= replica.stable.seq:
        replica._cancel_timer("state", out)
    out.append(StateInstalled(reply.seq, digest))
    replica._execute(out)
    replica._restart_request_timer(out)
