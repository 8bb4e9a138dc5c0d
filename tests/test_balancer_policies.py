"""Choice sequences of each policy, on plain objects: no network, seeded randomness."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strife.balancer.policies import (
    LATENCY_FLOOR_MS,
    NEAR_TIE,
    POLICY_NAMES,
    Chooser,
    LeastLoad,
    PickFirst,
    PolicyName,
    PowerOfTwo,
    RoundRobin,
    latencies,
    make_policy,
)
from strife.balancer.registry import LeaseConfig, Load, Registry


@dataclass(frozen=True)
class View:
    instance: str
    in_flight: int = 0
    latency_ms_ewma: float = 10.0


def views(*names: str, **loads: int) -> list[View]:
    return [View(name, in_flight=loads.get(name, 0)) for name in names]


def names(picks: list[View]) -> list[str]:
    return [p.instance for p in picks]


# --- pick_first --------------------------------------------------------------


def test_pick_first_takes_the_first_in_registration_order() -> None:
    policy = PickFirst()
    pool = views("a", "b", "c")
    assert names([policy.choose(pool) for _ in range(5)]) == ["a"] * 5


def test_pick_first_moves_on_only_when_its_choice_leaves() -> None:
    policy = PickFirst()
    assert policy.choose(views("a", "b", "c")).instance == "a"
    assert policy.choose(views("b", "c")).instance == "b"
    # "a" is back, even listed first: the choice sticks with "b".
    assert policy.choose(views("a", "b", "c")).instance == "b"
    assert policy.choose(views("c", "a")).instance == "c"


def test_pick_first_exclude_changes_only_that_answer() -> None:
    policy = PickFirst()
    pool = views("a", "b", "c")
    assert policy.choose(pool, exclude={"a"}).instance == "b"
    assert policy.choose(pool, exclude={"a", "b"}).instance == "c"
    assert policy.choose(pool).instance == "a"


def test_pick_first_sticks_to_the_pool_order_when_its_choice_left_and_first_is_excluded() -> None:
    policy = PickFirst()
    policy.choose(views("a", "b", "c"))
    assert policy.choose(views("b", "c"), exclude={"b"}).instance == "c"
    # The shared choice became "b" (first healthy), not the excluding caller's "c".
    assert policy.choose(views("b", "c")).instance == "b"


# --- round_robin -------------------------------------------------------------


def test_round_robin_cycles_in_order() -> None:
    policy = RoundRobin()
    pool = views("a", "b", "c")
    assert names([policy.choose(pool) for _ in range(7)]) == list("abcabca")


def test_round_robin_skips_excluded_and_survives_membership_changes() -> None:
    policy = RoundRobin()
    pool = views("a", "b", "c")
    assert names([policy.choose(pool, exclude={"b"}) for _ in range(4)]) == list("acac")
    picks = names([policy.choose(views("a", "b")) for _ in range(4)])
    assert Counter(picks) == {"a": 2, "b": 2}


def test_every_policy_ignores_exclude_when_it_would_leave_nothing() -> None:
    rng = random.Random(1)
    for name in POLICY_NAMES:
        policy = make_policy(name, rng)
        assert policy.choose(views("a", "b"), exclude={"a", "b"}).instance in {"a", "b"}
        assert policy.choose(views("a"), exclude={"a"}).instance == "a"


# --- least_load --------------------------------------------------------------


def test_least_load_picks_the_fewest_in_flight_at_equal_latency() -> None:
    policy = LeastLoad()
    pool = views("a", "b", "c", a=5, b=1, c=3)
    assert names([policy.choose(pool) for _ in range(3)]) == ["b"] * 3


def test_least_load_prefers_a_fast_busy_instance_to_a_slow_one_with_few_calls() -> None:
    """Measured: a gateway held to 10% of a CPU reported fewer calls and a latency
    4x its peer's; (in_flight + 1) x latency ranked it better (8,347 < 10,890)."""
    slow = View("gw-2", in_flight=16, latency_ms_ewma=491.0)
    fast = View("gw-1", in_flight=89, latency_ms_ewma=121.0)
    for pool in ([slow, fast], [fast, slow]):
        assert LeastLoad().choose(pool).instance == "gw-1"
        two = PowerOfTwo(random.Random(0))
        assert {two.choose(pool).instance for _ in range(20)} == {"gw-1"}


def test_near_equal_latencies_are_decided_by_in_flight() -> None:
    busy = View("busy", in_flight=10, latency_ms_ewma=100.0)
    within = View("idle", in_flight=2, latency_ms_ewma=100.0 * (1 + NEAR_TIE))
    beyond = View("idle", in_flight=2, latency_ms_ewma=100.0 * (1 + NEAR_TIE) + 1)
    assert LeastLoad().choose([busy, within]).instance == "idle"
    assert LeastLoad().choose([busy, beyond]).instance == "busy"
    two = PowerOfTwo(random.Random(0))
    assert {two.choose([busy, within]).instance for _ in range(20)} == {"idle"}
    assert {two.choose([busy, beyond]).instance for _ in range(20)} == {"busy"}


