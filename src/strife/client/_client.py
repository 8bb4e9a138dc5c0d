"""`StrifeClient`: the customer's async client, with its outbox and drainer.

    async with StrifeClient(certs="certs/client-default", gateways=["127.0.0.1:7001"],
                            credentials=ask_password) as client:
        await client.login()
        result = await client.pay("beta/cy-usd", amount_minor=1234, currency="USD")

`pay` writes the payment intent to the outbox under a fresh 128-bit
idempotency key *before* anything is sent, so a payment survives a dead
gateway, a dead network and a dead client process; a drainer delivers it
exactly once (same key on every retry) and reports the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import tenacity
from grpc_health.v1 import health_pb2
from prometheus_client import Counter, Gauge

from strife.client._auth import Authenticator, CredentialProvider, Credentials, Session
from strife.client._drainer import Drainer, DrainLock, DrainReport, is_connectivity
from strife.client._exceptions import ClientError, EntryNotFound, EntryStateError, LoginRequired
from strife.client._models import (
    Account,
    AccountRef,
    Balance,
    EntryState,
    HistoryPage,
    LedgerEntry,
    OutboxEntry,
    Payment,
    PaymentResult,
    PaymentStatus,
    check_idempotency_key,
    new_idempotency_key,
)
from strife.client._outbox import Intent, Outbox, Transition
from strife.client._profile import DEFAULT_PROFILE, outbox_path, profile_dir
from strife.client._retry import RetryPolicy
from strife.client._router import GatewayRouter
from strife.errors import NotFound, StrifeError, Unauthenticated, Unavailable, from_rpc_error
from strife.money import check_amount, check_currency
from strife.observability.logging import get_logger
from strife.observability.metrics import REGISTRY as METRICS
from strife.rpc.channels import ANY_GATEWAY, ChannelPool, health_stub
from strife.rpc.discovery import BalancerClient
from strife.rpc.limits import MAX_DESCRIPTION_CHARS, MAX_PAGE_SIZE
from strife.storage.sqlite import Synchronous
from strife.v1 import gateway_pb2, gateway_pb2_grpc, money_pb2

_log = get_logger("strife.client")


OUTBOX_DEPTH = Gauge(
    "strife_client_outbox_unsettled",
    "Queued (PENDING or IN_FLIGHT) payments, last counted",
    registry=METRICS,
)
OUTCOMES = Counter(
    "strife_client_payment_outcomes",
    "Outbox entries settled, by state and reason",
    ["state", "reason"],
    registry=METRICS,
)


_TOKEN_REASONS = frozenset(
    {"TOKEN_EXPIRED", "TOKEN_INVALID", "TOKEN_MISSING", "TOKEN_NOT_BOUND_TO_PEER"}
)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Every limit and timeout of the client, with its default and its reason.

    - `call_timeout_s` (5): deadline of every RPC; above the gateway's
      prepare timeout (2 s) plus commit delivery, so a healthy but slow 2PC
      is not cut off.
    - `max_unsettled` (10,000): outbox bound; `pay` raises `OutboxFull` at it.
    - `max_settled_kept` (10,000): settled entries kept for `outbox list`
      and `status`; older ones are forgotten so the file stays bounded.
    - `window` (16): payments sent concurrently, oldest first.
    - `max_resubmits` (5): new keys tried after transient aborts before the
      entry is left ABORTED with the transient reason.
    - `retry`: the backoff (full jitter, 0.1 s doubling, 5 s cap).
    - `pay_wait_s` (10): how long `pay` waits for an outcome before returning
      it queued; it never waits when the gateways are known to be down.
    - `pay_probe_after_s` (0.5) and `pay_probe_timeout_s` (1): with no
      outcome after `pay_probe_after_s`, `pay` asks the gateway for a sign of
      life (a health check with this deadline, at most `call_timeout_s`) and
      returns queued when none comes, so a frozen gateway costs the first `pay` about 1.5 s, not the
      5 s call deadline. A gateway that answers is working: `pay` keeps
      waiting up to `pay_wait_s` (a slow two-phase commit is not cut short).
    - `drain_timeout_s` (10): bound of one explicit `drain()`.
    - `idle_poll_s` (1): an idle drainer looks at the outbox this often, to
      pick up payments another process queued in the same profile.
    - `login_poll_s` (30): retry period while no credentials are available.
    - `refresh_margin_s` (30): log in again this long before the token expires.
    - `read_attempts` (8) and `read_deadline_s` (3): a read (login, balance,
      history, status) is tried over replicas until either runs out, so a
      balancer or gateway that is briefly slow does not fail it at once.
    - `page_size` (100, at most 200): history page size.
    - `notification_buffer` (1,024): undelivered notifications kept per
      `outcomes()` iterator; beyond it the oldest are dropped (the outbox
      still has every outcome).
    - `failed_gateway_ttl_s` (10): how long a replica that did not answer is avoided.
    - `synchronous` ("FULL"): SQLite durability of the outbox.
    """

    call_timeout_s: float = 5.0
    max_unsettled: int = 10_000
    max_settled_kept: int = 10_000
    window: int = 16
    max_resubmits: int = 5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pay_wait_s: float = 10.0
    pay_probe_after_s: float = 0.5
    pay_probe_timeout_s: float = 1.0
    drain_timeout_s: float = 10.0
    idle_poll_s: float = 1.0
    login_poll_s: float = 30.0
    refresh_margin_s: float = 30.0
    read_attempts: int = 8
    read_deadline_s: float = 3.0
    page_size: int = 100
    notification_buffer: int = 1024
    failed_gateway_ttl_s: float = 10.0
    synchronous: Synchronous = "FULL"

    def __post_init__(self) -> None:
        if not 0 < self.call_timeout_s <= 300:
            raise ValueError("call_timeout_s must be within (0, 300]")
        if not 1 <= self.read_attempts <= 10:
            raise ValueError("read_attempts must be within 1..10")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
        if not 1 <= self.notification_buffer <= 1_000_000:
            raise ValueError("notification_buffer must be within 1..1,000,000")
        if self.pay_wait_s < 0 or self.drain_timeout_s <= 0:
            raise ValueError("pay_wait_s must be >= 0 and drain_timeout_s > 0")
        if self.pay_probe_after_s < 0:
            raise ValueError("pay_probe_after_s must be >= 0")
        if not 0 < self.pay_probe_timeout_s <= 300:
            raise ValueError("pay_probe_timeout_s must be within (0, 300]")


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What an explicit `drain()` did.

    `problem` says why delivery stopped early (no gateway reachable, login
    needed, timeout), `delegated` that another process on this profile is
    delivering, `waiting` how many of the customer's payments are still queued.
    """

    settled: tuple[PaymentResult, ...]
    waiting: int
    problem: BaseException | None
    delegated: bool


class Outcomes:
    """An async iterator of settled payments (`client.outcomes()`).

    It subscribes when created, not when first awaited, so an outcome that
    settles between `outcomes()` and the first `anext` is not missed. It
    buffers up to `ClientConfig.notification_buffer` results, dropping the
    oldest beyond that (the outbox keeps every outcome), and ends when the
    client closes. `close()` unsubscribes.
    """

    def __init__(self, notifier: _Notifier, buffer: int) -> None:
        self._notifier = notifier
        self._queue: asyncio.Queue[PaymentResult | None] = asyncio.Queue(maxsize=buffer)
        notifier.queues.add(self._queue)

    def __aiter__(self) -> Outcomes:
        return self

    async def __anext__(self) -> PaymentResult:
        item = await self._queue.get()
        if item is None:
            self.close()
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        self._notifier.queues.discard(self._queue)

    async def aclose(self) -> None:
        self.close()


class _Notifier:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[PaymentResult], None]] = []
        self.queues: set[asyncio.Queue[PaymentResult | None]] = set()
        self.dropped = 0

    def publish(self, result: PaymentResult) -> None:
        for callback in list(self.callbacks):
            try:
                callback(result)
            except Exception:  # a caller's bug must not stop delivery
                _log.exception("outcome_callback_failed", entry_id=result.entry_id)
        for queue in list(self.queues):
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
                _log.warning("notification_dropped", entry_id=result.entry_id)
            queue.put_nowait(result)

    def close(self) -> None:
        for queue in list(self.queues):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        self.queues.clear()


class StrifeClient:
    """An async Strife customer client: `async with StrifeClient(...) as client:`.

    Connects over mTLS (`certs`: an identity folder with ca.crt, tls.crt,
    tls.key) either to fixed `gateways` (HOST:PORT, tried in turn) or to the
    replica a `balancer` recommends. Payments go through the outbox at
    `outbox` (default `$STRIFE_HOME/default/outbox.db`); with
    `background=True` a drainer task keeps delivering them while the client
    is open, otherwise they are delivered by `pay` and `drain()`.

    `credentials` is called whenever a token is needed and none is valid;
    `session` resumes an earlier login (its identity lets payments be queued
    while offline); `on_session` sees every new session (to cache it);
    `rng` makes the retry jitter reproducible in tests.
    """

    def __init__(
        self,
        *,
        certs: str | Path | None,
        gateways: Sequence[str] = (),
        balancer: str | None = None,
        outbox: str | Path | None = None,
        credentials: CredentialProvider | None = None,
        session: Session | None = None,
        on_session: Callable[[Session], None] | None = None,
        config: ClientConfig | None = None,
        background: bool = True,
        insecure: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if not gateways and balancer is None:
            raise ValueError("give gateway addresses or a balancer address")
        if certs is None and not insecure:
            raise ValueError("an identity folder (certs) is required")
        self.config = config or ClientConfig()
        self._certs = certs
        self._insecure = insecure
        self._gateways = list(gateways)
        self._balancer_address = balancer
        self._outbox_path = (
            Path(outbox).expanduser() if outbox else outbox_path(profile_dir(DEFAULT_PROFILE))
        )
        self._credentials = credentials
        self._initial_session = session
        self._on_session = on_session
        self._background = background
        self._rng = rng
        self._notifier = _Notifier()
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._passes = 0  # delivery passes ended so far
        self._silent_pass: int | None = None  # the pass during which a probe went unanswered
        self._stubs: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> StrifeClient:
        if self._opened:
            raise RuntimeError("a StrifeClient can be opened once")
        self._opened = True
        if self._insecure:
            _log.warning("insecure_client", detail="plaintext gRPC; debugging only")
        # Every channel not otherwise named must reach a gateway: a password or a
        # token never goes to a bank, a balancer or a stranger holding our CA's certificate.
        self._pool = ChannelPool(self._certs, insecure=self._insecure, peer=ANY_GATEWAY)
        balancer = (
            BalancerClient(self._pool, self._balancer_address, timeout_s=self.config.call_timeout_s)
            if self._balancer_address
            else None
        )
        self._router = GatewayRouter(
            gateways=self._gateways,
            balancer=balancer,
            failed_ttl_s=self.config.failed_gateway_ttl_s,
        )
        try:
            self._outbox = await Outbox.open(
                self._outbox_path,
                max_unsettled=self.config.max_unsettled,
                max_settled_kept=self.config.max_settled_kept,
                synchronous=self.config.synchronous,
            )
        except BaseException:
            await self._pool.close()
            raise
        self._auth = Authenticator(
            self._login_call,
            self._credentials,
            self._initial_session,
            refresh_margin_s=self.config.refresh_margin_s,
        )
        self._auth.on_session(self._session_changed)
        self._lock = DrainLock(self._outbox_path.with_name(self._outbox_path.name + ".lock"))
        self._drainer = Drainer(
            self._outbox,
            _Calls(self),
            self._lock,
            policy=self.config.retry,
            window=self.config.window,
            max_resubmits=self.config.max_resubmits,
            idle_poll_s=self.config.idle_poll_s,
            login_poll_s=self.config.login_poll_s,
            rng=self._rng,
        )
        self._drainer.on_recorded(self._recorded)
        self._drainer.on_pass_end(self._pass_ended)
        if self._background:
            self._task = asyncio.create_task(self._drainer.run_forever(), name="strife-outbox")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop delivering, close the outbox and the channels. Queued payments stay queued."""
        if self._closed or not self._opened:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._notifier.close()
        self._lock.release()
        await self._outbox.close()
        await self._pool.close()

    # ------------------------------------------------------------ identity

    @property
    def session(self) -> Session | None:
        """The current session (None before any login)."""
        return self._auth.session

    @property
    def gateway(self) -> str | None:
        """The gateway replica in use, if one has been chosen."""
        return self._router.current

    @property
    def delivering(self) -> bool:
        """True when this client holds the profile's delivery lock."""
        return self._lock.held

    async def login(
        self, username: str | None = None, password: str | None = None, bank: str | None = None
    ) -> Session:
        """Log in with these credentials, or through the credential callback when none are given.

        Without arguments it returns the current session while its token is
        good, and otherwise joins any login already under way (the drainer's,
        say): the callback is asked once, and one Login is sent.
        """
        if username is None and password is None and bank is None:
            return await self._auth.current()
        if not (username and password and bank):
            raise ValueError("username, password and bank are all required")
        session = await self._login_call(Credentials(username, password, bank))
        self._auth.adopt(session)
        return session

    async def _login_call(self, credentials: Credentials) -> Session:
        reply = await self._read(
            "Login",
            gateway_pb2.LoginRequest(
                username=credentials.username, password=credentials.password, bank=credentials.bank
            ),
            auth=False,
        )
        return Session(
            customer_id=reply.customer_id,
            username=credentials.username,
            bank=credentials.bank,
            accounts=tuple(
                Account(AccountRef(a.ref.bank, a.ref.account_id), a.currency)
                for a in reply.accounts
            ),
            access_token=reply.access_token,
            expires_at_unix_ms=reply.expires_at_unix_ms,
        )

    def _session_changed(self, session: Session) -> None:
        if self._on_session is not None:
            self._on_session(session)
        if hasattr(self, "_drainer"):
            self._drainer.kick()  # payments waiting for a login can go now

    async def _identity(self) -> Session:
        session = self._auth.session
        if session is not None:
            return session
        if self._credentials is None:
            raise LoginRequired("log in first: no session and no credential callback")
        return await self._auth.refresh()

    # ------------------------------------------------------------ payments

    async def pay(
        self,
        to: AccountRef | str,
        amount_minor: int,
        currency: str,
        *,
        from_account: AccountRef | str | None = None,
        description: str = "",
        key: str | None = None,
        wait_s: float | None = None,
    ) -> PaymentResult:
        """Queue a payment in the outbox, then wait up to `wait_s` for its outcome.

        The intent is on disk under its idempotency key (fresh, or `key`)
        before the first send. The result is settled (COMMITTED, ABORTED,
        FAILED) or still queued (PENDING, or IN_FLIGHT while a send is open):
        then the drainer keeps delivering it and `outcomes()` / `on_outcome`
        report it when it settles. With the gateways known to be down it
        returns at once, queued. When the gateway it went to stops answering
        before that is known (a frozen process), it returns queued after at
        most `pay_probe_after_s + pay_probe_timeout_s` (1.5 s by default); a
        gateway that answers a health check is waited for up to `wait_s`.
        Paying again with the same `key` and the same payment returns the
        same entry.

        Raises `OutboxFull` at the outbox bound, `MoneyError` for a bad
        amount or currency, `ValueError` for a bad account or key, and
        `LoginRequired` when nobody ever logged in.
        """
        self._check_open()
        target = _account_ref(to, None)
        check_currency(currency)
        check_amount(amount_minor, currency)
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise ValueError(f"description is longer than {MAX_DESCRIPTION_CHARS} characters")
        key = check_idempotency_key(key) if key is not None else new_idempotency_key()
        session = await self._identity()
        source = _source_account(session, from_account, currency)
        if source == target:
            raise ValueError("the payer and payee accounts are the same")
        intent = Intent(session.customer_id, source, target, amount_minor, currency, description)
        entry, created = await self._outbox.add(intent, key)
        if created:
            _log.info(
                "payment_queued",
                entry_id=entry.id,
                key=key,
                amount_minor=amount_minor,
                currency=currency,
                to=str(target),
            )
        wait_s = self.config.pay_wait_s if wait_s is None else wait_s
        if entry.settled:
            return PaymentResult.of(entry)
        if self._background:
            if self._known_down():
                # Known to be unreachable: return at once; the drainer's backoff
                # (cut short when a channel comes back) delivers it.
                return PaymentResult.of(entry)
            self._drainer.kick()
            if wait_s <= 0:
                return PaymentResult.of(entry)
            await self._await_outcome(entry.id, wait_s)
        elif wait_s > 0:
            await self._drainer.drain(timeout_s=wait_s)
        return PaymentResult.of(await self._entry(entry.id))

    def _known_down(self) -> bool:
        """The last pass reached no gateway, or a probe during the current pass went unanswered."""
        return self._drainer.offline or self._silent_pass == self._passes

    async def _await_outcome(self, entry_id: int, wait_s: float) -> None:
        """Wait up to `wait_s` for the drainer to settle the entry, less if its gateway is silent.

        The entry is on disk before the first send, so returning early only
        leaves its delivery to the drainer, whose send keeps its full deadline
        (a late answer is harmless: same idempotency key).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        waiter = self._waiters.setdefault(entry_id, loop.create_future())
        try:
            await asyncio.wait([waiter], timeout=min(wait_s, self.config.pay_probe_after_s))
            if waiter.done() or loop.time() >= deadline:
                return
            probe = asyncio.ensure_future(self._gateway_answers(entry_id))
            try:
                either: list[asyncio.Future[Any]] = [waiter, probe]
                await asyncio.wait(
                    either, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                if waiter.done() or not probe.done() or not probe.result():
                    return
            finally:
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)
            await asyncio.wait([waiter], timeout=max(0.0, deadline - loop.time()))
        finally:
            if self._waiters.get(entry_id) is waiter:
                del self._waiters[entry_id]

    async def _gateway_answers(self, entry_id: int) -> bool:
        """Whether the gateway delivering this entry answers a health check in time.

        A frozen gateway (a stopped process, a dropped network) keeps accepting
        TCP connections and keeps open ones open, so a call to it fails only
        at its deadline; the check bounds how long `pay` takes to notice. An
        unanswered check marks the gateways known down until the current pass
        ends (the pass then says), and answers every waiting `pay` "queued".
        """
        passes = self._passes
        timeout_s = min(self.config.pay_probe_timeout_s, self.config.call_timeout_s)
        address = ""
        try:
            async with asyncio.timeout(timeout_s):
                entry = await self._outbox.get(entry_id)
                if entry is not None and entry.state == EntryState.IN_FLIGHT and entry.gateway:
                    address = entry.gateway
                else:
                    address = await self._router.target()
                await health_stub(self._pool.get(address)).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s
                )
        except grpc.aio.AioRpcError as exc:
            if not is_connectivity(from_rpc_error(exc)):
                return True  # an answer, even a refusal, is a sign of life
        except (TimeoutError, StrifeError):
            pass
        else:
            return True
        _log.info("gateway_silent", gateway=address, probe_timeout_s=timeout_s)
        if passes == self._passes:
            self._silent_pass = passes
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        return False

    async def wait_for(self, key_or_id: str | int, timeout_s: float) -> PaymentResult:
        """Wait until the entry settles (or `timeout_s` passes) and return its result."""
        self._check_open()
        outcomes = self.outcomes()
        try:
            entry = await self.outbox_entry(key_or_id)
            async with asyncio.timeout(timeout_s):
                while not entry.settled:
                    try:
                        result = await asyncio.wait_for(anext(outcomes), self.config.idle_poll_s)
                    except TimeoutError:
                        result = None  # settled by a drain in another process, maybe
                    if result is None or result.entry_id == entry.id:
                        entry = await self._entry(entry.id)
        except TimeoutError:
            entry = await self._entry(entry.id)
        finally:
            outcomes.close()
        return PaymentResult.of(entry)

    def on_outcome(self, callback: Callable[[PaymentResult], None]) -> Callable[[], None]:
        """Call `callback` with every payment that settles; returns a function that unsubscribes."""
        self._notifier.callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._notifier.callbacks.remove(callback)

        return unsubscribe

    def outcomes(self) -> Outcomes:
        """An async iterator of payments as they settle, from now until the client closes."""
        return Outcomes(self._notifier, self.config.notification_buffer)

    async def drain(self, timeout_s: float | None = None) -> DrainResult:
        """Deliver what can be delivered now (one pass), without waiting for a backoff."""
        self._check_open()
        report = await self._drainer.drain(timeout_s or self.config.drain_timeout_s)
        return await self._drain_result(report)

    async def queued(self) -> int:
        """How many of the logged-in customer's payments are still queued (all, if nobody is)."""
        self._check_open()
        session = self._auth.session
        depth = await self._outbox.unsettled(session.customer_id if session else None)
        OUTBOX_DEPTH.set(depth)
        return depth

    async def _drain_result(self, report: DrainReport) -> DrainResult:
        return DrainResult(
            settled=tuple(PaymentResult.of(e) for e in report.settled),
            waiting=await self.queued(),
            problem=report.error,
            delegated=report.skipped_other_process,
        )

    def _recorded(self, entries: list[OutboxEntry]) -> None:
        for entry in entries:
            if entry.settled:
                OUTCOMES.labels(str(entry.state), entry.reason).inc()
                self._notifier.publish(PaymentResult.of(entry))
            waiter = self._waiters.get(entry.id)
            if waiter is not None and not waiter.done() and entry.state != EntryState.IN_FLIGHT:
                waiter.set_result(None)

    def _pass_ended(self, report: DrainReport) -> None:
        self._passes += 1  # the drainer's `offline` now speaks for this pass
        if report.error is None and not report.skipped_other_process:
            return  # a waiter not reached yet is reached by the next pass
        for waiter in self._waiters.values():  # nothing more will happen soon: answer "queued"
            if not waiter.done():
                waiter.set_result(None)

    # ---------------------------------------------------------- the outbox

    async def outbox_entries(
        self, states: Sequence[EntryState] | None = None, *, limit: int = 100
    ) -> list[OutboxEntry]:
        """Entries in creation order (all customers of this profile), at most `limit`."""
        self._check_open()
        return await self._outbox.entries(states, limit=limit)

    async def outbox_entry(self, key_or_id: str | int) -> OutboxEntry:
        """One entry, by id or by any idempotency key it used; raises EntryNotFound."""
        self._check_open()
        entry = await self._outbox.find(str(key_or_id))
        if entry is None:
            raise EntryNotFound(f"no outbox entry {key_or_id!r}")
        return entry

    async def retry(self, key_or_id: str | int) -> OutboxEntry:
        """Send a FAILED entry again (same key: it cannot pay twice), or a PENDING one now."""
        entry = await self.outbox_entry(key_or_id)
        if entry.state == EntryState.FAILED:
            entry = await self._outbox.requeue(entry.id)
        elif entry.state != EntryState.PENDING:
            raise EntryStateError(f"entry {entry.id} is {entry.state}; only FAILED or PENDING")
        self._drainer.kick()
        return entry

    async def cancel(self, key_or_id: str | int) -> OutboxEntry:
        """Stop delivering a PENDING entry; it ends FAILED with reason CANCELLED.

        An entry that was never sent cannot have moved money. One that was
        sent is first looked up (`GetPayment`): a payment the gateway already
        settled is recorded as such and cannot be cancelled (EntryStateError);
        if the gateway cannot say, the entry ends CANCELLED_UNCONFIRMED: no
        more retries, but an earlier send may still have reached a replica,
        so check `payment_status` before paying again.
        """
        entry = await self.outbox_entry(key_or_id)
        if entry.state != EntryState.PENDING:
            raise EntryStateError(
                f"entry {entry.id} is {entry.state}; only PENDING can be cancelled"
            )
        if entry.sends == 0:
            return await self._outbox.cancel(entry.id, "CANCELLED")
        try:
            payment = await self._payment_at(entry.idempotency_key, [entry.gateway])
        except (StrifeError, ClientError):
            return await self._outbox.cancel(entry.id, "CANCELLED_UNCONFIRMED")
        if payment.status == PaymentStatus.PENDING:
            raise EntryStateError(f"entry {entry.id} is being processed by the gateway")
        state = (
            EntryState.COMMITTED
            if payment.status == PaymentStatus.COMMITTED
            else EntryState.ABORTED
        )
        [settled] = await self._outbox.apply(
            [
                Transition(
                    entry.id,
                    state,
                    expect=EntryState.PENDING,
                    transfer_id=payment.transfer_id,
                    reason=payment.abort_reason,
                )
            ]
        )
        self._recorded([settled])
        if state == EntryState.COMMITTED:
            raise EntryStateError(f"entry {entry.id} was already committed ({payment.transfer_id})")
        return settled

    # --------------------------------------------------------------- reads

    async def payment_status(self, key: str) -> Payment:
        """The gateway's record of the payment with this idempotency key.

        Asked first at the replica the outbox last sent it to (a replica
        knows the payments it coordinated), then at the others known.
        Raises NotFound when no replica knows the key.
        """
        self._check_open()
        entry = await self._outbox.find(key)
        hints = [entry.gateway] if entry is not None and entry.gateway else []
        return await self._payment_at(key, hints)

    async def _payment_at(self, key: str, hints: Sequence[str]) -> Payment:
        addresses = [a for a in hints if a]
        with contextlib.suppress(StrifeError):
            addresses.append(await self._router.target())
        addresses = list(dict.fromkeys([*addresses, *self._router.known()]))
        last: StrifeError | None = None
        for address in addresses:
            try:
                reply = await self._call(
                    "GetPayment", gateway_pb2.GetPaymentRequest(idempotency_key=key), address
                )
            except StrifeError as error:
                last = error
                if isinstance(error, NotFound) or is_connectivity(error):
                    continue
                raise
            return Payment.from_proto(reply.payment)
        if last is None:
            raise NotFound(grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND", "no gateway to ask")
        raise last

    async def balance(self, account: AccountRef | str | None = None) -> Balance:
        """One account's balance; `account` may be omitted when the customer has only one."""
        self._check_open()
        session = await self._identity()
        ref = _account_ref(account, session) if account is not None else _only_account(session)
        reply = await self._read(
            "GetBalance",
            gateway_pb2.GetBalanceRequest(account=_ref_pb(ref)),
        )
        return Balance.from_proto(reply.balance)

    async def balances(self) -> list[Balance]:
        """The balance of every account the customer's bank listed at login."""
        self._check_open()
        session = await self._identity()
        return [await self.balance(account.ref) for account in session.accounts]

    async def history(
        self, account: AccountRef | str | None = None, *, page_size: int | None = None
    ) -> AsyncGenerator[HistoryPage, None]:
        """The account's ledger lines, page by page (newest first), as an async iterator.

        Pages are fetched lazily, one per iteration step: stop iterating to
        stop fetching.
        """
        self._check_open()
        size = page_size or self.config.page_size
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
        session = await self._identity()
        ref = _account_ref(account, session) if account is not None else _only_account(session)
        token = ""
        while True:
            reply = await self._read(
                "GetTransactionHistory",
                gateway_pb2.GetTransactionHistoryRequest(
                    account=_ref_pb(ref), page_size=size, page_token=token
                ),
            )
            yield HistoryPage(
                tuple(LedgerEntry.from_proto(e) for e in reply.entries), reply.next_page_token
            )
            token = reply.next_page_token
            if not token:
                return

    # ------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if not self._opened or self._closed:
            raise RuntimeError("use the client inside `async with StrifeClient(...)`")

    async def _entry(self, entry_id: int) -> OutboxEntry:
        entry = await self._outbox.get(entry_id)
        if entry is None:
            raise EntryNotFound(f"outbox entry {entry_id} is gone")
        return entry

    def _stub(self, address: str) -> Any:
        stub = self._stubs.get(address)
        if stub is None:
            stub = gateway_pb2_grpc.PaymentGatewayStub(self._pool.get(address))
            self._stubs[address] = stub
        return stub

    async def _call(self, method: str, request: Any, address: str, *, auth: bool = True) -> Any:
        """One RPC at `address`, with a deadline; a refused token is refreshed once.
        While the address's circuit is open it fails fast (UNAVAILABLE, no reason:
        no gateway answered) with the time until its half-open probe."""
        circuits = self._router.circuits
        for attempt in (1, 2):
            token = await self._auth.token() if auth else ""
            metadata = (("authorization", f"Bearer {token}"),) if auth else ()
            permit = circuits.admit(address)
            if permit is None:
                raise Unavailable(
                    grpc.StatusCode.UNAVAILABLE,
                    "",
                    f"circuit open towards gateway {address}",
                    {"circuit": "open", "gateway": address},
                    circuits.retry_after_s(address),
                )
            try:
                reply = await getattr(self._stub(address), method)(
                    request, timeout=self.config.call_timeout_s, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                if is_connectivity(error):
                    circuits.failed(address, permit)
                    self._router.failed(address)
                else:  # an answer, a refusal included: the gateway is there
                    circuits.succeeded(address, permit)
                if (
                    auth
                    and attempt == 1
                    and isinstance(error, Unauthenticated)
                    and error.reason in _TOKEN_REASONS
                ):
                    _log.info("token_refused", reason=error.reason)
                    self._auth.invalidate(token)
                    continue
                raise error from exc
            except BaseException:
                circuits.abandoned(address, permit)
                raise
            circuits.succeeded(address, permit)
            self._router.succeeded(address)
            self._silent_pass = None
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, method: str, request: Any, *, auth: bool = True) -> Any:
        """A call that may go to any replica: retried on retryable errors, bounded."""
        retrying = self.config.retry.retrying(
            stop=tenacity.stop_after_attempt(self.config.read_attempts)
            | tenacity.stop_after_delay(self.config.read_deadline_s),
            rng=self._rng,
            what=method,
        )
        async for attempt in retrying:
            with attempt:
                address = await self._router.target()
                return await self._call(method, request, address, auth=auth)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _until_ready(self) -> None:
        """Return when any known gateway's channel is READY (it came back)."""
        addresses = self._router.known()
        if not addresses:
            await asyncio.Event().wait()  # nothing to watch: the backoff timer decides
        tasks = [asyncio.ensure_future(_channel_ready(self._pool.get(a))) for a in addresses]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class _Calls:
    """The drainer's view of the client (see `_drainer.GatewayCalls`)."""

    def __init__(self, client: StrifeClient) -> None:
        self._client = client

    async def customer_id(self) -> str:
        return (await self._client._identity()).customer_id

    async def target(self) -> str:
        return await self._client._router.target()

    async def process_payment(self, entry: OutboxEntry, address: str) -> Payment:
        request = gateway_pb2.ProcessPaymentRequest(
            idempotency_key=entry.idempotency_key,
            from_account=_ref_pb(entry.from_account),
            to_account=_ref_pb(entry.to_account),
            amount=money_pb2.Money(amount_minor=entry.amount_minor, currency=entry.currency),
            description=entry.description,
        )
        reply = await self._client._call("ProcessPayment", request, address)
        return Payment.from_proto(reply.payment)

    async def get_payment(self, key: str, address: str) -> Payment:
        reply = await self._client._call(
            "GetPayment", gateway_pb2.GetPaymentRequest(idempotency_key=key), address
        )
        return Payment.from_proto(reply.payment)

    async def until_ready(self) -> None:
        await self._client._until_ready()


async def _channel_ready(channel: grpc.aio.Channel) -> None:
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


def _ref_pb(ref: AccountRef) -> Any:
    return money_pb2.AccountRef(bank=ref.bank, account_id=ref.account_id)


def _account_ref(value: AccountRef | str, session: Session | None) -> AccountRef:
    """A "bank/account" text, an AccountRef, or (given a session) an account id at its bank."""
    if isinstance(value, AccountRef):
        return value
    if "/" in value:
        return AccountRef.parse(value)
    if session is None:
        raise ValueError(f"expected BANK/ACCOUNT, got {value!r}")
    for account in session.accounts:
        if account.ref.account_id == value:
            return account.ref
    return AccountRef(session.bank, value)


def _only_account(session: Session) -> AccountRef:
    if len(session.accounts) != 1:
        names = ", ".join(str(a.ref) for a in session.accounts) or "none"
        raise ValueError(f"name the account; this customer has: {names}")
    return session.accounts[0].ref


def _source_account(
    session: Session, from_account: AccountRef | str | None, currency: str
) -> AccountRef:
    """The payer's account: the one named, else the customer's only one in `currency`."""
    if from_account is not None:
        return _account_ref(from_account, session)
    matching = [a.ref for a in session.accounts if a.currency == currency]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise ValueError(f"no {currency} account in this login; name one with from_account")
    names = ", ".join(str(m) for m in matching)
    raise ValueError(f"several {currency} accounts ({names}); name one with from_account")
