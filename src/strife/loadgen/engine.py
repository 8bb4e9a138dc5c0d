"""The load itself: logins, gateway choice with failover, closed and open loops.

Each simulated customer holds its own access token and its own choice of
gateway, asked of the balancer and kept for `gateway_ttl_s` (jittered, so a
hundred customers do not all ask again in the same millisecond and herd onto
whichever gateway looked idlest at that instant). A payment keeps one
idempotency key for all its sends, so retrying after a lost answer, on the
same gateway or another, can never move money twice; that is exactly what
the audit then checks.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import grpc

from strife.backoff import Backoff, Jitter
from strife.errors import StrifeError, from_rpc_error
from strife.loadgen._model import Customer, Outcome, Payment
from strife.loadgen.config import LoadConfig
from strife.loadgen.customers import PayeePicker
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient
from strife.v1 import gateway_pb2, gateway_pb2_grpc, money_pb2

GATEWAY = "gateway"
LOGIN_ATTEMPTS = 6
TOKEN_MARGIN_S = 30.0
BACKOFF = Backoff(0.05, 1.0, jitter=Jitter.FULL)
DIRECTORY_REFRESH_S = 1.0
RESOLVE_CONCURRENCY = 16
RESOLVE_PAUSE_S = 1.0

# Refusals about the request itself: sending it again gets the same answer.
_FINAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class LoadError(RuntimeError):
    """The load cannot go on (e.g. a customer's login is refused)."""


class Action(Enum):
    FINAL = "final"
    RETRY = "retry"  # same gateway: it is working on it, or asks us to wait
    FAILOVER = "failover"  # another gateway: this one did not answer
    RELOGIN = "relogin"


def action_for(error: StrifeError) -> Action:
    """What a failed ProcessPayment call means for the next send of the same key."""
    if error.code in _FINAL_CODES:
        return Action.FINAL
    if error.code is grpc.StatusCode.UNAUTHENTICATED:
        return Action.RELOGIN
    if error.code is grpc.StatusCode.UNAVAILABLE and error.reason == "BANK_UNAVAILABLE":
        return Action.RETRY  # the gateway holds the record and resolves it; ask it again
    if error.code is grpc.StatusCode.ABORTED:
        return Action.RETRY  # REQUEST_IN_PROGRESS: another attempt is running
    return Action.FAILOVER  # UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL...


def error_key(error: StrifeError) -> str:
    return f"{error.code.name}/{error.reason}" if error.reason else error.code.name


@dataclass
class Counters:
    """Live counts, read by the progress display while the run goes on."""

    issued: int = 0
    answered: int = 0
    committed: int = 0
    aborted: int = 0
    skipped: int = 0
    failed_sends: int = 0
    in_flight: int = 0
    sends_by_gateway: Counter[str] = field(default_factory=Counter)
    answers_by_gateway: Counter[str] = field(default_factory=Counter)
    logins_by_gateway: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    payer_bank: Counter[str] = field(default_factory=Counter)
    payee_bank: Counter[str] = field(default_factory=Counter)


class GatewayDirectory:
    """Gateway choice through the balancer, with instance names for the counts."""

    def __init__(
        self, balancer: BalancerClient, policy: str | None, clock: Callable[[], float]
    ) -> None:
        self._balancer = balancer
        self._policy = policy
        self._clock = clock
        self._names: dict[str, str] = {}
        self._refreshed_at = -math.inf

    async def refresh(self) -> list[str]:
        infos = await self._balancer.list(GATEWAY)
        self._names.update({info.address: info.instance for info in infos})
        self._refreshed_at = self._clock()
        return sorted(info.instance for info in infos)

    async def choose(self, exclude: Sequence[str]) -> tuple[str, str]:
        address = await self._balancer.best(GATEWAY, policy=self._policy, exclude=exclude)
        name = self._names.get(address)
        if name is None and self._clock() - self._refreshed_at > DIRECTORY_REFRESH_S:
            await self.refresh()
            name = self._names.get(address)
        return name or address, address


@dataclass(eq=False)
class Session:
    """One simulated customer: its token and its current gateway."""

    customer: Customer
    token: str = ""
    refresh_at_s: float = 0.0
    gateway: tuple[str, str] | None = None
    gateway_until_s: float = 0.0
    avoid: tuple[str, ...] = ()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def failed(self, gateway: str) -> None:
        """The gateway did not answer: ask the balancer for another one next time."""
        self.gateway = None
        self.avoid = (gateway,)


class Engine:
    """Runs one configured load against a cluster, recording every payment."""

    def __init__(
        self,
        config: LoadConfig,
        payers: Sequence[Customer],
        payees: PayeePicker,
        pool: ChannelPool,
        balancer: BalancerClient,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.sessions = [Session(c) for c in payers]
        self._by_user = {s.customer.username: s for s in self.sessions}
        self._payees = payees
        self._pool = pool
        self._clock = clock
        self.directory = GatewayDirectory(balancer, config.policy, clock)
        self._rng = random.Random(config.seed)
        self._stubs: dict[str, Any] = {}
        self._login_slots = asyncio.Semaphore(config.login_concurrency)
        self.counters = Counters()
        self.payments: list[Payment] = []
        self.t0 = clock()
        self.stopped_at_s: float | None = None

    # ----------------------------------------------------------------- public

    def elapsed_s(self) -> float:
        return self._clock() - self.t0

    async def login_all(self) -> None:
        """Every customer logs in (bounded concurrency) before the clock starts."""
        await asyncio.gather(*(self._login(s) for s in self.sessions))

    async def run(self) -> list[Payment]:
        """The load, until the duration or count is reached; then every answer is awaited."""
        self.t0 = self._clock()
        if self.config.closed_loop:
            await self._closed_loop()
        else:
            await self._open_loop()
        self.stopped_at_s = self.elapsed_s()
        return self.payments

    async def resolve_unknown(self) -> int:
        """Ask again, same key, about payments left without an answer; returns how many remain.

        Bounded by `resolve_timeout_s`. A payment whose gateway died mid-way
        is answered by another replica (same transfer id at the banks), once
        the banks' in-doubt resolution has run if the dead one had prepared it.
        """
        deadline = self._clock() + self.config.resolve_timeout_s
        slots = asyncio.Semaphore(RESOLVE_CONCURRENCY)

        async def one(payment: Payment) -> None:
            async with slots:
                await self._pay(self._by_user[payment.payer.username], payment, deadline)

        while True:
            unknown = [p for p in self.payments if p.outcome is Outcome.UNKNOWN]
            if not unknown or self._clock() >= deadline:
                return len(unknown)
            for payment in unknown:
                payment.resolved_late = True
            await asyncio.gather(*(one(p) for p in unknown))
            if any(p.outcome is Outcome.UNKNOWN for p in unknown):
                await asyncio.sleep(min(RESOLVE_PAUSE_S, max(0.0, deadline - self._clock())))

    # ------------------------------------------------------------------ loops

    def _claim(self, at_s: float) -> bool:
        """May one more payment start at `at_s`? Never awaits: check and count are atomic.

        The open loop passes the due time, so a schedule running late still
        sends every payment that fell due within the duration.
        """
        if self.config.duration_s is not None and at_s >= self.config.duration_s:
            return False
        if self.config.count is not None and self.counters.issued >= self.config.count:
            return False
        self.counters.issued += 1
        return True

    async def _closed_loop(self) -> None:
        limit = self.config.concurrency
        slots = asyncio.Semaphore(limit) if limit and limit < len(self.sessions) else None

        async def client(session: Session) -> None:
            while True:
                if slots is None:
                    if not self._claim(self.elapsed_s()):
                        return
                    await self._one(session, self.elapsed_s())
                    continue
                async with slots:
                    if not self._claim(self.elapsed_s()):
                        return
                    await self._one(session, self.elapsed_s())

        await asyncio.gather(*(client(s) for s in self.sessions))

    async def _open_loop(self) -> None:
        assert self.config.rate_per_s is not None
        interval_s = 1.0 / self.config.rate_per_s
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        try:
            while True:
                due_s = n * interval_s
                if self.config.duration_s is not None and due_s >= self.config.duration_s:
                    break
                wait_s = due_s - self.elapsed_s()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if not self._claim(due_s):
                    break
                n += 1
                session = self._rng.choice(self.sessions)
                if self.counters.in_flight >= self.config.max_in_flight:
                    self._skip(session, due_s)
                    continue
                task = asyncio.create_task(self._one(session, due_s))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def _new_payment(self, session: Session, due_s: float) -> Payment:
        payer = session.customer
        payee = self._payees.pick(payer, self._rng)
        payment = Payment(
            key=str(uuid.uuid4()),
            payer=payer,
            payee=payee,
            amount_minor=self._rng.randint(1, self.config.amount_minor_max),
            started_s=due_s,
        )
        self.payments.append(payment)
        self.counters.payer_bank[payer.bank] += 1
        self.counters.payee_bank[payee.bank] += 1
        return payment

    def _skip(self, session: Session, due_s: float) -> None:
        payment = self._new_payment(session, due_s)
        payment.outcome = Outcome.SKIPPED
        payment.reason = "MAX_IN_FLIGHT"
        self.counters.skipped += 1

    async def _one(self, session: Session, due_s: float) -> None:
        payment = self._new_payment(session, due_s)
        self.counters.in_flight += 1
        try:
            await self._pay(session, payment, self.t0 + due_s + self.config.payment_deadline_s)
        finally:
            self.counters.in_flight -= 1

    # ---------------------------------------------------------------- a payment

    async def _pay(self, session: Session, payment: Payment, deadline: float) -> None:
        """Send until a final answer, the attempt budget or the deadline; never raises."""
        request = gateway_pb2.ProcessPaymentRequest(
            idempotency_key=payment.key,
            from_account=money_pb2.AccountRef(
                bank=payment.payer.bank, account_id=payment.payer.account_id
            ),
            to_account=money_pb2.AccountRef(
                bank=payment.payee.bank, account_id=payment.payee.account_id
            ),
            amount=money_pb2.Money(
                amount_minor=payment.amount_minor, currency=self.config.currency
            ),
        )
        for attempt in range(self.config.max_attempts):
            remaining_s = deadline - self._clock()
            if remaining_s <= 0:
                break
            try:
                await self._login(session)
                name, address = await self._gateway(session)
            except LoadError as exc:
                self._finish(payment, Outcome.REJECTED, "LOGIN_REFUSED", "", "", False)
                payment.reason = f"LOGIN_REFUSED: {exc}"
                return
            except StrifeError as unreachable:  # the balancer, or every gateway, is away
                payment.reason = error_key(unreachable)
                self._failed(payment.reason)
                await self._backoff(attempt, unreachable.retry_after_s, deadline)
                continue
            payment.attempts += 1
            self.counters.sends_by_gateway[name] += 1
            try:
                reply = await self._stub(address).ProcessPayment(
                    request,
                    timeout=min(self.config.call_timeout_s, remaining_s),
                    metadata=(("authorization", f"Bearer {session.token}"),),
                )
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                payment.reason = error_key(error)
                self._failed(payment.reason)
                action = action_for(error)
                if action is Action.FINAL:
                    self._finish(
                        payment, Outcome.REJECTED, error.reason or error.code.name, "", name, False
                    )
                    return
                if action is Action.FAILOVER:
                    session.failed(name)
                elif action is Action.RELOGIN:
                    session.token = ""
                await self._backoff(attempt, error.retry_after_s, deadline)
                continue
            status = reply.payment.status
            if status == gateway_pb2.PAYMENT_STATUS_COMMITTED:
                self._finish(
                    payment, Outcome.COMMITTED, "", reply.payment.transfer_id, name, reply.replayed
                )
                return
            if status == gateway_pb2.PAYMENT_STATUS_ABORTED:
                self._finish(
                    payment,
                    Outcome.ABORTED,
                    reply.payment.abort_reason,
                    reply.payment.transfer_id,
                    name,
                    reply.replayed,
                )
                return
            payment.reason = f"STATUS_{status}"  # PENDING is not a final answer: ask again
            await self._backoff(attempt, None, deadline)
        payment.outcome = Outcome.UNKNOWN

    def _finish(
        self,
        payment: Payment,
        outcome: Outcome,
        reason: str,
        transfer_id: str,
        gateway: str,
        replayed: bool,
    ) -> None:
        payment.outcome, payment.reason = outcome, reason
        payment.transfer_id, payment.gateway, payment.replayed = transfer_id, gateway, replayed
        if payment.resolved_late:
            return  # answered after the load: counted by the audit, not in the figures
        now_s = self.elapsed_s()
        payment.finished_s = now_s
        payment.latency_ms = (now_s - payment.started_s) * 1000
        if outcome is Outcome.COMMITTED:
            self.counters.committed += 1
        elif outcome is Outcome.ABORTED:
            self.counters.aborted += 1
        if payment.answered:
            self.counters.answered += 1
            self.counters.answers_by_gateway[gateway] += 1

    def _failed(self, key: str) -> None:
        self.counters.failed_sends += 1
        self.counters.errors[key] += 1

    async def _backoff(self, attempt: int, retry_after_s: float | None, deadline: float) -> None:
        """Full jitter, capped (`attempt` counts from 0); the server's RetryInfo
        when it gave one, spread above it so the retries do not arrive together."""
        if retry_after_s is not None and retry_after_s > 0:
            delay_s = retry_after_s * self._rng.uniform(1.0, 1.5)
        else:
            delay_s = BACKOFF.delay_s(attempt + 1, self._rng)
        await asyncio.sleep(max(0.0, min(delay_s, deadline - self._clock())))

    # ---------------------------------------------------------- login, gateway

    def _stub(self, address: str) -> Any:
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = gateway_pb2_grpc.PaymentGatewayStub(
                self._pool.get(address)
            )
        return stub

    async def _gateway(self, session: Session) -> tuple[str, str]:
        now = self._clock()
        if session.gateway is None or now >= session.gateway_until_s:
            session.gateway = await self.directory.choose(session.avoid)
            ttl_s = self.config.gateway_ttl_s
            session.gateway_until_s = now + ttl_s * self._rng.uniform(0.5, 1.5)
            session.avoid = ()
        return session.gateway

    async def _login(self, session: Session) -> None:
        """Log in when the session has no token or it is about to expire."""
        if session.token and self._clock() < session.refresh_at_s:
            return
        async with session.lock, self._login_slots:
            if session.token and self._clock() < session.refresh_at_s:
                return  # another payment of this customer logged in meanwhile
            customer = session.customer
            last = "no attempt"
            for attempt in range(LOGIN_ATTEMPTS):
                try:
                    name, address = await self._gateway(session)
                    reply = await self._stub(address).Login(
                        gateway_pb2.LoginRequest(
                            username=customer.username,
                            password=customer.password,
                            bank=customer.bank,
                        ),
                        timeout=self.config.call_timeout_s,
                    )
                except StrifeError as unreachable:
                    last = error_key(unreachable)
                    self._failed(f"Login {last}")
                except grpc.aio.AioRpcError as exc:
                    error = from_rpc_error(exc)
                    last = error_key(error)
                    self._failed(f"Login {last}")
                    if error.code in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.NOT_FOUND,
                    ):
                        raise LoadError(f"login as {customer.username} refused: {last}") from exc
                    if action_for(error) is Action.FAILOVER:
                        session.failed(name)
                else:
                    lifetime_s = reply.expires_at_unix_ms / 1000 - time.time()
                    session.token = reply.access_token
                    session.refresh_at_s = self._clock() + max(
                        lifetime_s - TOKEN_MARGIN_S, lifetime_s / 2
                    )
                    self.counters.logins_by_gateway[name] += 1
                    return
                await self._backoff(attempt, None, self._clock() + BACKOFF.cap_s)
            raise LoadError(f"login as {customer.username} failed {LOGIN_ATTEMPTS} times: {last}")
