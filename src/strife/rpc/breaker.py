"""A circuit breaker as a pure state machine: time is passed in, nothing awaits.

One `Breaker` guards the calls to one peer (a bank server, a gateway).

- **CLOSED**: every call goes out. `failures` consecutive failures (no
  answer: UNAVAILABLE, DEADLINE_EXCEEDED; a refusal is an answer and counts
  as a success) open it.
- **OPEN**: calls fail fast, without a network call, until the cool-down
  (`open_s`) has passed.
- **HALF_OPEN**: after the cool-down the next call is the one probe; every
  other call still fails fast while it is out. Its success closes the
  circuit (and resets the cool-down); its failure opens it again with the
  cool-down doubled, at most `max_open_s`. A probe that ends without an
  outcome (its caller went away) frees the slot for the next call.

Every admitted call holds a `Permit` naming the breaker's generation, which
changes at every transition: the outcome of a call admitted before the last
transition (a call that was already out when the circuit opened) is stale
and ignored, so only the probe decides a half-open circuit.

The owner passes the time (`now`, any monotonic clock: the event loop's, so a
simulated loop works) and gets every transition through `on_transition`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5  # consecutive failures that open a closed circuit
    open_s: float = 1.0  # the first cool-down
    max_open_s: float = 10.0  # the cool-down's cap, as failed probes double it

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("failures must be at least 1")
        if not 0 < self.open_s <= self.max_open_s:
            raise ValueError("need 0 < open_s <= max_open_s")


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; hand it back with the call's outcome."""

    generation: int
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    at: float
    failures: int  # consecutive failures counted when it happened
    retry_after_s: float  # until the next probe may go (0 unless OPEN)


class Breaker:
    def __init__(
        self,
        config: BreakerConfig | None = None,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._on_transition = on_transition
        self._state = State.CLOSED
        self._generation = 0
        self._failures = 0
        self._open_s = self.config.open_s
        self._probe_at = 0.0  # when OPEN: the earliest time of the probe
        self._probing = False  # when HALF_OPEN: the probe is out

    @property
    def state(self) -> State:
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def blocked(self, now: float) -> bool:
        """Whether a call made now would fail fast (asks without taking the probe)."""
        if self._state is State.OPEN:
            return now < self._probe_at
        return self._state is State.HALF_OPEN and self._probing

    def retry_after_s(self, now: float) -> float:
        """How long until a call may go out: the time until the half-open probe
        (while OPEN), the first cool-down (while a probe is out), else 0."""
        if self._state is State.OPEN:
            return max(0.0, self._probe_at - now)
        if self._state is State.HALF_OPEN and self._probing:
            return self.config.open_s
        return 0.0

    def admit(self, now: float) -> Permit | None:
        """A permit for one call now, or None: fail fast."""
        if self._state is State.CLOSED:
            return Permit(self._generation)
        if self._state is State.OPEN:
            if now < self._probe_at:
                return None
            self._move(State.HALF_OPEN, now)
        if self._probing:
            return None
        self._probing = True
        return Permit(self._generation, probe=True)

    def succeeded(self, permit: Permit, now: float) -> None:
        """The peer answered (any answer, a refusal included)."""
        if permit.generation != self._generation:
            return
        self._failures = 0
        if self._state is State.HALF_OPEN and permit.probe:
            self._open_s = self.config.open_s
            self._move(State.CLOSED, now)

    def failed(self, permit: Permit, now: float) -> None:
        """No answer: the peer is unreachable or did not answer in time."""
        if permit.generation != self._generation:
            return
        self._failures += 1
        if self._state is State.CLOSED and self._failures >= self.config.failures:
            self._open(now)
        elif self._state is State.HALF_OPEN and permit.probe:
            self._open_s = min(self._open_s * 2, self.config.max_open_s)
            self._open(now)

    def abandoned(self, permit: Permit, now: float) -> None:
        """The call ended without an outcome (cancelled): it says nothing of the peer."""
        if permit.generation == self._generation and permit.probe:
            self._probing = False

    def _open(self, now: float) -> None:
        self._probe_at = now + self._open_s
        self._move(State.OPEN, now)

    def _move(self, new: State, now: float) -> None:
        old, self._state = self._state, new
        self._generation += 1
        self._probing = False
        if new is State.CLOSED:
            self._failures = 0
        if self._on_transition is not None:
            self._on_transition(Transition(old, new, now, self._failures, self.retry_after_s(now)))
