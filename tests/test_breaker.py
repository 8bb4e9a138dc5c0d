"""The circuit breaker's state machine, every transition, with time passed in;
its grpc.aio adapter and the client router's use of it, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from strife.client._router import GatewayRouter
from strife.errors import from_rpc_error
from strife.rpc.breaker import Breaker, BreakerConfig, Permit, State, Transition
from strife.rpc.circuits import Circuits

CONFIG = BreakerConfig(failures=3, open_s=1.0, max_open_s=4.0)


def breaker() -> tuple[Breaker, list[Transition]]:
    seen: list[Transition] = []
    return Breaker(CONFIG, seen.append), seen


def state(b: Breaker) -> State:
    """`b.state` read afresh (mypy keeps `b.state` narrowed across the calls that change it)."""
    return b.state


def fail(b: Breaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        permit = b.admit(now)
        assert permit is not None
        b.failed(permit, now)


def opened(now: float = 0.0) -> tuple[Breaker, list[Transition]]:
    b, seen = breaker()
    fail(b, now, 3)
    assert b.state is State.OPEN
    return b, seen


def test_closed_admits_and_counts_consecutive_failures() -> None:
    b, seen = breaker()
    fail(b, 0.0, 2)
    assert b.state is State.CLOSED and b.failures == 2
    permit = b.admit(0.0)
    assert permit == Permit(0)
    b.succeeded(permit, 0.0)  # an answer, a refusal included, resets the count
    assert b.failures == 0
    fail(b, 0.0, 2)
    assert b.state is State.CLOSED and not seen


def test_closed_opens_after_n_consecutive_failures() -> None:
    b, seen = breaker()
    fail(b, 5.0, 3)
    assert b.state is State.OPEN
    assert seen == [Transition(State.CLOSED, State.OPEN, 5.0, 3, 1.0)]


def test_open_fails_fast_until_the_cool_down_passes() -> None:
    b, _ = opened(0.0)
    assert b.blocked(0.5) and b.admit(0.5) is None
    assert b.retry_after_s(0.25) == pytest.approx(0.75)
    assert not b.blocked(1.0)  # asking does not take the probe
    assert b.state is State.OPEN


def test_open_to_half_open_admits_exactly_one_probe() -> None:
    b, seen = opened(0.0)
    probe = b.admit(1.0)
    assert probe is not None and probe.probe
    assert b.state is State.HALF_OPEN and seen[-1].new is State.HALF_OPEN
    assert b.admit(1.0) is None and b.blocked(1.1)
    assert b.retry_after_s(1.1) == CONFIG.open_s


def test_half_open_probe_success_closes() -> None:
    b, seen = opened(0.0)
    probe = b.admit(1.0)
    assert probe is not None
    b.succeeded(probe, 1.2)
    assert b.state is State.CLOSED and b.failures == 0
    assert seen[-1] == Transition(State.HALF_OPEN, State.CLOSED, 1.2, 0, 0.0)
    assert b.admit(1.2) is not None


def test_half_open_probe_failure_reopens_with_capped_backoff() -> None:
    b, seen = opened(0.0)
    now, cool_downs = 1.0, []
    for _ in range(4):
        probe = b.admit(now)
        assert probe is not None
        b.failed(probe, now)
        assert b.state is State.OPEN
        cool_downs.append(b.retry_after_s(now))
        now += cool_downs[-1]
    assert cool_downs == [2.0, 4.0, 4.0, 4.0]  # doubled, at most max_open_s
    assert [t.new for t in seen[1:3]] == [State.HALF_OPEN, State.OPEN]
    probe = b.admit(now)
    assert probe is not None
    b.succeeded(probe, now)  # closing resets the cool-down
    fail(b, now, 3)
    assert b.retry_after_s(now) == CONFIG.open_s


def test_an_abandoned_probe_frees_the_slot() -> None:
    b, _ = opened(0.0)
    probe = b.admit(1.0)
    assert probe is not None
    b.abandoned(probe, 1.1)
    assert b.state is State.HALF_OPEN and not b.blocked(1.1)
    again = b.admit(1.1)
    assert again is not None and again.probe


def test_abandoned_closed_call_changes_nothing() -> None:
    b, _ = breaker()
    fail(b, 0.0, 2)
    permit = b.admit(0.0)
    assert permit is not None
    b.abandoned(permit, 0.0)
    assert b.state is State.CLOSED and b.failures == 2


def test_outcomes_of_calls_from_before_a_transition_are_ignored() -> None:
    b, _ = breaker()
    late = [b.admit(0.0) for _ in range(2)]
    fail(b, 0.0, 3)
    assert state(b) is State.OPEN
    assert late[0] is not None and late[1] is not None
    b.succeeded(late[0], 0.5)  # a call out before the circuit opened
    assert state(b) is State.OPEN
    probe = b.admit(1.0)
    assert probe is not None
    b.failed(late[1], 1.1)  # stale: only the probe decides
    assert state(b) is State.HALF_OPEN
    b.succeeded(probe, 1.2)
    b.failed(late[1], 1.3)
    assert state(b) is State.CLOSED and b.failures == 0


def test_a_non_probe_permit_cannot_close_a_half_open_circuit() -> None:
    b, _ = opened(0.0)
    probe = b.admit(1.0)
    assert probe is not None
    b.succeeded(Permit(probe.generation, probe=False), 1.1)
    assert b.state is State.HALF_OPEN


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failures=0)
    with pytest.raises(ValueError):
        BreakerConfig(open_s=5.0, max_open_s=1.0)


# ------------------------------------------------- the grpc.aio adapter, the router


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata())


async def test_circuits_fail_fast_with_reason_and_retry_info() -> None:
    clock = Clock()
    circuits = Circuits("bank", CONFIG, clock=clock)
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)

    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await circuits.call("10.0.0.1:1", "BANK_UNAVAILABLE", down)
    assert circuits.state("10.0.0.1:1") is State.OPEN and calls == 3
    clock.now = 0.25
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await circuits.call("10.0.0.1:1", "BANK_UNAVAILABLE", down)
    assert calls == 3  # no call made
    error = from_rpc_error(caught.value)
    assert error.code is grpc.StatusCode.UNAVAILABLE and error.reason == "BANK_UNAVAILABLE"
    assert error.retry_after_s == pytest.approx(0.75)
    assert error.metadata["circuit"] == "open"
    assert circuits.blocked("10.0.0.1:1") == pytest.approx(0.75)
    assert circuits.blocked("10.0.0.2:1") is None  # per address


async def test_circuits_count_refusals_as_answers_and_probe_closes() -> None:
    clock = Clock()
    circuits = Circuits("bank", CONFIG, clock=clock)

    async def refuses() -> None:
        raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION)

    async def down() -> None:
        raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    async def answers() -> str:
        return "ok"

    for call in (down, down, refuses, down, down):  # a refusal resets the count
        with pytest.raises(grpc.aio.AioRpcError):
            await circuits.call("a", "BANK_UNAVAILABLE", call)
    assert circuits.state("a") is State.CLOSED
    with pytest.raises(grpc.aio.AioRpcError):
        await circuits.call("a", "BANK_UNAVAILABLE", down)
    assert circuits.state("a") is State.OPEN
    clock.now = 1.0
    assert await circuits.call("a", "BANK_UNAVAILABLE", answers) == "ok"  # the probe
    assert circuits.state("a") is State.CLOSED


async def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    circuits = Circuits("bank", BreakerConfig(failures=1), clock=clock)
    with pytest.raises(grpc.aio.AioRpcError):
        await circuits.call("a", "BANK_UNAVAILABLE", _raises(grpc.StatusCode.UNAVAILABLE))
    clock.now = 1.0
    probe = asyncio.ensure_future(circuits.call("a", "BANK_UNAVAILABLE", asyncio.Event().wait))
    await asyncio.sleep(0)
    assert circuits.state("a") is State.HALF_OPEN and circuits.blocked("a") is not None
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert circuits.blocked("a") is None


def _raises(code: grpc.StatusCode) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        raise rpc_error(code)

    return call


async def test_router_avoids_a_gateway_whose_circuit_is_open() -> None:
    clock = Clock()
    router = GatewayRouter(
        gateways=["g1:1", "g2:1"],
        failed_ttl_s=0.1,
        clock=clock,
        breaker=BreakerConfig(failures=2, open_s=5.0, max_open_s=5.0),
    )
    for _ in range(2):
        permit = router.circuits.admit("g1:1")
        assert permit is not None
        router.circuits.failed("g1:1", permit)
        router.failed("g1:1")
    clock.now = 1.0  # the soft avoidance ran out; the circuit is still open
    assert [await router.target() for _ in range(3)] == ["g2:1"] * 3
    assert router.circuits.admit("g1:1") is None
    clock.now = 5.0
    assert router.circuits.admit("g1:1") is not None  # the half-open probe
