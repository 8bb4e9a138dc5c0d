"""How the balancer picks one instance out of a service's healthy pool.

Pure: no gRPC, no clock. A policy sees the candidates in registration order
and the names the caller wants skipped; randomness comes from an injected
`random.Random`, so every choice sequence can be replayed in a test.

Policies keep a little state (a sticky choice, a rotation counter), one
policy object per (service, policy) pair, held by `Chooser`.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Literal, Protocol, TypeVar, get_args

PolicyName = Literal["pick_first", "round_robin", "least_load", "power_of_two"]
POLICY_NAMES: tuple[PolicyName, ...] = get_args(PolicyName)

# An instance that has not reported a latency yet (or reports a sub-millisecond
# one) is scored as if one call took this long, so that in-flight counts still
# separate idle instances and a zero report cannot make an instance "free".
LATENCY_FLOOR_MS = 1.0


class LoadView(Protocol):
    """What a policy needs to know about an instance: its name and last load report."""

    @property
    def instance(self) -> str: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def latency_ms_ewma(self) -> float: ...


V = TypeVar("V", bound=LoadView)


def load_score(view: LoadView) -> float:
    """Expected wait at this instance: (in-flight + the new call) x per-call latency.

    This is the "peak EWMA" cost of Finagle and Linkerd: it ranks an idle but
    slow instance behind an idle fast one, and a busy fast one behind both
    when its queue is long enough. CPU is reported but not scored: on shared
    hosts it measures the neighbours as much as the instance.
    """
    return (max(view.in_flight, 0) + 1) * max(view.latency_ms_ewma, LATENCY_FLOOR_MS)


def usable(candidates: Sequence[V], exclude: Collection[str]) -> Sequence[V]:
    """The candidates minus the excluded ones, unless that leaves nothing.

    A caller excludes instances it just failed to reach; when it has excluded
    every one, an answer it may retry beats no answer at all.
    """
    if not exclude:
        return candidates
    kept = [c for c in candidates if c.instance not in exclude]
    return kept or candidates


class Policy(Protocol):
    name: PolicyName

    def choose(self, candidates: Sequence[V], exclude: Collection[str] = ()) -> V:
        """One of `candidates` (non-empty, registration order), avoiding `exclude`."""
        ...


class PickFirst:
    """The first instance in registration order, kept until it leaves the pool.

    Sticky so that every caller lands on one instance (warm caches, one
    writer) and an instance that comes back does not pull traffic back to
    itself. A caller's `exclude` only changes that caller's answer: one
    client's failed connection is not proof that the instance is down; the
    lease is.
    """

    name: PolicyName = "pick_first"

    def __init__(self) -> None:
        self.current: str | None = None

    def choose(self, candidates: Sequence[V], exclude: Collection[str] = ()) -> V:
        assert candidates, "a policy needs at least one candidate"
        if not any(c.instance == self.current for c in candidates):
            self.current = candidates[0].instance
        pool = usable(candidates, exclude)
        for candidate in pool:
            if candidate.instance == self.current:
                return candidate
        return pool[0]


class RoundRobin:
    """Each candidate in turn; the counter is shared by every caller of the service."""

    name: PolicyName = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[V], exclude: Collection[str] = ()) -> V:
        assert candidates, "a policy needs at least one candidate"
        pool = usable(candidates, exclude)
        index = self._next % len(pool)
        self._next = index + 1
        return pool[index]


class LeastLoad:
    """The lowest `load_score`; ties go round in turn.

    Without the rotation every caller between two reports would pick the same
    tied instance (the first one), which is the herd effect at its worst.
    """

    name: PolicyName = "least_load"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[V], exclude: Collection[str] = ()) -> V:
        assert candidates, "a policy needs at least one candidate"
        pool = usable(candidates, exclude)
        scores = [load_score(c) for c in pool]
        best = min(scores)
        tied = [c for c, s in zip(pool, scores, strict=True) if s == best]
        index = self._turn % len(tied)
        self._turn = index + 1
        return tied[index]


class PowerOfTwo:
    """Two candidates at random, the less loaded of them.

    Load reports are up to one heartbeat old; least_load sends every call of
    that interval to the same instance, while two random choices spread them
    and still avoid the busiest instances (the worst one can never win a
    pair). See `benchmarks/bench_balancer.py` for the measured difference.
    """

    name: PolicyName = "power_of_two"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[V], exclude: Collection[str] = ()) -> V:
        assert candidates, "a policy needs at least one candidate"
        pool = usable(candidates, exclude)
        if len(pool) == 1:
            return pool[0]
        first, second = self._rng.sample(range(len(pool)), 2)
        a, b = pool[first], pool[second]
        return a if load_score(a) <= load_score(b) else b


def make_policy(name: PolicyName, rng: random.Random) -> Policy:
    if name == "pick_first":
        return PickFirst()
    if name == "round_robin":
        return RoundRobin()
    if name == "least_load":
        return LeastLoad()
    if name == "power_of_two":
        return PowerOfTwo(rng)
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")


class Chooser:
    """One policy object per (service, policy), with the balancer's default policy.

    State is per service so that rotating over banks does not skip gateways,
    and per policy so that a caller asking for round_robin does not move the
    pick_first choice of everyone else.
    """

    def __init__(self, default: PolicyName, rng: random.Random | None = None) -> None:
        if default not in POLICY_NAMES:
            raise ValueError(f"unknown policy {default!r}")
        self.default: PolicyName = default
        self._rng = rng or random.Random()
        self._policies: dict[tuple[str, PolicyName], Policy] = {}

    def choose(
        self,
        service: str,
        candidates: Sequence[V],
        policy: PolicyName | None = None,
        exclude: Collection[str] = (),
    ) -> V:
        name = policy or self.default
        key = (service, name)
        chosen = self._policies.get(key)
        if chosen is None:
            chosen = self._policies[key] = make_policy(name, self._rng)
        return chosen.choose(candidates, exclude)

    def forget(self, service: str) -> None:
        """Drop a service's state once its pool is empty: nothing left to stick to."""
        for key in [k for k in self._policies if k[0] == service]:
            del self._policies[key]
