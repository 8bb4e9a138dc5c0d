"""Circuit breakers per peer address for grpc.aio calls: the I/O side of `breaker`.

`Circuits` keeps one `Breaker` per address, reads the time from a clock
(the running event loop's by default, so simulated time works), exports the
state and transitions as metrics and logs one line per transition.
`Circuits.call` runs one call under its peer's breaker: refused, it raises at
once an `AioRpcError` UNAVAILABLE whose ErrorInfo names `reason` (and
metadata `circuit=open`) and whose RetryInfo gives the time until the
half-open probe, so a caller handles it exactly like a peer that did not
answer. Only UNAVAILABLE and DEADLINE_EXCEEDED count as failures; any other
answer, a refusal included, shows the peer is there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter, Gauge

from strife.errors import make_status
from strife.observability.logging import get_logger
from strife.observability.metrics import REGISTRY as METRICS
from strife.rpc.breaker import Breaker, BreakerConfig, Permit, State, Transition

_log = get_logger("strife.rpc.circuits")

CIRCUIT_STATE = Gauge(
    "strife_circuit_state",
    "Circuit breaker state per peer: 0 closed, 1 half-open, 2 open",
    ["peer_kind", "peer"],
    registry=METRICS,
)
CIRCUIT_TRANSITIONS = Counter(
    "strife_circuit_transitions",
    "Circuit breaker transitions per peer, by the state entered",
    ["peer_kind", "peer", "state"],
    registry=METRICS,
)
CIRCUIT_REJECTED = Counter(
    "strife_circuit_rejected",
    "Calls failed fast by an open circuit, without a network call",
    ["peer_kind", "peer"],
    registry=METRICS,
)
_LEVEL = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}
FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
T = TypeVar("T")


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def open_circuit_error(reason: str, peer: str, retry_after_s: float) -> grpc.aio.AioRpcError:
    """What a call refused by an open circuit raises: no answer, and when to ask again."""
    message = f"circuit open towards {peer}; not called"
    status = make_status(
        grpc.StatusCode.UNAVAILABLE,
        reason,
        message,
        {"circuit": "open", "peer": peer},
        retry_after_s,
    )
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=message,
    )


class Circuits:
    """One breaker per peer address, of one kind of peer ("bank", "gateway")."""

    def __init__(
        self,
        kind: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = loop_time,
    ) -> None:
        self.kind = kind
        self.config = config or BreakerConfig()
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    def breaker(self, peer: str) -> Breaker:
        breaker = self._breakers.get(peer)
        if breaker is None:
            breaker = self._breakers[peer] = Breaker(
                self.config, lambda change: self._changed(peer, change)
            )
            CIRCUIT_STATE.labels(self.kind, peer).set(0)
        return breaker

    def state(self, peer: str) -> State:
        breaker = self._breakers.get(peer)
        return State.CLOSED if breaker is None else breaker.state

    def blocked(self, peer: str) -> float | None:
        """The seconds until a call may go out if a call to `peer` would fail
        fast now, else None. Takes no probe."""
        breaker = self._breakers.get(peer)
        if breaker is None:
            return None
        now = self._clock()
        return breaker.retry_after_s(now) if breaker.blocked(now) else None

    def refused(self, peer: str) -> float | None:
        """`blocked`, for a caller that fails its call fast when it is (counted)."""
        wait_s = self.blocked(peer)
        if wait_s is not None:
            CIRCUIT_REJECTED.labels(self.kind, peer).inc()
        return wait_s

    def admit(self, peer: str) -> Permit | None:
        permit = self.breaker(peer).admit(self._clock())
        if permit is None:
            CIRCUIT_REJECTED.labels(self.kind, peer).inc()
        return permit

    def retry_after_s(self, peer: str) -> float:
        return self.breaker(peer).retry_after_s(self._clock())

    def succeeded(self, peer: str, permit: Permit) -> None:
        self.breaker(peer).succeeded(permit, self._clock())

    def failed(self, peer: str, permit: Permit) -> None:
        self.breaker(peer).failed(permit, self._clock())

    def abandoned(self, peer: str, permit: Permit) -> None:
        self.breaker(peer).abandoned(permit, self._clock())

    def record(self, peer: str, permit: Permit, error: BaseException | None) -> None:
        """A call's outcome: None (answered), an exception, or a cancellation."""
        if error is None:
            self.succeeded(peer, permit)
        elif isinstance(error, grpc.aio.AioRpcError):
            if error.code() in FAILURE_CODES:
                self.failed(peer, permit)
            else:
                self.succeeded(peer, permit)
        elif isinstance(error, TimeoutError):
            self.failed(peer, permit)
        else:  # cancelled, or our own bug: nothing learnt about the peer
            self.abandoned(peer, permit)

    async def call(self, peer: str, reason: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` (one RPC to `peer`) under its breaker."""
        permit = self.admit(peer)
        if permit is None:
            raise open_circuit_error(reason, peer, self.retry_after_s(peer))
        try:
            result = await call()
        except BaseException as exc:
            self.record(peer, permit, exc)
            raise
        self.record(peer, permit, None)
        return result

    def _changed(self, peer: str, change: Transition) -> None:
        CIRCUIT_STATE.labels(self.kind, peer).set(_LEVEL[change.new])
        CIRCUIT_TRANSITIONS.labels(self.kind, peer, change.new.value).inc()
        log = _log.warning if change.new is State.OPEN else _log.info
        log(
            "circuit_" + change.new.value,
            peer_kind=self.kind,
            peer=peer,
            previous=change.old.value,
            failures=change.failures,
            retry_after_s=round(change.retry_after_s, 3),
        )


class GuardedStub:
    """A stub whose every call goes through its peer's breaker (awaited calls only)."""

    def __init__(self, stub: Any, circuits: Circuits, peer: str, reason: str) -> None:
        self._stub = stub
        self._circuits = circuits
        self._peer = peer
        self._reason = reason

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        multicallable = getattr(self._stub, method)

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            async def once() -> Any:
                return await multicallable(*args, **kwargs)

            return await self._circuits.call(self._peer, self._reason, once)

        return guarded
