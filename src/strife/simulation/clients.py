"""Clients: each pays its intents through any replica, as the real client outbox does.

One intent at a time, under a fresh idempotency key. A call goes to a random
replica with a deadline (sometimes the client gives up sooner, cancelling
the call); sometimes the same attempt goes to two replicas at once. Then:

- COMMITTED, or ABORTED for a reason that will not go away (insufficient
  funds...): the intent is over;
- ABORTED with `abort_transient`: the payment did not happen, and the client
  pays the same intent again under a NEW key (what the outbox does);
- no answer, PENDING (UNAVAILABLE BANK_UNAVAILABLE), REQUEST_IN_PROGRESS,
  TOO_MANY_IN_FLIGHT, a crashed replica: the SAME key again, at any replica,
  after a short backoff.

Every final answer is reported to the checker, with the replica that gave it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from strife.backoff import Backoff, Jitter
from strife.errors import Reason, from_rpc_error
from strife.gateway.service import transfer_id_for
from strife.gateway.tokens import Claims
from strife.simulation.faults import FaultMix
from strife.simulation.invariants import Checker
from strife.simulation.network import Network
from strife.simulation.nodes import Node
from strife.simulation.scenario import CURRENCY, Intent
from strife.simulation.trace import Trace
from strife.v1 import gateway_pb2, money_pb2

MAX_ATTEMPTS = 60
RETRY_BACKOFF = Backoff(0.01, 1.0, jitter=Jitter.FULL)
# Errors after which the same key is sent again (or asked about again).
_ASK_AGAIN = {Reason.REQUEST_IN_PROGRESS, Reason.PAYMENT_NOT_FOUND}
_RETRY_SAME_KEY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def transfer_id_of(bank: str, customer_id: str, key: str) -> str:
    """The transfer id the gateway derives from a customer's key (older gateways
    knew a customer by its id alone)."""
    derive = cast(Any, transfer_id_for)
    if len(inspect.signature(transfer_id_for).parameters) == 2:
        return str(derive(customer_id, key))
    return str(derive(bank, customer_id, key))


@dataclass(frozen=True, slots=True)
class Answer:
    replica: str
    status: str  # COMMITTED, ABORTED, REFUSED (an error no retry mends), "" (try again)
    transient: bool = False


class Client:
    def __init__(
        self,
        name: str,
        intents: tuple[Intent, ...],
        gateways: tuple[str, ...],
        network: Network,
        checker: Checker,
        trace: Trace,
        rng: random.Random,
        mix: Callable[[], FaultMix],
    ) -> None:
        self.name = name
        self.intents = intents
        self.node = Node(name)
        self.done = False
        self._gateways = gateways
        self._network = network
        self._checker = checker
        self._trace = trace
        self._rng = rng
        self._mix = mix
        self._keys = 0

    def start(self) -> None:
        self.node.spawn(self._run())

    async def _run(self) -> None:
        for intent in self.intents:
            await self._pursue(intent)
        self.done = True

    def _new_key(self, intent: Intent) -> tuple[str, str]:
        self._keys += 1
        nonce = self._rng.getrandbits(40)
        key = f"{self.name}-i{intent.intent_id:03d}-k{self._keys:03d}-{nonce:010x}"
        transfer_id = transfer_id_of(intent.payer.bank, intent.payer.customer_id, key)
        self._checker.new_key(intent, key, transfer_id)
        return key, transfer_id

    async def _pursue(self, intent: Intent) -> None:
        key, transfer_id = self._new_key(intent)
        delays = RETRY_BACKOFF.delays(self._rng)
        for _ in range(MAX_ATTEMPTS):
            answers = await self._attempt(intent, key, transfer_id)
            then = _next_step(answers)
            if then == "retry" and self._rng.random() < self._mix().lookup:
                # No answer: ask what became of the key first, as the outbox does.
                then = _next_step([await self._lookup(intent, key, transfer_id)])
            if then == "done":
                self._checker.resolved(intent)
                return
            if then == "new-key":  # transient abort: it did not happen; pay again
                key, transfer_id = self._new_key(intent)
                delays = RETRY_BACKOFF.delays(self._rng)
                continue
            await asyncio.sleep(next(delays))
        self._trace(self.name, f"intent {intent.intent_id} given up")

    async def _attempt(self, intent: Intent, key: str, transfer_id: str) -> list[Answer]:
        mix = self._mix()
        targets = [self._rng.choice(self._gateways)]
        if mix.hedge and self._rng.random() < mix.hedge:
            others = [g for g in self._gateways if g != targets[0]]
            targets.append(self._rng.choice(others))
        calls = [self._pay(intent, key, transfer_id, gateway, mix) for gateway in targets]
        return list(await asyncio.gather(*calls))

    def _deadline(self, mix: FaultMix) -> tuple[float, grpc.StatusCode]:
        rng = self._rng
        deadline = rng.uniform(mix.deadline_min_s, mix.deadline_max_s)
        if mix.client_cancel and rng.random() < mix.client_cancel:
            return rng.uniform(0.0, deadline), grpc.StatusCode.CANCELLED  # gives up first
        return deadline, grpc.StatusCode.DEADLINE_EXCEEDED

    async def _pay(
        self, intent: Intent, key: str, transfer_id: str, gateway: str, mix: FaultMix
    ) -> Answer:
        payer, payee = intent.payer, intent.payee
        request = gateway_pb2.ProcessPaymentRequest(
            idempotency_key=key,
            from_account=money_pb2.AccountRef(bank=payer.bank, account_id=payer.account_id),
            to_account=money_pb2.AccountRef(bank=payee.bank, account_id=payee.account_id),
            amount=money_pb2.Money(amount_minor=intent.amount_minor, currency=CURRENCY),
            description=f"intent {intent.intent_id}",
        )
        return await self._ask(intent, key, transfer_id, gateway, "ProcessPayment", request, mix)

    async def _lookup(self, intent: Intent, key: str, transfer_id: str) -> Answer:
        gateway = self._rng.choice(self._gateways)
        request = gateway_pb2.GetPaymentRequest(idempotency_key=key)
        return await self._ask(
            intent, key, transfer_id, gateway, "GetPayment", request, self._mix()
        )

    async def _ask(
        self,
        intent: Intent,
        key: str,
        transfer_id: str,
        gateway: str,
        method: str,
        request: Any,
        mix: FaultMix,
    ) -> Answer:
        """One call about `key`; its answer, reported to the checker when final."""
        deadline, expiry = self._deadline(mix)
        payer = intent.payer
        # What the customer's access token says (see strife.gateway.auth.TokenCheck).
        claims = Claims(
            customer_id=payer.customer_id,
            bank=payer.bank,
            accounts=frozenset({f"{payer.bank}/{payer.account_id}"}),
            expires_at=math.inf,
        )
        try:
            reply = await self._network.call(
                gateway, method, request, deadline_s=deadline, principal=claims, expiry=expiry
            )
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if exc.code() in _RETRY_SAME_KEY or error.reason in _ASK_AGAIN:
                return Answer(gateway, "")
            self._checker.refused(
                intent, key, gateway, f"{method}: {exc.code().name} {error.reason}"
            )
            return Answer(gateway, "REFUSED")
        payment = reply.payment
        status = gateway_pb2.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")
        transient = " transient" if payment.abort_transient else ""
        self._trace(
            self.name, f"{method} {key} at {gateway}: {status} {payment.abort_reason}{transient}"
        )
        if status == "PENDING":
            return Answer(gateway, "")
        if payment.transfer_id != transfer_id:
            self._checker.refused(intent, key, gateway, f"transfer id {payment.transfer_id}")
        self._checker.answered(
            intent,
            key,
            transfer_id,
            f"{gateway}/{method}",
            status,
            payment.abort_reason,
            payment.abort_transient,
        )
        return Answer(gateway, status, payment.abort_transient)


def _next_step(answers: list[Answer]) -> str:
    """done (committed, refused for good, or an error no retry mends), new-key
    (a transient abort), or retry (the same key: nothing final was heard)."""
    statuses = {a.status for a in answers}
    if statuses & {"COMMITTED", "REFUSED"}:
        return "done"
    if any(a.status == "ABORTED" and not a.transient for a in answers):
        return "done"
    if "ABORTED" in statuses:
        return "new-key"
    return "retry"
