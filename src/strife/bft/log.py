"""What a replica keeps between events: per-sequence-number agreement, stable
checkpoints and the snapshots taken at them."""

from __future__ import annotations

from dataclasses import dataclass, field

from strife.bft.messages import Checkpoint, ClientRecord, Commit, Prepare, PrePrepare

__all__ = ["KEPT_PER_SENDER", "Slot", "Snapshot", "Stable"]

KEPT_PER_SENDER = 3
"""Checkpoints and view-changes kept per peer above what is settled: enough for
an honest peer, and a bound on what a faulty one can make us hold."""


@dataclass
class Slot:
    """One sequence number's agreement in the current view."""

    pre_prepare: PrePrepare | None = None
    prepares: dict[int, Prepare] = field(default_factory=dict)
    commits: dict[int, Commit] = field(default_factory=dict)
    prepared: bool = False
    committed: bool = False


@dataclass(frozen=True)
class Stable:
    """The stable checkpoint (the low water mark) and the 2f+1 checkpoints proving it."""

    seq: int
    digest: bytes
    proof: tuple[Checkpoint, ...]


@dataclass(frozen=True)
class Snapshot:
    """This replica's state at one of its checkpoints, kept to hand to a replica behind."""

    seq: int
    digest: bytes
    state: bytes
    clients: tuple[ClientRecord, ...]
