"""The simulated network: every call between nodes is a request and a reply message.

Each message may be lost, delayed (past the caller's deadline), jittered (so
messages overtake each other) or, for a request, delivered twice, as the
run's fault mix says; a partition loses everything between two nodes. A
request to a node that is down is refused (UNAVAILABLE) or never answered.

The caller sees what a `grpc.aio` stub raises: the reply, the handler's status
as `AioRpcError`, DEADLINE_EXCEEDED when its deadline passes first (or
CANCELLED when it gave up itself). As in gRPC, the end of the call on the
caller's side (deadline, cancellation, crash) cancels the handler on the
server: a handler never outlives its call.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from strife.simulation.faults import FaultMix
from strife.simulation.nodes import Node, current_node, require_alive
from strife.simulation.rpc import RpcAbort, copied, rpc_error
from strife.simulation.trace import Trace
from strife.v1 import bank_pb2, coordinator_pb2, gateway_pb2


@dataclass(frozen=True, slots=True)
class Inbound:
    """A request as its handler receives it: what the caller's certificate and
    token prove travel with it (`peer`, `principal`)."""

    method: str
    request: Any
    peer: str
    principal: Any = None


class Endpoint(Protocol):
    def serving(self) -> Node | None:
        """The node accepting calls now, or None while down or starting."""

    async def dispatch(self, call: Inbound) -> Any:
        """Run the handler of `call.method`; its return value is the reply."""


Unexpected = Callable[[str, BaseException], None]


class Network:
    def __init__(
        self, rng: random.Random, mix: FaultMix, trace: Trace, unexpected: Unexpected
    ) -> None:
        self.rng = rng
        self.mix = mix
        self._trace = trace
        self._unexpected = unexpected
        self._endpoints: dict[str, Endpoint] = {}
        self._cut: dict[frozenset[str], float] = {}  # pair -> virtual time it heals
        self._ids = itertools.count(1)
        self.in_flight = 0  # messages on their way

    def register(self, name: str, endpoint: Endpoint) -> None:
        self._endpoints[name] = endpoint

    # ------------------------------------------------------------- partitions

    def cut(self, a: str, b: str, until: float) -> None:
        self._cut[frozenset((a, b))] = until
        self._trace("net", f"partition {a} | {b} until {until:.3f}")

    def heal(self) -> None:
        self._cut.clear()

    def _blocked(self, a: str, b: str) -> bool:
        until = self._cut.get(frozenset((a, b)))
        return until is not None and asyncio.get_running_loop().time() < until

    # ------------------------------------------------------------------ calls

    async def call(
        self,
        dst: str,
        method: str,
        request: Any,
        *,
        deadline_s: float | None,
        principal: Any = None,
        expiry: grpc.StatusCode = grpc.StatusCode.DEADLINE_EXCEEDED,
    ) -> Any:
        """One unary call from the current node to `dst`, as a stub makes it."""
        require_alive()
        node = current_node()
        src = node.name if node is not None else "sim"
        call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        handlers: list[asyncio.Task[Any]] = []
        inbound = Inbound(method, copied(request), src, principal)
        copies = 2 if self.rng.random() < self.mix.duplicate else 1
        for copy in range(copies):
            self._send(call_id, copy, src, dst, inbound, reply, handlers)
        try:
            async with asyncio.timeout(deadline_s):
                return await reply
        except TimeoutError:
            self._trace(src, f"#{call_id} {method} to {dst}: {expiry.name}")
            raise rpc_error(expiry, "", f"{method} to {dst}: {expiry.name}") from None
        finally:
            if not reply.done():
                reply.cancel()
            for handler in handlers:
                handler.cancel()

    def _latency(self) -> float:
        rng, mix = self.rng, self.mix
        latency = rng.uniform(0.0002, 0.002)
        if mix.reorder and rng.random() < mix.reorder:
            latency += rng.uniform(0.0, 0.02)
        if mix.delay and rng.random() < mix.delay:
            latency += rng.uniform(0.0, mix.delay_max_s)
        return latency

    def _send(
        self,
        call_id: int,
        copy: int,
        src: str,
        dst: str,
        inbound: Inbound,
        reply: asyncio.Future[Any],
        handlers: list[asyncio.Task[Any]],
    ) -> None:
        dup = " (dup)" if copy else ""
        what = f"#{call_id}{dup} {inbound.method}{_about(inbound.request)} to {dst}"
        if self._blocked(src, dst):
            self._trace(src, f"{what}: cut off")
            return
        if self.mix.drop and self.rng.random() < self.mix.drop:
            self._trace(src, f"{what}: lost")
            return
        delay = self._latency()
        self._trace(src, f"{what} (+{delay * 1000:.1f} ms)")
        self.in_flight += 1
        asyncio.get_running_loop().call_later(
            delay, self._deliver, call_id, dst, inbound, reply, handlers
        )

    def _deliver(
        self,
        call_id: int,
        dst: str,
        inbound: Inbound,
        reply: asyncio.Future[Any],
        handlers: list[asyncio.Task[Any]],
    ) -> None:
        self.in_flight -= 1
        if reply.done():
            return  # the call is over (deadline, cancelled): the server never starts it
        endpoint = self._endpoints[dst]
        node = endpoint.serving()
        if node is None:
            if self.rng.random() < 0.5:
                self._trace(dst, f"#{call_id} refused: down")
                error = rpc_error(grpc.StatusCode.UNAVAILABLE, "", f"{dst} is down")
                self._reply(call_id, dst, inbound.peer, reply, error)
            else:
                self._trace(dst, f"#{call_id} lost: down")
            return
        handlers.append(node.spawn(self._serve(call_id, dst, endpoint, inbound, reply)))

    async def _serve(
        self,
        call_id: int,
        dst: str,
        endpoint: Endpoint,
        inbound: Inbound,
        reply: asyncio.Future[Any],
    ) -> None:
        outcome: Any
        try:
            outcome = copied(await endpoint.dispatch(inbound))
        except RpcAbort as abort:
            outcome = abort.to_error()
        except Exception as exc:  # a handler bug: gRPC would answer UNKNOWN
            self._unexpected(f"{dst} {inbound.method}", exc)
            outcome = rpc_error(grpc.StatusCode.UNKNOWN, "", repr(exc))
        self._reply(call_id, dst, inbound.peer, reply, outcome)

    def _reply(
        self, call_id: int, src: str, dst: str, reply: asyncio.Future[Any], outcome: Any
    ) -> None:
        what = f"#{call_id} reply {_outcome(outcome)}"
        if self._blocked(src, dst):
            self._trace(src, f"{what}: cut off")
            return
        if self.mix.drop and self.rng.random() < self.mix.drop:
            self._trace(src, f"{what}: lost")
            return
        delay = self._latency()
        self._trace(src, f"{what} (+{delay * 1000:.1f} ms)")
        self.in_flight += 1
        asyncio.get_running_loop().call_later(delay, self._answer, reply, outcome)

    def _answer(self, reply: asyncio.Future[Any], outcome: Any) -> None:
        self.in_flight -= 1
        if reply.done():
            return
        if isinstance(outcome, BaseException):
            reply.set_exception(outcome)
        else:
            reply.set_result(outcome)


def _about(request: Any) -> str:
    """A few words on a request for the trace: its transfer id or batch size."""
    for batch in ("prepares", "decisions"):
        items = getattr(request, batch, None)
        if items is not None:
            return f"[{' '.join(_short(i.transfer_id) for i in items)}]"
    transfer_id = getattr(request, "transfer_id", "")
    if transfer_id:
        return f" {_short(transfer_id)}"
    key = getattr(request, "idempotency_key", "")
    return f" {key}" if key else ""


def _outcome(outcome: Any) -> str:
    """A reply in a few words: a status, a payment's outcome, a decision, a state."""
    if isinstance(outcome, grpc.aio.AioRpcError):
        return f"{outcome.code().name} {outcome.details()}"
    fields = {field.name: value for field, value in outcome.ListFields()}
    if "payment" in fields:
        payment = fields["payment"]
        status = gateway_pb2.PaymentStatus.Name(payment.status)
        return f"{status.removeprefix('PAYMENT_STATUS_')} {payment.abort_reason}".rstrip()
    if "decision" in fields or outcome.DESCRIPTOR.name == "GetDecisionResponse":
        return str(coordinator_pb2.Decision.Name(outcome.decision)).removeprefix("DECISION_")
    if "outcomes" in fields:
        return " ".join(_item(o) for o in fields["outcomes"])
    if "state" in fields:
        return bank_pb2.TransferState.Name(fields["state"]).removeprefix("TRANSFER_STATE_")
    return "ok"


def _item(outcome: Any) -> str:
    if outcome.error_reason:
        return str(outcome.error_reason)
    return bank_pb2.TransferState.Name(outcome.state).removeprefix("TRANSFER_STATE_")


def _short(transfer_id: str) -> str:
    return transfer_id[:8]
