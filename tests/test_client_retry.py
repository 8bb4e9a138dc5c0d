"""The client's one retry policy, with an injected sleep: what is retried, and how long it waits."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
import tenacity

from strife.client import (
    DeadlineExceeded,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidArgument,
    PermissionDenied,
    RequestInProgress,
    ResourceExhausted,
    RetryPolicy,
    StrifeError,
    Unavailable,
)
from strife.client._retry import is_retryable

RETRYABLE = [
    Unavailable(grpc.StatusCode.UNAVAILABLE, "", "connection refused"),
    DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "", "deadline"),
    ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_IN_FLIGHT", "busy"),
    RequestInProgress(grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS", "running elsewhere"),
]
TERMINAL = [
    InsufficientFunds(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", "no money"),
    IdempotencyKeyReused(grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED", "reused"),
    InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT", "bad amount"),
    PermissionDenied(grpc.StatusCode.PERMISSION_DENIED, "NOT_ACCOUNT_OWNER", "not yours"),
]


class Highest(random.Random):
    """Full jitter at its upper bound, so the delays are the ceilings themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Recorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


async def flaky(errors: list[BaseException], calls: list[int]) -> str:
    calls.append(1)
    if errors:
        raise errors.pop(0)
    return "ok"


async def run(
    policy: RetryPolicy, errors: list[BaseException], rng: random.Random
) -> tuple[str, list[int], list[float]]:
    sleep, calls = Recorder(), list[int]()
    async for attempt in policy.retrying(sleep=sleep, rng=rng):
        with attempt:
            result = await flaky(errors, calls)
    return result, calls, sleep.delays


def test_ceilings_double_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_s=0.1, cap_s=2.0)
    assert [policy.ceiling_s(n) for n in range(1, 9)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    )
    assert policy.ceiling_s(10_000) == 2.0  # no overflow however long the outage


@pytest.mark.parametrize("error", RETRYABLE, ids=lambda e: type(e).__name__)
async def test_retryable_errors_are_retried_with_growing_capped_delays(error: StrifeError) -> None:
    policy = RetryPolicy(initial_s=0.1, cap_s=1.0)
    result, calls, delays = await run(policy, [error] * 7, Highest())
    assert result == "ok" and len(calls) == 8
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


async def test_full_jitter_stays_between_zero_and_the_ceiling() -> None:
    policy = RetryPolicy(initial_s=0.05, cap_s=0.5)
    errors: list[BaseException] = [RETRYABLE[0]] * 200
    _, _, delays = await run(policy, errors, random.Random(7))
    assert len(delays) == 200
    for attempt, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= policy.ceiling_s(attempt) <= 0.5
    # Jittered, not constant: later delays spread over the whole capped range.
    assert min(delays[20:]) < 0.1 < 0.4 < max(delays[20:])


async def test_no_give_up_on_retryable_errors() -> None:
    """The drainer's policy has no attempt limit: a long outage only means a long wait."""
    policy = RetryPolicy(initial_s=0.01, cap_s=0.02)
    result, calls, delays = await run(policy, [RETRYABLE[0]] * 500, random.Random(1))
    assert result == "ok" and len(calls) == 501
    assert max(delays) <= 0.02


@pytest.mark.parametrize("error", TERMINAL, ids=lambda e: type(e).__name__)
async def test_terminal_errors_are_not_retried(error: StrifeError) -> None:
    assert not is_retryable(error)
    with pytest.raises(type(error)):
        await run(RetryPolicy(), [error, error], random.Random(1))


async def test_terminal_error_after_retries_ends_retrying() -> None:
    calls: list[int] = []
    sleep = Recorder()
    errors: list[BaseException] = [RETRYABLE[0], RETRYABLE[1], TERMINAL[0], RETRYABLE[0]]
    with pytest.raises(InsufficientFunds):
        async for attempt in RetryPolicy().retrying(sleep=sleep, rng=random.Random(1)):
            with attempt:
                await flaky(errors, calls)
    assert len(calls) == 3 and len(sleep.delays) == 2


async def test_server_hint_raises_the_delay_but_never_past_the_cap() -> None:
    policy = RetryPolicy(initial_s=0.1, cap_s=1.0)
    short = ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", "", None, 0.5)
    long = ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED", "", None, 30)
    _, _, delays = await run(policy, [short, long], random.Random(3))
    assert delays[0] >= 0.5 and delays[1] == 1.0


async def test_cancellation_is_never_retried() -> None:
    calls: list[int] = []
    with pytest.raises(asyncio.CancelledError):
        await run(RetryPolicy(), [asyncio.CancelledError()], random.Random(1))

    async def cancelled_sleep(delay_s: float) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        async for attempt in RetryPolicy().retrying(sleep=cancelled_sleep):
            with attempt:
                await flaky([RETRYABLE[0]], calls)
    assert len(calls) == 1


def test_bounded_policy_only() -> None:
    for bad in (
        dict(initial_s=0, cap_s=1),
        dict(initial_s=2, cap_s=1),
        dict(initial_s=1, cap_s=1000),
        dict(base=0.5),
    ):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


async def test_a_stop_bounds_one_shot_calls() -> None:
    with pytest.raises(Unavailable):
        async for attempt in RetryPolicy().retrying(
            sleep=Recorder(), stop=tenacity.stop_after_attempt(3)
        ):
            with attempt:
                raise RETRYABLE[0]
