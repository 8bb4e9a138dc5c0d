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
    POLICY_NAMES,
    Chooser,
    LeastLoad,
    PickFirst,
    PowerOfTwo,
    RoundRobin,
    load_score,
    make_policy,
)


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


def test_least_load_picks_the_lowest_score() -> None:
    policy = LeastLoad()
    pool = views("a", "b", "c", a=5, b=1, c=3)
    assert names([policy.choose(pool) for _ in range(3)]) == ["b"] * 3


def test_least_load_weighs_latency_with_in_flight() -> None:
    fast_busy = View("fast", in_flight=3, latency_ms_ewma=2.0)  # 4 x 2 = 8
    slow_idle = View("slow", in_flight=0, latency_ms_ewma=20.0)  # 1 x 20 = 20
    assert LeastLoad().choose([slow_idle, fast_busy]).instance == "fast"
    very_busy = View("fast", in_flight=12, latency_ms_ewma=2.0)  # 13 x 2 = 26
    assert LeastLoad().choose([slow_idle, very_busy]).instance == "slow"


def test_a_zero_latency_report_does_not_make_an_instance_free() -> None:
    assert load_score(View("x", in_flight=0, latency_ms_ewma=0.0)) == LATENCY_FLOOR_MS
    unreported_busy = View("new", in_flight=9, latency_ms_ewma=0.0)  # 10 x floor
    idle = View("old", in_flight=0, latency_ms_ewma=5.0)  # 5
    assert LeastLoad().choose([unreported_busy, idle]).instance == "old"


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
    policy: str, loads: list[int], excluded: set[int], seed: int
) -> None:
    pool = [View(f"i{n}", in_flight=load) for n, load in enumerate(loads)]
    exclude = {f"i{n}" for n in excluded}
    chosen = make_policy(policy, random.Random(seed)).choose(pool, exclude)  # type: ignore[arg-type]
    assert chosen in pool
    if any(v.instance not in exclude for v in pool):
        assert chosen.instance not in exclude
