"""Delivering the outbox: passes over pending entries, retried with the one policy.

A *pass* first resolves entries left IN_FLIGHT by a crash (`GetPayment`, never
a blind resend), then offers every PENDING entry of the logged-in customer
once, in creation order, `window` at a time: each window is marked IN_FLIGHT
in one transaction, sent concurrently, and its answers written in one
transaction (two fsyncs per window, not per payment).

A pass stops early when the gateway is unreachable (the rest would fail the
same way; the router has already picked another replica for the next pass)
or pushes back (RESOURCE_EXHAUSTED). Per-payment trouble (REQUEST_IN_PROGRESS,
a transient abort resubmitted under a new key) does not stop the others.
A pass that left retryable work raises `PassIncomplete`, which the retry
policy retries after a capped, fully jittered delay; that delay is cut short
when the gateway's channel becomes READY again, or when there is new work.

Only one process drains a profile at a time (an advisory file lock); the
others leave their payments queued for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import grpc

from strife.client._exceptions import LoginRequired
from strife.client._lockfile import try_lock, unlock
from strife.client._models import (
    EntryState,
    OutboxEntry,
    Payment,
    PaymentStatus,
    new_idempotency_key,
)
from strife.client._outbox import Outbox, Transition
from strife.client._retry import RetryPolicy, Sleep, retry_after_hint_s
from strife.errors import NotFound, RequestInProgress, StrifeError, Unauthenticated
from strife.faults import failpoint
from strife.observability.logging import get_logger

_log = get_logger("strife.client.drainer")

MAX_WINDOW = 256
# Failpoint between receiving the gateway's answers and writing them: a crash
# here is "the gateway got it, the response was lost".
FAILPOINT_BEFORE_RECORD = "client.before_record_outcomes"

_CONNECTIVITY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def is_connectivity(error: BaseException) -> bool:
    """No gateway answered: a transport failure, or the balancer knows no gateway.

    An UNAVAILABLE *with* a Strife reason (BANK_UNAVAILABLE) came from a
    gateway that is up, and concerns that one payment.
    """
    return (
        isinstance(error, StrifeError)
        and error.code in _CONNECTIVITY_CODES
        and error.reason in ("", "NO_INSTANCE")
    )


class GatewayCalls(Protocol):
    """What the drainer needs from the client; a fake in unit tests."""

    async def customer_id(self) -> str:
        """The logged-in customer (raises LoginRequired when nobody is)."""
        ...

    async def target(self) -> str:
        """The gateway address to send the next window to."""
        ...

    async def process_payment(self, entry: OutboxEntry, address: str) -> Payment: ...

    async def get_payment(self, key: str, address: str) -> Payment: ...

    async def until_ready(self) -> None:
        """Return when the current gateway's channel is READY (may wait forever)."""
        ...


class PassIncomplete(Exception):
    """A pass left retryable work; `retryable` makes the retry policy retry it."""

    retryable = True

    def __init__(self, errors: Sequence[Exception], offline: bool) -> None:
        last = f" (last error: {errors[-1]})" if errors else ""
        super().__init__(
            f"no gateway reachable{last}" if offline else f"{len(errors)} payment(s) to retry{last}"
        )
        self.errors = list(errors)
        self.offline = offline
        self.retry_after_s = max((retry_after_hint_s(e) for e in errors), default=0.0)


@dataclass(slots=True)
class DrainReport:
    """What one pass did: entries it settled, and why it stopped early, if it did."""

    settled: list[OutboxEntry] = field(default_factory=list)
    error: BaseException | None = None
    skipped_other_process: bool = False


@dataclass(slots=True)
class _Sent:
    transition: Transition | None  # None: the entry stays as it is
    error: Exception | None = None
    stop: bool = False  # the gateway is unreachable or pushing back: end the pass


