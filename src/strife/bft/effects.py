"""What goes into a replica (events) and what comes out of it (outputs).

The replica does no I/O: its shell (the simulator, or a gRPC server) delivers
`Receive` and `TimerExpired` events and carries out the outputs in order:
send, reply, set or cancel a timer. The rest of the outputs report what
happened, for the shell's log and the simulator's checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from strife.bft.messages import Message, Reply, Request

__all__ = [
    "Broadcast",
    "CancelTimer",
    "CheckpointTaken",
    "Dropped",
    "Event",
    "Executed",
    "Output",
    "Receive",
    "Send",
    "SendReply",
    "SetTimer",
    "StateInstalled",
    "TimerExpired",
    "TimerKind",
    "ViewEntered",
]

TimerKind = str
"""`request` (waiting on the primary), `view-change` (waiting on a new view),
`resend` (repeat our view-change), `state` (waiting on a snapshot)."""


@dataclass(frozen=True)
class Receive:
    message: Message


@dataclass(frozen=True)
class TimerExpired:
    kind: TimerKind


Event = Receive | TimerExpired


@dataclass(frozen=True)
class Send:
    to: int
    message: Message


@dataclass(frozen=True)
class Broadcast:
    """To every other replica."""

    message: Message


@dataclass(frozen=True)
class SendReply:
    reply: Reply


@dataclass(frozen=True)
class SetTimer:
    """Start (or restart) the timer of this kind to expire after `after` seconds."""

    kind: TimerKind
    after: float


@dataclass(frozen=True)
class CancelTimer:
    kind: TimerKind


@dataclass(frozen=True)
class Executed:
    """Sequence number `seq` (batch `digest`) was executed; `results` for the requests that ran.

    A request the batch repeats (already executed for its client) is skipped,
    so `results` may be shorter than the batch, or empty for the null batch.
    """

    seq: int
    digest: bytes
    results: tuple[tuple[Request, bytes], ...]


@dataclass(frozen=True)
class CheckpointTaken:
    seq: int
    state_digest: bytes


@dataclass(frozen=True)
class StateInstalled:
    """A certified snapshot replaced the state: everything up to `seq` is now executed."""

    seq: int
    state_digest: bytes


@dataclass(frozen=True)
class ViewEntered:
    view: int


@dataclass(frozen=True)
class Dropped:
    """A received message that changed nothing, and why (counted in `Replica.dropped`)."""

    reason: str
    message: Message


Output = (
    Send | Broadcast | SendReply | SetTimer | CancelTimer | Executed | CheckpointTaken
    | StateInstalled | ViewEntered | Dropped
)  # fmt: skip
