"""Byzantine replicas for the simulator: the honest code underneath, lies on the wire.

A faulty replica runs the real `Replica` and its behaviour rewrites what it
sends (and may refuse to listen). It holds only its own signing key, as a
compromised machine would: whatever it forges in another's name, or
alters after signing, fails verification at honest replicas and clients.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from strife.bft.config import Config
from strife.bft.messages import (
    EMPTY_BATCH_DIGEST,
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    StateReply,
    ViewChange,
    batch_digest,
)
from strife.bft.signing import Signer

__all__ = ["BEHAVIOURS", "Behaviour", "Wire", "make_behaviour"]


@dataclass(frozen=True)
class Wire:
    """One message on its way: to a replica (int) or a client (str), after `delay` more seconds."""

    to: int | str
    message: Message
    delay: float = 0.0


class Behaviour(Protocol):
    name: str

    def hears(self, message: Message) -> bool:
        """Whether the replica gets to see this incoming message at all."""
        ...

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        """What actually leaves the replica, given what the honest code sent."""
        ...


class _Base:
    name = "honest"

    def __init__(self, config: Config, replica: int, signer: Signer, rng: random.Random) -> None:
        self.config = config
        self.replica = replica
        self.signer = signer
        self.rng = rng

    def hears(self, message: Message) -> bool:
        return True

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        return list(wires)

    def resign(self, message: Message) -> Message:
        return replace(message, signature=self.signer.sign(message.payload))


class Silent(_Base):
    """Crashed, or mute on purpose: hears nothing, says nothing."""

    name = "silent"

    def hears(self, message: Message) -> bool:
        return False

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        return []


class Equivocate(_Base):
    """As primary, a different pre-prepare for one sequence number to half the backups;
    as a new primary, a new view whose pre-prepares do not follow from its proof."""

    name = "equivocate"

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        out = []
        for wire in wires:
            message = wire.message
            if isinstance(message, PrePrepare) and isinstance(wire.to, int) and wire.to % 2:
                batch = message.batch[::-1] if len(message.batch) > 1 else ()
                if batch_digest(batch) == message.digest:
                    batch = message.batch[1:]
                forged = replace(message, batch=batch, digest=batch_digest(batch))
                wire = replace(wire, message=self.resign(forged))
            elif isinstance(message, NewView):
                pps = message.pre_prepares
                tampered = (
                    pps[:-1]
                    if pps
                    else (PrePrepare(message.view, 1, EMPTY_BATCH_DIGEST, (), self.replica),)
                )
                wire = replace(wire, message=self.resign(replace(message, pre_prepares=tampered)))
            out.append(wire)
        return out


class Lie(_Base):
    """Wrong results to clients, wrong checkpoint digests, a bogus snapshot on request.

    Every liar tells the same lie, so several of them together vouch for it.
    """

    name = "lie"

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        out = []
        for wire in wires:
            message = wire.message
            if isinstance(message, Reply):
                message = self.resign(replace(message, result=b"forged " + message.result))
            elif isinstance(message, Checkpoint):
                digest = hashlib.sha256(b"lie" + message.state_digest).digest()
                message = self.resign(replace(message, state_digest=digest))
            elif isinstance(message, StateReply):
                message = self.resign(replace(message, chunk=b'{"mallory": 1000000}'))
            out.append(replace(wire, message=message))
        return out


class Slow(_Base):
    """A primary that proposes, but only long after the backups' timers run out."""

    name = "slow"

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        lag = 4 * self.config.timeout
        return [
            replace(w, delay=w.delay + lag) if isinstance(w.message, PrePrepare) else w
            for w in wires
        ]


class Forge(_Base):
    """Honest traffic plus forgeries: other replicas' names, broken signatures,
    invented client requests, and replays of messages it received."""

    name = "forge"

    def __init__(self, config: Config, replica: int, signer: Signer, rng: random.Random) -> None:
        super().__init__(config, replica, signer, rng)
        self.heard: list[Message] = []

    def hears(self, message: Message) -> bool:
        self.heard.append(message)
        if len(self.heard) > 64:
            del self.heard[: len(self.heard) - 64]
        return True

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        out = list(wires)
        targets = [r for r in range(self.config.n) if r != self.replica]
        for wire in wires:
            if self.rng.random() > 0.4 or not isinstance(wire.to, int):
                continue
            message = wire.message
            kind = self.rng.randrange(4)
            if kind == 0 and not isinstance(message, Request):
                other = self.rng.choice(targets)
                message = self.resign(replace(message, replica=other))
            elif kind == 1:
                flipped = bytes([message.signature[0] ^ 1]) + message.signature[1:]
                message = replace(message, signature=flipped)
            elif kind == 2 and self.heard:
                message = self.rng.choice(self.heard)
            else:
                client = f"client-{self.rng.randrange(4)}"
                invented = Request(client, 10**6 + self.rng.randrange(1000), b"deposit mallory 99")
                message = self.resign(invented)
            out.append(Wire(self.rng.choice(targets), message, wire.delay))
        return out


class Collude(_Base):
    """Votes for every proposal it sees, conflicting ones included: a PREPARE and a
    COMMIT, validly signed, for each pre-prepare (an equivocating primary's accomplice)."""

    name = "collude"

    def __init__(self, config: Config, replica: int, signer: Signer, rng: random.Random) -> None:
        super().__init__(config, replica, signer, rng)
        self.seen: list[PrePrepare] = []

    def hears(self, message: Message) -> bool:
        if isinstance(message, PrePrepare):
            self.seen.append(message)
        return True

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        out = list(wires)
        seen, self.seen = self.seen, []
        for pp in seen:
            for vote in (Prepare, Commit):
                message = self.resign(vote(pp.view, pp.seq, pp.digest, self.replica))
                out += [Wire(r, message) for r in range(self.config.n) if r != self.replica]
        return out


class Amnesia(_Base):
    """View-changes that claim nothing prepared here: validly signed, and a lie by omission
    that leaves the new view to the other view-changes in its proof."""

    name = "amnesia"

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        return [
            replace(w, message=self.resign(replace(w.message, prepared=())))
            if isinstance(w.message, ViewChange) and w.message.prepared
            else w
            for w in wires
        ]


BEHAVIOURS: dict[str, type[_Base]] = {
    b.name: b for b in (Silent, Equivocate, Lie, Slow, Forge, Collude, Amnesia)
}  # fmt: skip


def make_behaviour(
    name: str, config: Config, replica: int, signer: Signer, rng: random.Random
) -> Behaviour:
    return BEHAVIOURS[name](config, replica, signer, rng)
