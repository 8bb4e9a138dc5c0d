"""The one backoff policy every retry loop uses: its ceilings, its jitter, its per-item pace."""

from __future__ import annotations

import random

import pytest

from strife.backoff import Backoff, Jitter, Pace


def test_ceiling_doubles_from_initial_up_to_the_cap() -> None:
    policy = Backoff(0.5, 30.0)
    assert [policy.ceiling_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.ceiling_s(10**9) == 30.0  # no overflow, however long it fails


def test_no_jitter_waits_the_ceiling() -> None:
    delays = Backoff(0.2, 1.6).delays()
    assert [next(delays) for _ in range(5)] == [0.2, 0.4, 0.8, 1.6, 1.6]


@pytest.mark.parametrize(("jitter", "low"), [(Jitter.FULL, 0.0), (Jitter.HALF, 0.5)])
def test_jitter_stays_under_the_ceiling(jitter: Jitter, low: float) -> None:
    policy = Backoff(0.1, 5.0, jitter=jitter)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = policy.ceiling_s(attempt)
        for _ in range(50):
            assert low * ceiling <= policy.delay_s(attempt, rng) <= ceiling


def test_without_an_rng_the_random_module_draws() -> None:
    """The simulation seeds `random`, so a loop that passes no rng replays exactly."""
    policy = Backoff(1.0, 8.0, jitter=Jitter.HALF)
    random.seed(11)
    first = [policy.delay_s(n) for n in range(1, 5)]
    random.seed(11)
    assert [policy.delay_s(n) for n in range(1, 5)] == first


def test_pace_counts_failures_and_sets_the_next_due_time() -> None:
    policy = Backoff(2.0, 10.0)
    pace = Pace()
    pace.failed(policy, now=100.0)
    pace.failed(policy, now=103.0)
    assert (pace.failures, pace.next_at) == (2, 107.0)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(-1.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(1.0, 1.0, multiplier=0.5)
    with pytest.raises(ValueError):
        Backoff(1.0, 1.0).ceiling_s(0)
