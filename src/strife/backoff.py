"""Capped exponential backoff: the one policy behind every retry loop in Strife.

The wait after the n-th failure (n counts from 1) is bounded by the ceiling
min(cap, initial * multiplier**(n-1)). `jitter` draws the wait under that
ceiling, so callers that failed together do not come back together:

- `NONE`: the ceiling itself, where there is nobody to collide with (the
  supervisor restarting one child, the audit reading one bank);
- `FULL`: uniform in [0, ceiling], many callers against one server (clients,
  the load generator);
- `HALF`: uniform in [ceiling/2, ceiling], at least half the wait, so a
  refusing peer is not asked early (the heartbeat, the bank's resolver).

A loop that retries many items, each at its own pace (the settler per payment,
the resolver per transfer), keeps a `Pace` per item.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass


class Jitter(enum.Enum):
    NONE = "none"
    FULL = "full"
    HALF = "half"


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float
    cap_s: float
    multiplier: float = 2.0
    jitter: Jitter = Jitter.NONE

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.cap_s < 0:
            raise ValueError("backoff delays cannot be negative")
        if self.multiplier < 1:
            raise ValueError("the multiplier must be at least 1")

    def ceiling_s(self, attempt: int) -> float:
        """The longest wait after the `attempt`-th failure (1-based)."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        # min() on the exponent first: multiplier**n overflows long before it matters.
        try:
            grown = self.initial_s * self.multiplier ** min(attempt - 1, 1024)
        except OverflowError:
            return self.cap_s
        return min(self.cap_s, grown)

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after the `attempt`-th failure, drawn from `rng` (or from the
        `random` module, which the simulation seeds, when None)."""
        ceiling = self.ceiling_s(attempt)
        uniform = rng.uniform if rng is not None else random.uniform
        if self.jitter is Jitter.FULL:
            return uniform(0.0, ceiling)
        if self.jitter is Jitter.HALF:
            return uniform(ceiling / 2, ceiling)
        return ceiling

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits after the first, second, ... failure, without end."""
        return (self.delay_s(attempt, rng) for attempt in itertools.count(1))


@dataclass(slots=True)
class Pace:
    """One item's place in its backoff: failures so far, and when it is next due."""

    failures: int = 0
    next_at: float = 0.0

    def failed(self, policy: Backoff, now: float, rng: random.Random | None = None) -> None:
        self.failures += 1
        self.next_at = now + policy.delay_s(self.failures, rng)
