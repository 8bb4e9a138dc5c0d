"""The customers: each its own `StrifeClient` and outbox file, paying the others.

Besides paying through the outbox, a customer can send a payment directly to
a gateway with a deadline shorter than the payment path, or cancel the call
soon after sending it (the nemesis's `deadline` and `cancel` faults); the
payment is then queued in its outbox under the same key, as an application
retrying a call it gave up on would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from strife.backoff import Backoff
from strife.chaos.checker import undecided
from strife.chaos.history import ANSWER, FAIL, INVOKE, OK, UNKNOWN, History, Intent
from strife.client import (
    ClientConfig,
    ClientError,
    Credentials,
    EntryState,
    MoneyError,
    PaymentResult,
    RetryPolicy,
    StrifeClient,
    StrifeError,
    new_idempotency_key,
)
from strife.loadgen._model import Customer
from strife.rpc.channels import ANY_GATEWAY, ChannelPool
from strife.v1 import gateway_pb2, gateway_pb2_grpc, money_pb2

CURRENCY = "USD"
T = TypeVar("T", bound=Hashable)
STATUS = {
    gateway_pb2.PAYMENT_STATUS_PENDING: "PENDING",
    gateway_pb2.PAYMENT_STATUS_COMMITTED: "COMMITTED",
    gateway_pb2.PAYMENT_STATUS_ABORTED: "ABORTED",
}
LOGIN_ATTEMPTS = 40
LOGIN_BACKOFF = Backoff(0.1, 2.0)


def client_config() -> ClientConfig:
    return ClientConfig(
        call_timeout_s=5.0,
        pay_wait_s=5.0,
        failed_gateway_ttl_s=2.0,
        idle_poll_s=0.5,
        login_poll_s=2.0,
        drain_timeout_s=10.0,
        retry=RetryPolicy(cap_s=2.0),
        synchronous="NORMAL",
    )


@dataclass
class Payer:
    customer: Customer
    client: StrifeClient
    customer_id: str = ""
    intents: dict[int, Intent] = field(default_factory=dict)  # outbox entry id -> intent


class Customers:
    def __init__(
        self,
        history: History,
        customers: list[Customer],
        *,
        certs: Path,
        balancer: str,
        outboxes: Path,
        rng: random.Random,
    ) -> None:
        self.history = history
        self.rng = rng
        self.certs = certs
        self.payers = [
            Payer(
                c,
                StrifeClient(
                    certs=certs,
                    balancer=balancer,
                    outbox=outboxes / f"{c.username}.db",
                    credentials=_credentials(c),
                    config=client_config(),
                    rng=random.Random(i),
                ),
            )
            for i, c in enumerate(customers)
        ]
        self.pool: ChannelPool | None = None
        self.sent = 0

    async def open(self) -> None:
        self.pool = ChannelPool(self.certs, peer=ANY_GATEWAY)
        for payer in self.payers:
            await payer.client.__aenter__()
            payer.client.on_outcome(functools.partial(self._outcome, payer))
        await asyncio.gather(*(self._login(p) for p in self.payers))

    async def _login(self, payer: Payer) -> None:
        for attempt in range(LOGIN_ATTEMPTS):
            try:
                session = await payer.client.login()
            except (StrifeError, ClientError):
                await asyncio.sleep(LOGIN_BACKOFF.delay_s(attempt + 1))
                continue
            payer.customer_id = session.customer_id
            return
        raise RuntimeError(f"{payer.customer.username} could not log in")

    async def close(self) -> None:
        for payer in self.payers:
            with contextlib.suppress(Exception):
                await payer.client.aclose()
        if self.pool is not None:
            await self.pool.close()

    # ------------------------------------------------------------ paying

    def _intent(self, payer: Payer, via: str) -> Intent:
        payee = self.rng.choice([p for p in self.payers if p is not payer]).customer
        return self.history.new_intent(
            customer=payer.customer.username,
            customer_id=payer.customer_id,
            bank=payer.customer.bank,
            from_account=payer.customer.account_id,
            to_bank=payee.bank,
            to_account=payee.account_id,
            amount_minor=self.rng.randint(1, 5_000),
            via=via,
        )

    def _outcome(self, payer: Payer, result: PaymentResult) -> None:
        intent = payer.intents.get(result.entry_id)
        if intent is not None and result.settled:
            self.history.record(
                ANSWER,
                intent,
                result.idempotency_key,
                str(result.state),
                source="outbox",
                reason=result.reason,
            )

    async def _queue(self, payer: Payer, intent: Intent, key: str, wait_s: float) -> None:
        """`pay` through the outbox; the answer (or its absence) goes in the history."""
        try:
            result = await payer.client.pay(
                f"{intent.to_bank}/{intent.to_account}",
                intent.amount_minor,
                CURRENCY,
                key=key,
                wait_s=wait_s,
            )
        except (StrifeError, ClientError, MoneyError, ValueError) as exc:
            with contextlib.suppress(Exception):
                entry = await payer.client.outbox_entry(key)
                payer.intents[entry.id] = intent
                self.history.record(UNKNOWN, intent, key, error=type(exc).__name__)
                return
            intent.queued = False
            self.history.record(FAIL, intent, key, "NOT_QUEUED", error=str(exc)[:200])
            return
        payer.intents[result.entry_id] = intent
        if result.idempotency_key != key:
            self.history.link_key(intent, result.idempotency_key)
        state = result.state
        if state == EntryState.COMMITTED:
            self.history.record(OK, intent, result.idempotency_key, str(state))
        elif state in (EntryState.ABORTED, EntryState.FAILED):
            self.history.record(
                FAIL, intent, result.idempotency_key, str(state), reason=result.reason
            )
        else:
            self.history.record(UNKNOWN, intent, result.idempotency_key, str(state))

    async def run(self, stop: asyncio.Event, max_payments: int, rate_per_s: float) -> None:
        """Every customer pays others until `stop` or `max_payments` intents in all."""
        mean_gap_s = len(self.payers) / rate_per_s

        async def loop(payer: Payer) -> None:
            await asyncio.sleep(self.rng.uniform(0, mean_gap_s))
            while not stop.is_set() and self.sent < max_payments:
                self.sent += 1
                intent = self._intent(payer, "outbox")
                key = new_idempotency_key()
                self.history.record(INVOKE, intent, key)
                await self._queue(payer, intent, key, wait_s=5.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.expovariate(1 / mean_gap_s))

        await asyncio.gather(*(loop(p) for p in self.payers))

    # ------------------------------------------------------ direct calls

    async def direct(self, kind: str, gateways: list[str], calls: int) -> dict[str, int]:
        """`calls` payments sent straight to gateways with a too-short deadline
        (`deadline`) or cancelled after a few milliseconds (`cancel`), then queued
        in the outbox under the same key. Returns how the calls ended."""
        ended: dict[str, int] = {}

        async def one() -> None:
            payer = self.rng.choice(self.payers)
            session = payer.client.session
            if session is None or not gateways:
                return
            intent = self._intent(payer, kind)
            key = new_idempotency_key()
            self.history.record(INVOKE, intent, key, via=kind)
            assert self.pool is not None
            stub = gateway_pb2_grpc.PaymentGatewayStub(self.pool.get(self.rng.choice(gateways)))
            request = gateway_pb2.ProcessPaymentRequest(
                idempotency_key=key,
                from_account=money_pb2.AccountRef(bank=intent.bank, account_id=intent.from_account),
                to_account=money_pb2.AccountRef(bank=intent.to_bank, account_id=intent.to_account),
                amount=money_pb2.Money(amount_minor=intent.amount_minor, currency=CURRENCY),
            )
            metadata = (("authorization", f"Bearer {session.access_token}"),)
            deadline_s = self.rng.uniform(0.001, 0.03) if kind == "deadline" else 5.0
            call = asyncio.ensure_future(
                stub.ProcessPayment(request, timeout=deadline_s, metadata=metadata)
            )
            if kind == "cancel":
                await asyncio.sleep(self.rng.uniform(0.001, 0.03))
                call.cancel()
            try:
                reply = await call
            except asyncio.CancelledError:
                outcome = "CANCELLED"
                self.history.record(UNKNOWN, intent, key, outcome)
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
                self.history.record(UNKNOWN, intent, key, outcome)
            else:
                outcome = STATUS.get(reply.payment.status, "PENDING")
                kind_of = OK if outcome == "COMMITTED" else FAIL if outcome == "ABORTED" else None
                self.history.record(kind_of or UNKNOWN, intent, key, outcome, source="direct")
            ended[outcome] = ended.get(outcome, 0) + 1
            await self._queue(payer, intent, key, wait_s=0)

        await asyncio.gather(*(one() for _ in range(calls)))
        return ended

    # -------------------------------------------------------- quiescence

    async def drain(self, timeout_s: float) -> int:
        """Until every outbox is empty or `timeout_s` passes; returns what is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = sum(await asyncio.gather(*(p.client.queued() for p in self.payers)))
            if left == 0 or time.monotonic() > deadline:
                return left
            busy = [p for p in self.payers if await p.client.queued()]
            await asyncio.gather(*(p.client.drain(timeout_s=5.0) for p in busy))
            await asyncio.sleep(0.2)

    async def collect(self) -> dict[str, int]:
        """Every outbox entry's final state and keys, into the history."""
        states: dict[str, int] = {}
        for payer in self.payers:
            for entry in await payer.client.outbox_entries(limit=10_000):
                intent = payer.intents.get(entry.id)
                if intent is None:
                    continue
                for key in entry.keys:
                    self.history.link_key(intent, key)
                intent.final_state = str(entry.state)
                states[intent.final_state] = states.get(intent.final_state, 0) + 1
                if entry.settled:
                    self.history.record(
                        ANSWER,
                        intent,
                        entry.idempotency_key,
                        str(entry.state),
                        source="outbox_final",
                    )
        return states

    async def ask_gateways(
        self, gateways: dict[str, str], settle_timeout_s: float
    ) -> dict[str, dict[str, str]]:
        """GetPayment for every key at every gateway: key -> gateway -> status.

        A replica may still hold a key PENDING when the run goes quiet: its
        settler resolves it on its own schedule (backed off, behind a circuit
        breaker that a partition opened). Undecided answers are asked again
        for up to `settle_timeout_s` after the first round; what is still
        undecided then is what the checker sees."""
        assert self.pool is not None
        pool = self.pool
        tokens = {p.customer_id: p.client.session for p in self.payers}
        limit = asyncio.Semaphore(64)

        intents = {key: intent for intent in self.history.intents.values() for key in intent.keys}

        async def ask(asked: tuple[str, str]) -> str | None:
            key, name = asked
            intent = intents[key]
            session = tokens.get(intent.customer_id)
            if session is None:
                return None
            stub = gateway_pb2_grpc.PaymentGatewayStub(pool.get(gateways[name]))
            metadata = (("authorization", f"Bearer {session.access_token}"),)
            async with limit:
                for attempt in range(5):
                    try:
                        reply = await stub.GetPayment(
                            gateway_pb2.GetPaymentRequest(idempotency_key=key),
                            timeout=5.0,
                            metadata=metadata,
                        )
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() == grpc.StatusCode.NOT_FOUND:
                            status = "NOT_FOUND"
                            break
                        status = f"ERROR:{exc.code().name}"
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    status = STATUS.get(reply.payment.status, "PENDING")
                    break
            if status in ("COMMITTED", "ABORTED"):
                self.history.record(ANSWER, intent, key, status, source=name)
            return status

        asks = [(key, name) for key in intents for name in gateways]
        answers: dict[str, dict[str, str]] = {}
        for (key, name), status in (await ask_until_decided(asks, ask, settle_timeout_s)).items():
            answers.setdefault(key, {})[name] = status
        return answers


async def ask_until_decided(
    asks: Sequence[T],
    ask: Callable[[T], Awaitable[str | None]],
    timeout_s: float,
    pause_s: float = 0.5,
) -> dict[T, str]:
    """Every question's last answer (None: not asked at all). Undecided answers
    are asked again, `pause_s` apart, for up to `timeout_s` after the first
    round (which alone takes minutes after a long run): the question is whether
    a replica settles, not whether it already has."""
    last: dict[T, str] = {}
    open_ = list(asks)
    deadline: float | None = None
    while True:
        for one, status in zip(open_, await asyncio.gather(*map(ask, open_)), strict=True):
            if status is not None:
                last[one] = status
        open_ = [one for one in open_ if one in last and undecided(last[one])]
        deadline = deadline or time.monotonic() + timeout_s
        if not open_ or time.monotonic() >= deadline:
            return last
        await asyncio.sleep(pause_s)


def _credentials(customer: Customer) -> Any:
    async def provide() -> Credentials:
        return Credentials(customer.username, customer.password, customer.bank)

    return provide
