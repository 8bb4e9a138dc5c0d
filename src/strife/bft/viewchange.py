"""View change: replacing a primary that is faulty or slow (the paper's section 4.4).

A replica whose request timer expires multicasts VIEW-CHANGE for the next view
with its stable checkpoint and what prepared above it; it joins a higher view
when f+1 others ask for one; it starts the timer that moves it one view further
(with a doubled timeout) only once 2f+1 replicas asked for its view or a later
one. The new primary derives the new view's pre-prepares from 2f+1
view-changes (`certificates.carried_over`) and every backup derives them again
before entering the view, so what committed in an earlier view is carried into
it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strife.bft.certificates import carried_over, valid_new_view, valid_view_change
from strife.bft.effects import Broadcast, Output, Send, ViewEntered
from strife.bft.log import KEPT_PER_SENDER
from strife.bft.messages import NewView, PrePrepare, ViewChange

if TYPE_CHECKING:
    from strife.bft.replica import Replica

__all__ = ["on_new_view", "on_view_change", "resend_checkpoint", "start_view_change"]


def resend_checkpoint(replica: Replica, out: list[Output]) -> None:
    """Our latest checkpoint again: one whose messages were lost would pin the high water mark."""
    mine = replica._my_checkpoint
    if mine is not None and mine.seq > replica.stable.seq:
        out.append(Broadcast(mine))


def start_view_change(replica: Replica, view: int, out: list[Output]) -> None:
    """Leave the current view for `view`: stop agreeing, and say what we hold."""
    assert view > replica.view, (view, replica.view)
    replica.view = view
    replica.active = False
    replica._filling = False
    replica._slots.clear()
    replica._assigned.clear()
    replica._escalation_armed = False
    vc = replica._sign(
        ViewChange(
            view,
            replica.stable.seq,
            replica.stable.digest,
            replica.stable.proof,
            tuple(replica._prepared[n] for n in sorted(replica._prepared)),
            replica.id,
        )
    )
    replica._my_view_change = vc
    replica._cancel_timer("request", out)
    replica._cancel_timer("view-change", out)
    out.append(Broadcast(vc))
    resend_checkpoint(replica, out)
    replica._set_timer("resend", replica.config.timeout, out)
    _record(replica, vc, out)


def on_view_change(replica: Replica, vc: ViewChange, out: list[Output]) -> None:
    """A peer's VIEW-CHANGE: help it if it is behind, else check it from scratch and count it."""
    if vc.view < replica.view or (vc.view == replica.view and replica.active):
        # The sender is behind: our new view, if we have one, brings it here.
        if replica.active and replica.new_view is not None and replica.new_view.view >= vc.view:
            out.append(Send(vc.replica, replica.new_view))
        else:
            replica.dropped["old-view-change"] += 1
        return
    if not valid_view_change(replica.config, replica._verifier, vc):
        replica._drop("bad-view-change", vc, out)
        return
    _record(replica, vc, out)


def _record(replica: Replica, vc: ViewChange, out: list[Output]) -> None:
    """Count a valid view-change; join, arm the timer or send the new view as it allows."""
    by_replica = replica._view_changes.setdefault(vc.view, {})
    if by_replica.setdefault(vc.replica, vc) != vc:
        replica._drop("conflicting-view-change", vc, out)
        return
    views = sorted(v for v, held in replica._view_changes.items() if vc.replica in held)
    for view in views[:-KEPT_PER_SENDER]:
        del replica._view_changes[view][vc.replica]
    # f+1 replicas ahead of us include an honest one: join the lowest view they want.
    ahead = {
        r: v for v, held in sorted(replica._view_changes.items(), reverse=True)
        if v > replica.view for r in held
    }  # fmt: skip
    ahead.pop(replica.id, None)
    if len(ahead) >= replica.config.weak:
        start_view_change(replica, min(ahead.values()), out)
        return
    if replica.active:
        return
    # A replica asking for a later view has given up on this one as surely as
    # one asking for it: it counts towards the quorum that arms the timer, or
    # replicas whose messages for this view were lost could wait for it forever.
    given_up = {r for v, held in replica._view_changes.items() if v >= replica.view for r in held}
    if len(given_up) >= replica.config.quorum and not replica._escalation_armed:
        replica._escalation_armed = True
        replica._set_timer("view-change", replica.timeout, out)
    gathered = replica._view_changes.get(replica.view, {})
    if len(gathered) < replica.config.quorum:
        return
    if replica.is_primary and replica.view not in replica._new_view_sent:
        _send_new_view(replica, gathered, out)


def _send_new_view(replica: Replica, gathered: dict[int, ViewChange], out: list[Output]) -> None:
    # Our own view-change first: it carries our stable checkpoint, from which
    # we will go on proposing.
    order = sorted(gathered, key=lambda r: (r != replica.id, r))
    chosen = tuple(gathered[r] for r in order[: replica.config.quorum])
    _, carried = carried_over(replica.config, chosen)
    pre_prepares = tuple(
        replica._sign(PrePrepare(replica.view, seq, digest, batch, replica.id))
        for seq, digest, batch in carried
    )
    nv = replica._sign(NewView(replica.view, chosen, pre_prepares, replica.id))
    replica._new_view_sent.add(replica.view)
    out.append(Broadcast(nv))
    _enter_view(replica, nv, out)


def on_new_view(replica: Replica, nv: NewView, out: list[Output]) -> None:
    """Enter a later view, if its NEW-VIEW proves itself (for one we missed, too)."""
    if nv.view < replica.view or (nv.view == replica.view and replica.active):
        replica.dropped["old-new-view"] += 1
        return
    if not valid_new_view(replica.config, replica._verifier, nv):
        replica._drop("bad-new-view", nv, out)
        return
    _enter_view(replica, nv, out)


def _enter_view(replica: Replica, nv: NewView, out: list[Output]) -> None:
    """Adopt its checkpoint if ahead, prepare what it carries over, replay what waited for it."""
    replica.view = nv.view
    replica.active = True
    replica.new_view = nv
    replica._escalation_armed = False
    replica._cancel_timer("view-change", out)
    replica._cancel_timer("resend", out)
    replica._slots.clear()
    replica._assigned.clear()
    replica._view_changes = {v: held for v, held in replica._view_changes.items() if v > nv.view}
    low = max(vc.stable_seq for vc in nv.view_changes)
    if low > replica.stable.seq:
        source = next(vc for vc in nv.view_changes if vc.stable_seq == low)
        replica._make_stable(low, source.stable_digest, source.checkpoint_proof, out)
    replica.next_seq = max([replica.stable.seq, low] + [pp.seq for pp in nv.pre_prepares])
    out.append(ViewEntered(nv.view))
    for pp in nv.pre_prepares:
        if replica._in_window(pp.seq):
            replica._accept_pre_prepare(pp, out)
    buffered, replica._future = replica._future, []
    for message in buffered:
        if message.view >= replica.view:
            replica._on_agreement(message, out)
    for seq in sorted(replica._slots):
        replica._advance(seq, out)
    replica._restart_request_timer(out)
