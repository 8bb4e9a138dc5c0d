"""The outbox and its drainer against a scripted fake gateway (no network, no processes).

The fake answers per idempotency key from a script, so each test says exactly
which answers the gateway gives and checks what the outbox does with them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from strife.client import (
    AccountRef,
    EntryState,
    IdempotencyKeyReused,
    InsufficientFunds,
    LoginRequired,
    OutboxEntry,
    OutboxFull,
    Payment,
    PaymentStatus,
    RequestInProgress,
    RetryPolicy,
    Unavailable,
    new_idempotency_key,
)
from strife.client._drainer import Drainer, DrainLock, PassIncomplete
from strife.client._outbox import Intent, Outbox, Transition
from strife.errors import NotFound

from .support import until

ADA, CY = AccountRef("alpha", "ada-usd"), AccountRef("beta", "cy-usd")
Answer = PaymentStatus | BaseException | tuple[PaymentStatus, str, bool]


def intent(amount_minor: int = 100, customer: str = "c-ada") -> Intent:
    return Intent(customer, ADA, CY, amount_minor, "USD", "")


def unavailable() -> Unavailable:
    return Unavailable(grpc.StatusCode.UNAVAILABLE, "", "connection refused")


class FakeGateway:
    """Answers ProcessPayment/GetPayment from per-key scripts; COMMITTED when none is left."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Answer]] = {}
        self.default: list[Answer] = []  # answers for keys without a script (e.g. new keys)
        self.sent: list[str] = []
        self.looked_up: list[str] = []
        self.known: dict[str, Payment] = {}  # what GetPayment finds
        self.customer: str | BaseException = "c-ada"
        self.address = "gw-1"

    async def customer_id(self) -> str:
        if isinstance(self.customer, BaseException):
            raise self.customer
        return self.customer

    async def target(self) -> str:
        return self.address

    async def process_payment(self, entry: OutboxEntry, address: str) -> Payment:
        key = entry.idempotency_key
        self.sent.append(key)
        script = self.scripts.get(key)
        if script is None:
            script = self.scripts[key] = list(self.default)
        answer: Answer = script.pop(0) if script else PaymentStatus.COMMITTED
        if isinstance(answer, BaseException):
            raise answer
        status, reason, transient = answer if isinstance(answer, tuple) else (answer, "", False)
        payment = payment_of(key, status, reason, transient)
        self.known[key] = payment
        return payment

    async def get_payment(self, key: str, address: str) -> Payment:
        self.looked_up.append(key)
        if key not in self.known:
            raise NotFound(grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND", "unknown key")
        return self.known[key]

    async def until_ready(self) -> None:
        await asyncio.Event().wait()


def payment_of(
    key: str, status: PaymentStatus, reason: str = "", transient: bool = False
) -> Payment:
    return Payment(
        idempotency_key=key,
        transfer_id=f"t-{key}",
        status=status,
        abort_reason=reason,
        abort_transient=transient,
        from_account=ADA,
        to_account=CY,
        amount_minor=100,
        currency="USD",
        created_at_unix_ms=0,
    )


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        await asyncio.sleep(0)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", max_unsettled=50, max_settled_kept=1000)
    yield box
    await box.close()


def drainer_for(
    outbox: Outbox, fake: FakeGateway, tmp_path: Path, sleeps: Sleeps | None = None, **kw: Any
) -> Drainer:
    return Drainer(
        outbox,
        fake,
        DrainLock(tmp_path / "outbox.lock"),
        policy=RetryPolicy(initial_s=0.01, cap_s=0.08),
        sleep=sleeps or Sleeps(),
        **kw,
    )


# --------------------------------------------------------------------- storage


async def test_add_is_idempotent_per_key_and_refuses_reuse(outbox: Outbox) -> None:
    key = new_idempotency_key()
    first, created = await outbox.add(intent(), key)
    again, created_again = await outbox.add(intent(), key)
    assert (created, created_again) == (True, False) and again.id == first.id
    assert first.state == EntryState.PENDING and first.keys == (key,)
    with pytest.raises(IdempotencyKeyReused):
        await outbox.add(intent(amount_minor=101), key)


async def test_full_outbox_refuses_new_payments(outbox: Outbox) -> None:
    for _ in range(50):
        await outbox.add(intent(), new_idempotency_key())
    with pytest.raises(OutboxFull) as caught:
        await outbox.add(intent(), new_idempotency_key())
    assert (caught.value.unsettled, caught.value.limit) == (50, 50)
    assert "limit 50" in str(caught.value)
    # Settled entries do not count against the bound.
    [oldest] = await outbox.entries(limit=1)
    await outbox.cancel(oldest.id, "CANCELLED")
    await outbox.add(intent(), new_idempotency_key())


async def test_entries_survive_reopening_and_settled_is_final(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path)
    entry, _ = await box.add(intent(), new_idempotency_key())
    await box.mark_in_flight([entry], "gw-1")
    await box.apply([Transition(entry.id, EntryState.COMMITTED, transfer_id="t-1")])
    await box.close()
    box = await Outbox.open(path)
    stored = await box.get(entry.id)
    assert stored is not None and (stored.state, stored.transfer_id, stored.sends) == (
        EntryState.COMMITTED,
        "t-1",
        1,
    )
    await box.close()
    with sqlite3.connect(path) as raw, pytest.raises(sqlite3.IntegrityError, match="final"):
        raw.execute("UPDATE entries SET state = 'PENDING' WHERE id = ?", (entry.id,))


async def test_no_secret_is_ever_stored(outbox: Outbox, tmp_path: Path) -> None:
    await outbox.add(intent(), new_idempotency_key())
    with sqlite3.connect(tmp_path / "outbox.db") as raw:
        columns = {
            row[1].lower()
            for table in ("entries", "entry_keys")
            for row in raw.execute(f"PRAGMA table_info({table})")
        }
    assert not {c for c in columns if "token" in c or "password" in c}


async def test_settled_entries_are_pruned_beyond_the_bound(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", max_settled_kept=3)
    for _ in range(6):
        entry, _ = await box.add(intent(), new_idempotency_key())
        await box.cancel(entry.id, "CANCELLED")
    assert await box.prune() == 3
    assert [e.id for e in await box.entries()] == [4, 5, 6]
    await box.close()


# --------------------------------------------------------------------- drainer


async def test_delivers_in_creation_order(outbox: Outbox, tmp_path: Path) -> None:
    fake = FakeGateway()
    keys = [new_idempotency_key() for _ in range(10)]
    for key in keys:
        await outbox.add(intent(), key)
    report = await drainer_for(outbox, fake, tmp_path, window=3).pass_once()
    assert fake.sent == keys
    assert [e.state for e in report.settled] == [EntryState.COMMITTED] * 10


async def test_terminal_errors_end_the_entry_without_retry(outbox: Outbox, tmp_path: Path) -> None:
    fake = FakeGateway()
    broke, reused = new_idempotency_key(), new_idempotency_key()
    fake.scripts[broke] = [(PaymentStatus.ABORTED, "INSUFFICIENT_FUNDS", False)]
    fake.scripts[reused] = [
        IdempotencyKeyReused(grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED", "reused")
    ]
    a, _ = await outbox.add(intent(), broke)
    b, _ = await outbox.add(intent(), reused)
    sleeps = Sleeps()
    drainer = drainer_for(outbox, fake, tmp_path, sleeps)
    await drainer.pass_once()  # no PassIncomplete: nothing left to retry
    assert fake.sent == [broke, reused] and sleeps.delays == []
    a_now, b_now = await outbox.get(a.id), await outbox.get(b.id)
    assert a_now is not None and (a_now.state, a_now.reason) == (
        EntryState.ABORTED,
        "INSUFFICIENT_FUNDS",
    )
    assert b_now is not None and (b_now.state, b_now.reason) == (
        EntryState.FAILED,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert b_now.resubmits == 0 and a_now.resubmits == 0  # a business abort is not resubmitted


async def test_retryable_errors_are_retried_under_the_same_key(
    outbox: Outbox, tmp_path: Path
) -> None:
    fake = FakeGateway()
    key = new_idempotency_key()
    in_progress = RequestInProgress(grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS", "busy")
    fake.scripts[key] = [unavailable(), unavailable(), in_progress, unavailable()]
    entry, _ = await outbox.add(intent(), key)
    sleeps = Sleeps()
    task = asyncio.create_task(drainer_for(outbox, fake, tmp_path, sleeps).run_forever())
    try:
        await until(
            lambda: _state_is(outbox, entry.id, EntryState.COMMITTED),
            "delivery",
            within_s=5,
            every_s=0.005,
        )
    finally:
        task.cancel()
    assert fake.sent == [key] * 5
    assert len(sleeps.delays) == 4 and all(0 <= d <= 0.08 for d in sleeps.delays)
    stored = await outbox.get(entry.id)
    assert stored is not None and stored.sends == 5 and stored.keys == (key,)


async def test_offline_pass_stops_at_once_and_reports_offline(
    outbox: Outbox, tmp_path: Path
) -> None:
    fake = FakeGateway()
    fake.default = [unavailable()]
    for _ in range(40):
        await outbox.add(intent(), new_idempotency_key())
    drainer = drainer_for(outbox, fake, tmp_path, window=8)
    with pytest.raises(PassIncomplete) as caught:
        await drainer.pass_once()
    assert caught.value.offline and drainer.offline
    assert len(fake.sent) == 8  # one window, not forty doomed sends
    assert {e.state for e in await outbox.entries()} == {EntryState.PENDING}


async def test_transient_abort_is_resubmitted_under_a_new_linked_key(
    outbox: Outbox, tmp_path: Path
) -> None:
    fake = FakeGateway()
    key = new_idempotency_key()
    fake.scripts[key] = [(PaymentStatus.ABORTED, "PREPARE_TIMEOUT", True)]
    entry, _ = await outbox.add(intent(), key)
    drainer = drainer_for(outbox, fake, tmp_path)
    with pytest.raises(PassIncomplete):
        await drainer.pass_once()
    await drainer.pass_once()
    stored = await outbox.get(entry.id)
    assert stored is not None and stored.state == EntryState.COMMITTED
    assert stored.resubmits == 1 and stored.keys[0] == key and len(stored.keys) == 2
    assert fake.sent == list(stored.keys) and stored.idempotency_key == stored.keys[1]
    # Every key the entry used finds it.
    assert (await outbox.find(key)) == stored


async def test_resubmissions_are_bounded(outbox: Outbox, tmp_path: Path) -> None:
    fake = FakeGateway()
    fake.default = [(PaymentStatus.ABORTED, "BANK_UNAVAILABLE", True)]
    entry, _ = await outbox.add(intent(), new_idempotency_key())
    drainer = drainer_for(outbox, fake, tmp_path, max_resubmits=2)
    for _ in range(2):
        with pytest.raises(PassIncomplete):
            await drainer.pass_once()
    await drainer.pass_once()
    stored = await outbox.get(entry.id)
    assert stored is not None and (stored.state, stored.reason, stored.resubmits) == (
        EntryState.ABORTED,
        "BANK_UNAVAILABLE",
        2,
    )
    assert len(fake.sent) == 3


async def test_in_flight_after_a_crash_is_looked_up_before_any_resend(
    outbox: Outbox, tmp_path: Path
) -> None:
    """The gateway committed one, never saw the other: ask, then resend only the unknown one."""
    fake = FakeGateway()
    done, lost = new_idempotency_key(), new_idempotency_key()
    a, _ = await outbox.add(intent(), done)
    b, _ = await outbox.add(intent(), lost)
    await outbox.mark_in_flight([a, b], "gw-1")  # ...and the process died here
    fake.known[done] = payment_of(done, PaymentStatus.COMMITTED)
    await drainer_for(outbox, fake, tmp_path).pass_once()
    assert fake.looked_up == [done, lost]
    assert fake.sent == [lost]  # never the committed one again
    for entry_id in (a.id, b.id):
        stored = await outbox.get(entry_id)
        assert stored is not None and stored.state == EntryState.COMMITTED


async def test_in_flight_stays_in_flight_while_nobody_can_say(
    outbox: Outbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeGateway()
    entry, _ = await outbox.add(intent(), new_idempotency_key())
    await outbox.mark_in_flight([entry], "gw-1")

    async def down(key: str, address: str) -> Payment:
        raise unavailable()

    monkeypatch.setattr(fake, "get_payment", down)
    with pytest.raises(PassIncomplete):
        await drainer_for(outbox, fake, tmp_path).pass_once()
    assert fake.sent == []
    assert await _state_is(outbox, entry.id, EntryState.IN_FLIGHT)


async def test_no_login_leaves_payments_pending(outbox: Outbox, tmp_path: Path) -> None:
    fake = FakeGateway()
    fake.customer = LoginRequired("not logged in")
    entry, _ = await outbox.add(intent(), new_idempotency_key())
    with pytest.raises(LoginRequired):
        await drainer_for(outbox, fake, tmp_path).pass_once()
    assert fake.sent == [] and await _state_is(outbox, entry.id, EntryState.PENDING)


async def test_only_the_logged_in_customers_entries_are_sent(
    outbox: Outbox, tmp_path: Path
) -> None:
    fake = FakeGateway()
    mine, theirs = new_idempotency_key(), new_idempotency_key()
    await outbox.add(intent(customer="c-bob"), theirs)
    await outbox.add(intent(), mine)
    await drainer_for(outbox, fake, tmp_path).pass_once()
    assert fake.sent == [mine]


async def test_one_process_drains_a_profile_at_a_time(outbox: Outbox, tmp_path: Path) -> None:
    fake = FakeGateway()
    await outbox.add(intent(), new_idempotency_key())
    holder = DrainLock(tmp_path / "outbox.lock")
    assert holder.try_acquire()
    report = await drainer_for(outbox, fake, tmp_path).pass_once()
    assert report.skipped_other_process and fake.sent == []
    holder.release()
    await drainer_for(outbox, fake, tmp_path).pass_once()
    assert len(fake.sent) == 1


async def test_a_bug_mid_pass_does_not_end_background_delivery(
    outbox: Outbox, tmp_path: Path
) -> None:
    """An unexpected exception leaves the window IN_FLIGHT; the next pass resolves it."""
    fake = FakeGateway()
    fake.default = [RuntimeError("a bug in the transport")]
    entry, _ = await outbox.add(intent(), new_idempotency_key())
    task = asyncio.create_task(drainer_for(outbox, fake, tmp_path).run_forever())
    try:
        await until(
            lambda: _state_is(outbox, entry.id, EntryState.COMMITTED),
            "recovery",
            within_s=5,
            every_s=0.005,
        )
    finally:
        task.cancel()
    assert fake.looked_up == [entry.idempotency_key]  # asked before sending again
    assert fake.sent == [entry.idempotency_key] * 2


async def _state_is(outbox: Outbox, entry_id: int, state: EntryState) -> bool:
    entry = await outbox.get(entry_id)
    return entry is not None and entry.state == state


def test_insufficient_funds_is_terminal() -> None:
    error = InsufficientFunds(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", "")
    assert not error.retryable