def test_the_near_tie_is_measured_from_the_fastest() -> None:
    """b is near a and c near b, but c is not near a, the fastest: c is out."""
    pool = [
        View("a", in_flight=9, latency_ms_ewma=100.0),
        View("b", in_flight=5, latency_ms_ewma=120.0),
        View("c", in_flight=0, latency_ms_ewma=140.0),
    ]
    assert LeastLoad().choose(pool).instance == "b"


def test_sub_millisecond_latencies_tie_at_the_floor() -> None:
    pool = [
        View("a", in_flight=3, latency_ms_ewma=0.2),
        View("b", in_flight=1, latency_ms_ewma=0.9),
    ]
    assert latencies(pool) == [LATENCY_FLOOR_MS, LATENCY_FLOOR_MS]
    assert LeastLoad().choose(pool).instance == "b"


def test_an_unreported_latency_reads_as_the_fastest_known() -> None:
    """A zero report neither makes a newcomer free (it would take every call)
    nor keeps it out: it competes on in-flight."""
    pool = [
        View("new", in_flight=0, latency_ms_ewma=0.0),
        View("old", in_flight=5, latency_ms_ewma=80.0),
    ]
    assert latencies(pool) == [80.0, 80.0]
    assert LeastLoad().choose(pool).instance == "new"
    busy_new = [
        View("new", in_flight=9, latency_ms_ewma=0.0),
        View("old", in_flight=0, latency_ms_ewma=5.0),
    ]
    assert LeastLoad().choose(busy_new).instance == "old"
    assert PowerOfTwo(random.Random(0)).choose(busy_new).instance == "old"
    assert latencies([View("x", latency_ms_ewma=0.0)]) == [LATENCY_FLOOR_MS]


def test_least_load_breaks_ties_by_rotation() -> None:
    policy = LeastLoad()
    pool = views("a", "b", "c", "d", a=1, b=0, c=1, d=0)
    assert names([policy.choose(pool) for _ in range(6)]) == list("bdbdbd")


def test_least_load_ties_are_fair_over_many_calls() -> None:
    policy = LeastLoad()
    pool = views("a", "b", "c")
    counts = Counter(names([policy.choose(pool) for _ in range(300)]))
    assert counts == {"a": 100, "b": 100, "c": 100}


def test_least_load_honours_exclude() -> None:
    pool = views("a", "b", "c", a=9, b=0, c=4)
    assert LeastLoad().choose(pool, exclude={"b"}).instance == "c"


# --- power_of_two ------------------------------------------------------------


def test_power_of_two_is_deterministic_for_a_seed() -> None:
    pool = views("a", "b", "c", "d", "e", a=4, b=0, c=2, d=7, e=1)
    first = names([PowerOfTwo(random.Random(42)).choose(pool) for _ in range(1)])
    run_a = PowerOfTwo(random.Random(42))
    run_b = PowerOfTwo(random.Random(42))
    seq_a = names([run_a.choose(pool) for _ in range(50)])
    seq_b = names([run_b.choose(pool) for _ in range(50)])
    assert seq_a == seq_b
    assert seq_a[0] == first[0]
    other = PowerOfTwo(random.Random(7))
    assert names([other.choose(pool) for _ in range(50)]) != seq_a


def test_power_of_two_never_picks_the_single_most_loaded() -> None:
    pool = views("a", "b", "c", "d", "e", a=4, b=0, c=2, d=7, e=1)
    policy = PowerOfTwo(random.Random(3))
    counts = Counter(names([policy.choose(pool) for _ in range(2000)]))
    assert "d" not in counts
    # With 5 instances, the least loaded wins every pair it is drawn into: 2/5.
    assert counts["b"] == pytest.approx(800, rel=0.1)
    # The second most loaded wins only against the most loaded: 1/10.
    assert counts["a"] == pytest.approx(200, rel=0.2)


def test_power_of_two_with_two_instances_always_takes_the_lighter() -> None:
    policy = PowerOfTwo(random.Random(0))
    pool = views("a", "b", a=3, b=1)
    assert set(names([policy.choose(pool) for _ in range(20)])) == {"b"}


def test_power_of_two_spreads_equal_loads() -> None:
    policy = PowerOfTwo(random.Random(5))
    counts = Counter(names([policy.choose(views("a", "b", "c", "d")) for _ in range(4000)]))
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(n == pytest.approx(1000, rel=0.15) for n in counts.values())