class DrainLock:
    """An advisory lock file: at most one process delivers a profile's outbox.

    Two processes sending the same entries would still pay once (same keys),
    but would race on the entries' states; the lock keeps delivery simple.
    The kernel drops it when the holder dies, so a crash never wedges it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        if not try_lock(handle):
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            unlock(handle)
            handle.close()


class Drainer:
    """Delivers one profile's outbox; `run_forever` in the background, or `drain` once."""

    def __init__(
        self,
        outbox: Outbox,
        calls: GatewayCalls,
        lock: DrainLock,
        *,
        policy: RetryPolicy,
        window: int = 16,
        max_resubmits: int = 5,
        idle_poll_s: float = 1.0,
        login_poll_s: float = 30.0,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be within 1..{MAX_WINDOW}")
        if not 0 <= max_resubmits <= 100:
            raise ValueError("max_resubmits must be within 0..100")
        if idle_poll_s <= 0 or login_poll_s <= 0:
            raise ValueError("poll intervals must be positive")
        self._outbox = outbox
        self._calls = calls
        self._lock = lock
        self._policy = policy
        self._window = window
        self._max_resubmits = max_resubmits
        self._idle_poll_s = idle_poll_s
        self._login_poll_s = login_poll_s
        self._sleep = sleep
        self._rng = rng
        self._pass_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._wake.set()
        self.offline = False
        self.waiting_for_login = False
        self._on_recorded: list[Callable[[list[OutboxEntry]], None]] = []
        self._on_pass_end: list[Callable[[DrainReport], None]] = []

    def on_recorded(self, callback: Callable[[list[OutboxEntry]], None]) -> None:
        """Called with every batch of entries whose new state was just written."""
        self._on_recorded.append(callback)

    def on_pass_end(self, callback: Callable[[DrainReport], None]) -> None:
        self._on_pass_end.append(callback)

    def kick(self) -> None:
        """New work (a payment, a retry, a login): run a pass now instead of waiting."""
        self._wake.set()

    # -------------------------------------------------------------- one pass

    async def drain(self, timeout_s: float) -> DrainReport:
        """One pass, bounded by `timeout_s`; errors are reported in `error`, not raised."""
        report = DrainReport()
        try:
            async with asyncio.timeout(timeout_s):
                await self.pass_once(report)
        except (PassIncomplete, LoginRequired, Unauthenticated, TimeoutError) as exc:
            report.error = exc
        return report

    async def pass_once(self, report: DrainReport | None = None) -> DrainReport:
        """Resolve IN_FLIGHT entries, then offer every PENDING one once.

        Raises PassIncomplete when retryable work is left, LoginRequired /
        Unauthenticated when no valid token can be had. `report` (filled in
        as the pass goes) keeps what was settled even when the pass raises.
        """
        report = report if report is not None else DrainReport()
        async with self._pass_lock:
            if not self._lock.try_acquire():
                report.skipped_other_process = True
                self._finish(report)
                return report
            try:
                await self._run_pass(report)
            except BaseException as exc:
                report.error = exc
                self.offline = isinstance(exc, PassIncomplete) and exc.offline
                self.waiting_for_login = isinstance(exc, LoginRequired | Unauthenticated)
                self._finish(report)
                raise
            self.offline = self.waiting_for_login = False
            self._finish(report)
            return report

    def _finish(self, report: DrainReport) -> None:
        for callback in self._on_pass_end:
            callback(report)

    async def _run_pass(self, report: DrainReport) -> None:
        try:
            customer = await self._calls.customer_id()
        except Unauthenticated:
            raise
        except StrifeError as error:  # logging in needed a gateway, and none answered
            if not error.retryable:
                raise
            raise PassIncomplete([error], offline=is_connectivity(error)) from error
        problems: list[Exception] = []
        await self._resolve_in_flight(customer, report, problems)
        after_id = 0
        while True:
            batch = await self._outbox.entries(
                [EntryState.PENDING], customer_id=customer, limit=self._window, after_id=after_id
            )
            if not batch:
                break
            after_id = batch[-1].id
            try:
                address = await self._calls.target()
            except StrifeError as error:
                raise PassIncomplete([*problems, error], offline=is_connectivity(error)) from error
            marked = await self._outbox.mark_in_flight(batch, address)
            sent = await asyncio.gather(*(self._send(entry, address) for entry in marked))
            failpoint(FAILPOINT_BEFORE_RECORD)
            await self._record([s.transition for s in sent if s.transition], report)
            problems += [s.error for s in sent if s.error is not None]
            stop = next((s.error for s in sent if s.stop and s.error is not None), None)
            if stop is not None:
                if isinstance(stop, Unauthenticated | LoginRequired):
                    raise stop
                raise PassIncomplete(problems, offline=is_connectivity(stop))
        if problems:
            raise PassIncomplete(problems, offline=False)

    async def _record(self, transitions: list[Transition], report: DrainReport) -> None:
        changed = await self._outbox.apply(transitions)
        report.settled += [entry for entry in changed if entry.settled]
        for callback in self._on_recorded:
            callback(changed)

    # ------------------------------------------------------------- recovery

    async def _resolve_in_flight(
        self, customer: str, report: DrainReport, problems: list[Exception]
    ) -> None:
        """Entries a crash left IN_FLIGHT: ask the gateway what became of them first."""
        after_id = 0
        while True:
            stuck = await self._outbox.entries(
                [EntryState.IN_FLIGHT], customer_id=customer, limit=self._window, after_id=after_id
            )
            if not stuck:
                return
            after_id = stuck[-1].id
            resolved = await asyncio.gather(*(self._resolve(entry) for entry in stuck))
            await self._record([r.transition for r in resolved if r.transition], report)
            problems += [r.error for r in resolved if r.error is not None]
            stop = next((r.error for r in resolved if r.stop and r.error is not None), None)
            if stop is not None:
                if isinstance(stop, Unauthenticated | LoginRequired):
                    raise stop
                raise PassIncomplete(problems, offline=is_connectivity(stop))

    async def _resolve(self, entry: OutboxEntry) -> _Sent:
        addresses = [entry.gateway] if entry.gateway else []
        try:
            current = await self._calls.target()
        except StrifeError as error:
            if not addresses:
                return _unchanged(entry, error, stop=True)
        else:
            if current not in addresses:
                addresses.append(current)
        last: StrifeError | None = None
        for address in addresses:
            try:
                payment = await self._calls.get_payment(entry.idempotency_key, address)
            except NotFound as error:
                # The gateway that was sent the payment has no record: it never
                # arrived. (Another replica's "not found" proves less, but a
                # resend under the same key is safe anyway: banks dedupe by
                # the transfer id the key determines.)
                _log.info("in_flight_not_found", entry_id=entry.id, gateway=address)
                return _Sent(_back_to_pending(entry, error))
            except (StrifeError, LoginRequired) as error:
                if isinstance(error, LoginRequired | Unauthenticated):
                    return _unchanged(entry, error, stop=True)
                last = error
                if is_connectivity(error):
                    continue
                return _unchanged(entry, error, stop=False)
            _log.info(
                "in_flight_resolved", entry_id=entry.id, status=str(payment.status), gateway=address
            )
            return self._from_payment(entry, payment)
        assert last is not None
        return _unchanged(entry, last, stop=is_connectivity(last))

    # --------------------------------------------------------------- sending

    async def _send(self, entry: OutboxEntry, address: str) -> _Sent:
        try:
            payment = await self._calls.process_payment(entry, address)
        except LoginRequired as error:
            return _Sent(_back_to_pending(entry, error), error, stop=True)
        except StrifeError as error:
            if isinstance(error, Unauthenticated):
                # Refused before it was processed: not an outcome of the payment.
                return _Sent(_back_to_pending(entry, error), error, stop=True)
            if error.retryable:
                stop = is_connectivity(error) or error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
                return _Sent(_back_to_pending(entry, error), error, stop=stop)
            reason = error.reason or error.code.name
            _log.info("payment_failed", entry_id=entry.id, reason=reason)
            return _Sent(
                Transition(entry.id, EntryState.FAILED, reason=reason, last_error=str(error))
            )
        return self._from_payment(entry, payment)

    def _from_payment(self, entry: OutboxEntry, payment: Payment) -> _Sent:
        if payment.status == PaymentStatus.COMMITTED:
            return _Sent(
                Transition(entry.id, EntryState.COMMITTED, transfer_id=payment.transfer_id)
            )
        if payment.status == PaymentStatus.PENDING:
            error = _pending_error(payment)
            return _Sent(_back_to_pending(entry, error), error)
        reason = payment.abort_reason or "ABORTED"
        if payment.abort_transient and entry.resubmits < self._max_resubmits:
            # ABORTED is final for its key; the same key would only replay the
            # abort. A new key is safe: the first attempt can never commit now.
            new_key = new_idempotency_key()
            _log.info(
                "resubmitting",
                entry_id=entry.id,
                reason=reason,
                old_key=entry.idempotency_key,
                new_key=new_key,
                resubmits=entry.resubmits + 1,
            )
            message = f"aborted ({reason}, transient); resubmitted under a new key"
            return _Sent(
                Transition(
                    entry.id,
                    EntryState.PENDING,
                    reason=reason,
                    last_error=message,
                    new_key=new_key,
                ),
                _transient_abort_error(reason, message),
            )
        return _Sent(
            Transition(entry.id, EntryState.ABORTED, transfer_id=payment.transfer_id, reason=reason)
        )

    # ----------------------------------------------------------- background

    async def run_forever(self) -> None:
        """Drain whenever there is work; back off while it cannot be delivered."""
        while True:
            await self._wait_for_work()
            try:
                async for attempt in self._policy.retrying(
                    sleep=self._backoff_sleep, rng=self._rng, what="outbox pass"
                ):
                    with attempt:
                        report = await self.pass_once()
                if report.skipped_other_process:
                    _log.debug("drain_delegated", detail="another process holds the outbox lock")
            except asyncio.CancelledError:
                raise
            except (LoginRequired, Unauthenticated) as exc:
                _log.warning("drain_waiting_for_login", error=str(exc))
                await self._wait(self._login_poll_s)
                self._wake.set()
            except Exception:
                # A bug or a storage error must not end delivery for good.
                _log.exception("drain_failed")
                await self._wait(self._policy.cap_s)
                self._wake.set()  # then straight to the next pass, which resolves IN_FLIGHT

    async def _wait_for_work(self) -> None:
        await self._wait(self._idle_poll_s)

    async def _wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()

    async def _backoff_sleep(self, delay_s: float) -> None:
        """The retry delay, ended early by new work or by the gateway becoming reachable."""
        if self._sleep is not None:
            await self._sleep(delay_s)
            return
        self._wake.clear()
        waits: list[Awaitable[object]] = [self._wake.wait()]
        if self.offline:
            waits.append(self._calls.until_ready())
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _unchanged(entry: OutboxEntry, error: Exception, *, stop: bool) -> _Sent:
    """The outcome is still unknown: the entry stays IN_FLIGHT, asked again next pass."""
    return _Sent(None, error, stop=stop)


def _back_to_pending(entry: OutboxEntry, error: BaseException) -> Transition:
    return Transition(entry.id, EntryState.PENDING, last_error=str(error))


def _pending_error(payment: Payment) -> StrifeError:
    return RequestInProgress(
        grpc.StatusCode.ABORTED,
        "REQUEST_IN_PROGRESS",
        f"payment {payment.idempotency_key} is still being coordinated",
    )


def _transient_abort_error(reason: str, message: str) -> StrifeError:
    """A transient abort counts as retryable work: the resubmission waits a backoff."""
    error = StrifeError(grpc.StatusCode.ABORTED, reason, message)
    error.retryable = True
    return error
