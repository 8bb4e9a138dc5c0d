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

# Latencies are floored here, so sub-millisecond noise between fast instances
# counts as a tie and in-flight counts decide.
LATENCY_FLOOR_MS = 1.0
# Latencies within this fraction of the lower one count as equal. Equal
# replicas' EWMAs differ by noise, and there in-flight is the better guide;
# a replica slow enough to avoid reports clearly more (a gateway held to 10%
# of a CPU reported 200-560 ms where its healthy peer reported 121 ms).
NEAR_TIE = 0.25


class LoadView(Protocol):
    """What a policy needs to know about an instance: its name and its load."""

    @property
    def instance(self) -> str: ...

    @property
    def in_flight(self) -> int:
        """Calls at the instance; the registry adds the callers it sent since the report."""
        ...

    @property
    def latency_ms_ewma(self) -> float:
        """Reported EWMA of served latency; 0 means none reported yet."""
        ...


V = TypeVar("V", bound=LoadView)


def latencies(pool: Sequence[LoadView]) -> list[float]:
    """Each candidate's latency as the policies compare it.

    Floored at `LATENCY_FLOOR_MS`. An instance that has served nothing yet
    reports 0 and is read as the fastest known one: a newcomer then competes
    on in-flight instead of looking free, which would send it every call
    until its first report.
    """
    known = [max(v.latency_ms_ewma, LATENCY_FLOOR_MS) for v in pool if v.latency_ms_ewma > 0]
    unknown = min(known, default=LATENCY_FLOOR_MS)
    return [
        max(v.latency_ms_ewma, LATENCY_FLOOR_MS) if v.latency_ms_ewma > 0 else unknown for v in pool
    ]


def near(latency_ms: float, best_ms: float) -> bool:
    """True when `latency_ms` is within `NEAR_TIE` of the lower `best_ms`."""
    return latency_ms <= best_ms * (1 + NEAR_TIE)


def lighter(a: LoadView, a_ms: float, b: LoadView, b_ms: float) -> bool:
    """True when `a` is no worse a choice than `b`: latency first, in-flight on a near tie.

    Latency leads because for a concurrent server it already includes the
    wait behind the other calls there, and in-flight is not queue length: a
    throttled replica under-reports both, since calls queued before its
    handlers start count in neither. Multiplying the two, as "peak EWMA" does,
    ranked a fast gateway with many calls behind a slow one with few.
    """
    if near(a_ms, b_ms) and near(b_ms, a_ms):
        return a.in_flight <= b.in_flight
    return a_ms < b_ms


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
    """The lowest latency; among those near it, the fewest in flight; then in turn.

    In-flight includes the callers the balancer has sent since each report,
    so equal instances share the calls of one heartbeat interval instead of
    all of them going to whichever looked idlest at the last report. A
    clearly faster instance takes every call until a report says otherwise.
    """

    name: PolicyName = "least_load"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[V], exclude: Collection[str] = ()) -> V:
        assert candidates, "a policy needs at least one candidate"
        pool = usable(candidates, exclude)
        scored = latencies(pool)
        fastest = min(scored)
        near_best = [c for c, ms in zip(pool, scored, strict=True) if near(ms, fastest)]
        fewest = min(c.in_flight for c in near_best)
        tied = [c for c in near_best if c.in_flight == fewest]
        index = self._turn % len(tied)
        self._turn = index + 1
        return tied[index]


class PowerOfTwo:
    """Two candidates at random, the lighter of them (`lighter`).

    Reports are up to one heartbeat old. The randomness spreads the calls of
    one interval even where the balancer's count of what it sent is wrong
    (one answer followed by many calls), and the worst instance still never
    wins a pair. See `benchmarks/bench_balancer.py` for the simulation.
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
        if a.latency_ms_ewma > 0 and b.latency_ms_ewma > 0:
            a_ms = max(a.latency_ms_ewma, LATENCY_FLOOR_MS)
            b_ms = max(b.latency_ms_ewma, LATENCY_FLOOR_MS)
        else:
            scored = latencies(pool)
            a_ms, b_ms = scored[first], scored[second]
        return a if lighter(a, a_ms, b, b_ms) else b


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
