"""The fault mix: how hostile one run's world is, each kind with its own knob.

Each seed draws its own mix ("swarm testing"): every kind of fault is
switched on or off at random and, when on, given a random strength, so some
runs are all message loss and others all crashes, and combinations that a
single fixed mix would almost never produce come up regularly.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace

# Each kind of fault: (chance it is on in a seed, weakest, strongest).
SWARM: dict[str, tuple[float, float, float]] = {
    "drop": (0.6, 0.005, 0.15),
    "duplicate": (0.4, 0.005, 0.1),
    "delay": (0.5, 0.005, 0.1),
    "reorder": (0.5, 0.05, 0.5),
    "gateway_crash": (0.6, 0.02, 0.4),
    "bank_crash": (0.4, 0.02, 0.3),
    "partition": (0.4, 0.02, 0.4),
    "slow_disk": (0.3, 0.02, 0.3),
    "client_cancel": (0.5, 0.02, 0.3),
    "hedge": (0.3, 0.02, 0.3),
    "lookup": (0.5, 0.2, 1.0),
}


@dataclass(frozen=True)
class FaultMix:
    drop: float = 0.0
    """Probability that a message (request or reply) is lost."""
    duplicate: float = 0.0
    """Probability that a request is delivered twice."""
    delay: float = 0.0
    """Probability that a message takes long (up to `delay_max_s`), past most deadlines."""
    delay_max_s: float = 3.0
    reorder: float = 0.0
    """Probability of extra jitter (a few ms), so messages overtake each other."""
    gateway_crash: float = 0.0
    """Gateway crashes per virtual second (each replica restarts after a while)."""
    bank_crash: float = 0.0
    """Bank server crashes per virtual second (all banks it hosts; ledgers survive)."""
    partition: float = 0.0
    """Partitions per virtual second: two nodes cannot reach each other for a while."""
    slow_disk: float = 0.0
    """Slow-disk episodes per virtual second: one store's writes take 100x longer."""
    client_cancel: float = 0.0
    """Probability that a client gives up on a call before its deadline."""
    hedge: float = 0.0
    """Probability that a client sends one attempt to two replicas at once."""
    lookup: float = 0.0
    """Probability that a client, having heard nothing final, asks GetPayment
    (at any replica) before sending the key again; it acts on that answer."""
    deadline_min_s: float = 0.05
    deadline_max_s: float = 5.0
    """A client's deadline for one call, uniform in [min, max]."""

    @classmethod
    def draw(cls, rng: random.Random) -> FaultMix:
        knobs: dict[str, float] = {}
        for kind, (chance, low, high) in SWARM.items():
            knobs[kind] = round(rng.uniform(low, high), 4) if rng.random() < chance else 0.0
        return cls(
            **knobs,
            delay_max_s=round(rng.uniform(0.5, 4.0), 2),
            deadline_min_s=round(rng.uniform(0.01, 0.5), 3),
            deadline_max_s=round(rng.uniform(0.5, 6.0), 2),
        )

    def calm(self) -> FaultMix:
        """No more faults: what the world heals to before quiescence."""
        return replace(
            self,
            drop=0.0,
            duplicate=0.0,
            delay=0.0,
            reorder=0.0,
            gateway_crash=0.0,
            bank_crash=0.0,
            partition=0.0,
            slow_disk=0.0,
            client_cancel=0.0,
        )

    def describe(self) -> str:
        values = asdict(self)
        return " ".join(f"{f.name}={values[f.name]:g}" for f in fields(self))

    def enabled(self) -> list[str]:
        """The kinds of fault switched on in this mix."""
        values = asdict(self)
        return [kind for kind in SWARM if values[kind] > 0]


def describe_swarm() -> str:
    """How seeds draw their mix, one line per kind of fault."""
    units = {"gateway_crash": "/s", "bank_crash": "/s", "partition": "/s", "slow_disk": "/s"}
    return "\n".join(
        f"  {kind:<14} on in {chance:.0%} of seeds, {low:g}..{high:g}{units.get(kind, '')}"
        for kind, (chance, low, high) in SWARM.items()
    )
