"""Byzantine behaviours for a replica process (`strife-bank-replica --byzantine NAME`).

The simulator's behaviours (`strife.bft.byzantine`) rewrite what the honest
code sends and may refuse to listen; a replica process wears one the same
way, on the real wire. The names here are those the tests and the demo use;
`replay` is this module's own: it sends again what it heard from others and
what it said itself, to every replica, as a compromised machine replaying
captured traffic would.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

from strife.bft.byzantine import BEHAVIOURS, Behaviour, Wire, make_behaviour
from strife.bft.config import Config
from strife.bft.messages import Message
from strife.bft.signing import Signer

__all__ = ["NAMES", "Replay", "behaviour"]

_ALIASES = {
    "equivocate": "equivocate",
    "wrong-results": "lie",
    "silent": "silent",
    "slow-primary": "slow",
    "forge": "forge",
    "collude": "collude",
    "amnesia": "amnesia",
}
NAMES = (*sorted(_ALIASES), "replay")


class Replay:
    """Honest traffic, and every so often a burst of old messages sent again."""

    name = "replay"

    def __init__(self, config: Config, replica: int, rng: random.Random) -> None:
        self.config = config
        self.replica = replica
        self.rng = rng
        self.heard: deque[Message] = deque(maxlen=64)

    def hears(self, message: Message) -> bool:
        self.heard.append(message)
        return True

    def speaks(self, wires: Sequence[Wire]) -> list[Wire]:
        out = list(wires)
        for wire in wires:
            self.heard.append(wire.message)
        if self.heard and self.rng.random() < 0.5:
            others = [r for r in range(self.config.n) if r != self.replica]
            for _ in range(4):
                out.append(Wire(self.rng.choice(others), self.rng.choice(self.heard)))
        return out


def behaviour(name: str, config: Config, replica: int, signer: Signer, seed: int = 0) -> Behaviour:
    """The behaviour called `name` (one of NAMES) for replica `replica`."""
    rng = random.Random(f"strife-bft-replica/{seed}/{replica}")
    if name == "replay":
        return Replay(config, replica, rng)
    core = _ALIASES.get(name)
    if core is None or core not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {name!r}: one of {', '.join(NAMES)}")
    return make_behaviour(core, config, replica, signer, rng)