def test_power_of_two_honours_exclude() -> None:
    policy = PowerOfTwo(random.Random(9))
    pool = views("a", "b", "c", a=0, b=5, c=5)
    assert set(names([policy.choose(pool, exclude={"a"}) for _ in range(50)])) == {"b", "c"}


# --- within one heartbeat interval: the registry counts what it sent -----------


def pool_of(*reports: tuple[str, int, float]) -> Registry:
    """A registry whose gateways have each just reported (in-flight, latency)."""
    registry = Registry(LeaseConfig(), clock=lambda: 0.0, wall_clock=lambda: 0.0)
    for port, (name, in_flight, latency_ms) in enumerate(reports, start=6000):
        registry.renew("gateway", name, f"127.0.0.1:{port}", {}, Load(in_flight, latency_ms))
    return registry


def picks_between_reports(registry: Registry, policy: PolicyName, calls: int) -> Counter[str]:
    """What GetBestServer does `calls` times before any instance reports again."""
    chooser = Chooser(policy, random.Random(4))
    counts: Counter[str] = Counter()
    for _ in range(calls):
        chosen = chooser.choose("gateway", registry.healthy("gateway"))
        chosen.note_sent()
        counts[chosen.instance] += 1
    return counts


@pytest.mark.parametrize("policy", ["least_load", "power_of_two"])
def test_equal_instances_share_the_calls_of_one_interval(policy: PolicyName) -> None:
    """Without the count, every call would go to whichever reported fewer in flight."""
    registry = pool_of(("gw-1", 30, 100.0), ("gw-2", 10, 100.0))
    # gw-2 takes 20 to catch up, then they alternate.
    assert picks_between_reports(registry, policy, 200) == {"gw-2": 110, "gw-1": 90}
    even = pool_of(("gw-1", 7, 100.0), ("gw-2", 7, 100.0), ("gw-3", 7, 100.0))
    assert picks_between_reports(even, policy, 300) == {"gw-1": 100, "gw-2": 100, "gw-3": 100}


@pytest.mark.parametrize("policy", ["least_load", "power_of_two"])
def test_a_slow_instance_gets_no_calls_however_many_go_to_the_fast_one(
    policy: PolicyName,
) -> None:
    registry = pool_of(("gw-1", 89, 121.0), ("gw-2", 16, 491.0))
    assert picks_between_reports(registry, policy, 200) == {"gw-1": 200}


def test_power_of_two_never_sends_a_call_to_the_one_slow_instance_of_many() -> None:
    registry = pool_of(
        ("gw-1", 50, 100.0), ("gw-2", 50, 100.0), ("gw-3", 50, 100.0), ("slow", 0, 400.0)
    )
    counts = picks_between_reports(registry, "power_of_two", 600)
    assert "slow" not in counts
    assert all(n == pytest.approx(200, abs=2) for n in counts.values())


# --- the chooser -------------------------------------------------------------


def test_chooser_keeps_state_per_service_and_policy() -> None:
    chooser = Chooser("round_robin", random.Random(0))
    banks, gateways = views("alpha", "beta"), views("gw-1", "gw-2")
    assert chooser.choose("bank", banks).instance == "alpha"
    assert chooser.choose("gateway", gateways).instance == "gw-1"
    assert chooser.choose("bank", banks).instance == "beta"
    # A pick_first caller neither moves the rotation nor is moved by it.
    assert chooser.choose("bank", banks, "pick_first").instance == "alpha"
    assert chooser.choose("bank", banks).instance == "alpha"


def test_chooser_forgets_a_service_with_an_empty_pool() -> None:
    chooser = Chooser("pick_first")
    chooser.choose("bank", views("alpha", "beta"))
    chooser.choose("bank", views("beta"))
    assert chooser.choose("bank", views("alpha", "beta")).instance == "beta"
    chooser.forget("bank")
    assert chooser.choose("bank", views("alpha", "beta")).instance == "alpha"


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        # A name outside PolicyName on purpose: refused at run time (from a flag or a file).
        Chooser("fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_policy("fastest", random.Random())  # type: ignore[arg-type]


@given(
    policy=st.sampled_from(POLICY_NAMES),
    loads=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    excluded=st.sets(st.integers(0, 7)),
    seed=st.integers(0, 2**32),
)
def test_a_choice_is_always_a_candidate_and_not_excluded_when_avoidable(
    policy: PolicyName, loads: list[int], excluded: set[int], seed: int
) -> None:
    pool = [View(f"i{n}", in_flight=load) for n, load in enumerate(loads)]
    exclude = {f"i{n}" for n in excluded}
    chosen = make_policy(policy, random.Random(seed)).choose(pool, exclude)
    assert chosen in pool
    if any(v.instance not in exclude for v in pool):
        assert chosen.instance not in exclude
