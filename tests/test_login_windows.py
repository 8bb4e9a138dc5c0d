"""The throttle windows on their own: slots taken at the start, given back or kept."""

from __future__ import annotations

from strife.gateway.throttle import LoginAttempt, LoginThrottle
from strife.security.throttle import FailureWindow, Slot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_slots_are_taken_before_the_answer_is_known() -> None:
    clock = Clock()
    window = FailureWindow(3, 60.0, clock=clock)
    slots = [window.reserve("k") for _ in range(3)]
    assert all(isinstance(s, Slot) for s in slots)
    # A fourth concurrent attempt waits, though none of the three has failed yet.
    wait = window.reserve("k")
    assert isinstance(wait, float) and 0 < wait <= 60.0
    first = slots[0]
    assert isinstance(first, Slot)
    window.release(first)  # no password was checked
    assert isinstance(window.reserve("k"), Slot)
    clock.now += 61
    assert window.retry_after_s("k") == 0.0


def test_success_clears_the_key_and_keys_are_bounded() -> None:
    window = FailureWindow(2, 60.0, max_keys=3, clock=Clock())
    for _ in range(2):
        window.reserve("a")
    assert window.retry_after_s("a") > 0
    window.succeed("a")
    assert window.retry_after_s("a") == 0.0
    for name in "bcde":
        window.reserve(name)
    assert len(window._slots) == 3


def test_a_username_is_known_by_its_bank() -> None:
    throttle = LoginThrottle(per_username=2, per_peer=100, clock=Clock())
    for _ in range(2):
        assert isinstance(throttle.begin("beta", "alice", "ipv4:10.0.0.1"), LoginAttempt)
    assert isinstance(throttle.begin("beta", "alice", "ipv4:10.0.0.1"), float)
    attempt = throttle.begin("alpha", "alice", "ipv4:10.0.0.1")
    assert isinstance(attempt, LoginAttempt)
    throttle.succeeded(attempt)  # alice@alpha's success leaves alice@beta's failures alone
    assert throttle.retry_after_s("beta", "alice", "ipv4:10.0.0.1") > 0


def test_unchecked_attempts_cost_nothing_and_good_logins_cost_the_host_nothing() -> None:
    throttle = LoginThrottle(per_username=5, per_peer=2, clock=Clock())
    for _ in range(10):
        attempt = throttle.begin("alpha", "bob", "ipv4:10.0.0.2")
        assert isinstance(attempt, LoginAttempt)
        throttle.unchecked(attempt)
    for user in ("u1", "u2", "u3"):
        attempt = throttle.begin("alpha", user, "ipv4:10.0.0.2")
        assert isinstance(attempt, LoginAttempt)
        throttle.succeeded(attempt)
    failed = [throttle.begin("alpha", u, "ipv4:10.0.0.2") for u in ("x", "y", "z")]
    assert [type(f) for f in failed] == [LoginAttempt, LoginAttempt, float]
