"""Exactly-once across two gateway replicas, with real processes.

Two banks (alpha, beta), two gateway replicas (gw-1, gw-2), real certificates.
The contract these tests hold Strife to, as a customer sees it:

- For every idempotency key, every replica that answers gives the same final
  outcome, now and after a crash, restart, cancellation or pause.
- ABORTED is a promise that no leg was or will be applied; until a replica can
  promise that it says "ask again" (ABORTED REQUEST_IN_PROGRESS, or UNAVAILABLE).
  The helpers here take either as "not final yet" and ask again, bounded.
- Money: no double charge, money conserved across the banks, no hold left once
  settled (read from the banks themselves).

Faults come from `strife.faults` (`STRIFE_FAILPOINTS`, `STRIFE_FAILPOINTS_FILE`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from strife.errors import Reason, from_rpc_error
from strife.rpc.addresses import free_port
from strife.rpc.channels import ChannelPool
from strife.v1 import gateway_pb2, gateway_pb2_grpc, money_pb2

from .bank_fixtures import COLUMNS, BankClient
from .cluster_fixtures import Cluster, cluster
from .conftest import Pki
from .processes import ServiceProcess
from .support import until

COMMITTED = gateway_pb2.PAYMENT_STATUS_COMMITTED
ABORTED = gateway_pb2.PAYMENT_STATUS_ABORTED
PENDING = gateway_pb2.PAYMENT_STATUS_PENDING
STATUS = {COMMITTED: "COMMITTED", ABORTED: "ABORTED", PENDING: "PENDING"}

Account = tuple[str, str]  # (bank, account id)
ADA: Account = ("alpha", "ada-usd")
EVE: Account = ("alpha", "eve-usd")
BOB: Account = ("alpha", "bob-usd")
CY: Account = ("beta", "cy-usd")
ALICE: Account = ("alpha", "alice-usd")
BOB_BETA: Account = ("beta", "bob-usd")
GUS: Account = ("gamma", "gus-usd")

# Rows added to the shared seed: alice at alpha and bob at beta share one
# customer id, as two banks may well assign; gus banks at a third bank, gamma.
EXTRA_SEED = [
    ("alpha", "c-twin", "alice", "Alice", "pw-alice", "alice-usd", "USD", "100.00"),
    ("beta", "c-twin", "bob", "Bob at beta", "pw-bob-beta", "bob-usd", "USD", "100.00"),
    ("gamma", "c-gus", "gus", "Gus", "pw-gus", "gus-usd", "USD", "0"),
]
PASSWORDS = {
    ("alpha", "ada"): "pw-ada",
    ("alpha", "eve"): "pw-eve",
    ("beta", "cy"): "pw-cy",
    ("alpha", "alice"): "pw-alice",
    ("beta", "bob"): "pw-bob-beta",
}
ALL_BOOKS = {
    "ada": ADA,
    "eve": EVE,
    "bob": BOB,
    "cy": CY,
    "alice": ALICE,
    "bob@beta": BOB_BETA,
    "gus": GUS,
}

ASK_AGAIN_FOR_S = 20.0  # how long a caller keeps asking again before giving up
SETTLE_S = 20.0  # how long a settled state may take to show at the banks


def key() -> str:
    return str(uuid.uuid4())


def write_extra_seed(path: Path) -> Path:
    """A second seed file beside the cluster's own (`--seed` is repeatable)."""
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in EXTRA_SEED]
    path.write_text(json.dumps(rows))
    return path


# ------------------------------------------------------------------ callers


@dataclass
class Caller:
    """One logged-in customer talking to one replica, every call with a deadline."""

    stub: Any
    token: str
    name: str  # the replica's name, for messages
    pool: ChannelPool

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def pay(
        self, k: str, source: Account, target: Account, amount_minor: int, deadline_s: float = 5.0
    ) -> Any:
        return await self.stub.ProcessPayment(
            gateway_pb2.ProcessPaymentRequest(
                idempotency_key=k,
                from_account=money_pb2.AccountRef(bank=source[0], account_id=source[1]),
                to_account=money_pb2.AccountRef(bank=target[0], account_id=target[1]),
                amount=money_pb2.Money(amount_minor=amount_minor, currency="USD"),
            ),
            timeout=deadline_s,
            metadata=self.auth,
        )

    async def get(self, k: str, deadline_s: float = 5.0) -> Any:
        return await self.stub.GetPayment(
            gateway_pb2.GetPaymentRequest(idempotency_key=k), timeout=deadline_s, metadata=self.auth
        )

    def at(self, c: Cluster, gateway: str) -> Caller:
        """The same customer (same token: replicas accept each other's) at another replica."""
        stub = stub_for(self.pool, c.gateways[gateway].address)
        return Caller(stub, self.token, gateway, self.pool)


def stub_for(pool: ChannelPool, address: str) -> Any:
    return gateway_pb2_grpc.PaymentGatewayStub(pool.get(address))


async def login(
    pool: ChannelPool, c: Cluster, gateway: str, username: str, bank: str = "alpha"
) -> Caller:
    stub = stub_for(pool, c.gateways[gateway].address)
    reply = await stub.Login(
        gateway_pb2.LoginRequest(
            username=username, password=PASSWORDS[(bank, username)], bank=bank
        ),
        timeout=5.0,
    )
    return Caller(stub, reply.access_token, gateway, pool)


def ask_again(exc: grpc.aio.AioRpcError) -> bool:
    """An answer that is not final: the caller should ask again with the same key."""
    if exc.code() is grpc.StatusCode.UNAVAILABLE:
        return True
    return (
        exc.code() is grpc.StatusCode.ABORTED
        and from_rpc_error(exc).reason == Reason.REQUEST_IN_PROGRESS
    )


def describe(exc: grpc.aio.AioRpcError) -> str:
    error = from_rpc_error(exc)
    return f"{error.code.name} {error.reason}: {error.message}"


async def final_payment(
    caller: Caller,
    k: str,
    source: Account,
    target: Account,
    amount_minor: int,
    *,
    deadline_s: float = ASK_AGAIN_FOR_S,
    stalled: Callable[[], None] | None = None,
    stall_after_s: float = 5.0,
) -> Any:
    """ProcessPayment under `k` until a final answer (the Payment), asking again
    while the replica says so. `stalled` runs once if it still says so after
    `stall_after_s` (e.g. to resume a paused replica)."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < deadline_s:
        try:
            reply = await caller.pay(k, source, target, amount_minor)
        except grpc.aio.AioRpcError as exc:
            if not ask_again(exc):
                raise
            last = describe(exc)
            if stalled is not None and time.monotonic() - started > stall_after_s:
                stalled()
                stalled = None
            await asyncio.sleep(min(0.2, from_rpc_error(exc).retry_after_s or 0.1))
            continue
        assert reply.payment.status in (COMMITTED, ABORTED), reply
        return reply.payment
    raise AssertionError(f"{caller.name} gave no final answer for {deadline_s} s; last: {last}")


async def final_status(caller: Caller, k: str, *, deadline_s: float = ASK_AGAIN_FOR_S) -> Any:
    """GetPayment under `k` until it reports a final outcome (PENDING, NOT_FOUND and
    "ask again" count as not yet)."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < deadline_s:
        try:
            reply = await caller.get(k)
        except grpc.aio.AioRpcError as exc:
            if not ask_again(exc) and exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            last = describe(exc)
        else:
            if reply.payment.status in (COMMITTED, ABORTED):
                return reply.payment
            last = STATUS.get(reply.payment.status, str(reply.payment.status))
        await asyncio.sleep(0.1)
    raise AssertionError(f"{caller.name}: GetPayment not final for {deadline_s} s; last: {last}")


def outcome(payment: Any) -> str:
    text = STATUS.get(payment.status, str(payment.status))
    return f"{text} {payment.abort_reason}".strip()


async def agrees(caller: Caller, k: str, request: tuple[Account, Account, int], want: Any) -> None:
    """`caller`'s replica reports `want` for `k`, by GetPayment and by a retry."""
    got = await final_status(caller, k)
    assert outcome(got) == outcome(want), (
        f"{caller.name} GetPayment says {outcome(got)}, the payment was {outcome(want)}"
    )
    again = await final_payment(caller, k, *request)
    assert outcome(again) == outcome(want), (
        f"{caller.name} replays {outcome(again)}, the payment was {outcome(want)}"
    )
    assert again.transfer_id == want.transfer_id


# -------------------------------------------------------------------- books


Books = dict[str, tuple[int, int, int]]  # name -> (balance, held, available)


async def books(
    pki: Pki, c: Cluster, accounts: dict[str, Account], pool: ChannelPool | None = None
) -> Books:
    """Balances read straight from the banks, as an operator would."""
    if pool is None:
        async with ChannelPool(pki.identity("admin", "admin")) as own:
            return await books(pki, c, accounts, own)
    result = {}
    for name, (bank, account) in accounts.items():
        result[name] = await BankClient(pool, c.banks[bank].address, bank=bank).balance(account)
    return result


async def settles(
    pki: Pki, c: Cluster, before: Books, moved: dict[str, int], *, deadline_s: float = SETTLE_S
) -> Books:
    """Wait until every account in `before` shows exactly `moved` (minor units, by
    name) against `before` and no hold; fail with the books if it never does."""
    assert sum(moved.values()) == 0, "money moves between these accounts only"
    accounts = {name: ALL_BOOKS[name] for name in before}
    want = {name: before[name][0] + moved.get(name, 0) for name in before}
    started = time.monotonic()
    async with ChannelPool(pki.identity("admin", "admin")) as pool:
        while True:
            now = await books(pki, c, accounts, pool)
            if all(now[n][0] == want[n] and now[n][1] == 0 for n in now):
                return now
            if time.monotonic() - started > deadline_s:
                raise AssertionError(
                    f"not settled after {deadline_s} s: want balances {want} and no holds;"
                    f" the banks say {now} (before: {before})"
                )
            await asyncio.sleep(0.1)


def failpoint_hits(process: ServiceProcess) -> list[dict[str, object]]:
    return [e for e in process.log_events() if e.get("event") == "failpoint"]


# ------------------------------ one shared cluster (failpoints armed by file, per test)


@dataclass
class Shared:
    c: Cluster
    armed: dict[str, Path]  # bank -> its failpoints file (empty: nothing armed)


@pytest.fixture(scope="module")
def shared(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("replicas")
    armed = {bank: root / f"{bank}.failpoints" for bank in ("alpha", "beta")}
    with cluster(
        pki,
        root,
        gateways=("gw-1", "gw-2"),
        bank_extra=["--seed", str(write_extra_seed(root / "extra-seed.json"))],
        bank_env={bank: {"STRIFE_FAILPOINTS_FILE": str(path)} for bank, path in armed.items()},
    ) as c:
        yield Shared(c, armed)


@pytest.fixture
async def pool(pki: Pki) -> AsyncIterator[ChannelPool]:
    async with ChannelPool(pki.identity("client", "default")) as p:
        yield p


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    assert (error.code, error.reason) == (code, reason), describe(caught.value)


# (3) and (6): one key, many callers, both replicas.


async def test_one_key_sent_forty_times_across_replicas_commits_once(
    pki: Pki, pool: ChannelPool, shared: Shared
) -> None:
    c = shared.c
    ada1 = await login(pool, c, "gw-1", "ada")
    ada2 = ada1.at(c, "gw-2")
    before = await books(pki, c, {"ada": ADA, "cy": CY})
    # The first prepare to reach alpha waits a little: the replicas then hold
    # one leg each, the race the payment must survive.
    shared.armed["alpha"].write_text("bank.before_prepare=delay:0.3*1")
    try:
        k = key()
        callers = [ada1 if i % 2 == 0 else ada2 for i in range(40)]
        answers = await asyncio.gather(*(final_payment(r, k, ADA, CY, 123) for r in callers))
    finally:
        shared.armed["alpha"].write_text("")
    assert [outcome(a) for a in answers] == ["COMMITTED"] * 40
    assert len({a.transfer_id for a in answers}) == 1
    await settles(pki, c, before, {"ada": -123, "cy": +123})
    await agrees(ada1, k, (ADA, CY, 123), answers[0])
    await agrees(ada2, k, (ADA, CY, 123), answers[0])


async def test_a_key_has_the_same_rules_at_every_replica(
    pki: Pki, pool: ChannelPool, shared: Shared
) -> None:
    c = shared.c
    ada1 = await login(pool, c, "gw-1", "ada")
    ada2 = ada1.at(c, "gw-2")
    before = await books(pki, c, {"ada": ADA, "cy": CY})
    k = key()
    first = await final_payment(ada1, k, ADA, CY, 1000)
    assert outcome(first) == "COMMITTED"
    for caller in (ada2, ada1, ada2):  # the same key for another amount, at either replica
        await expect_error(
            caller.pay(k, ADA, CY, 2000),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.IDEMPOTENCY_KEY_REUSED,
        )
    await agrees(ada2, k, (ADA, CY, 1000), first)
    await agrees(ada1, k, (ADA, CY, 1000), first)
    await settles(pki, c, before, {"ada": -1000, "cy": +1000})


# (4): one customer id at two banks, two customers.


async def test_customers_with_one_id_at_two_banks_have_separate_keys(
    pki: Pki, pool: ChannelPool, shared: Shared
) -> None:
    c = shared.c
    alice = await login(pool, c, "gw-1", "alice", "alpha")
    bob = await login(pool, c, "gw-1", "bob", "beta")
    before = await books(pki, c, {"alice": ALICE, "cy": CY, "bob@beta": BOB_BETA, "ada": ADA})
    k = key()
    hers = await final_payment(alice, k, ALICE, CY, 500)
    assert outcome(hers) == "COMMITTED"
    for replica in ("gw-1", "gw-2"):
        await expect_error(
            bob.at(c, replica).get(k), grpc.StatusCode.NOT_FOUND, Reason.PAYMENT_NOT_FOUND
        )
    his = await final_payment(bob.at(c, "gw-2"), k, BOB_BETA, ADA, 700)
    assert outcome(his) == "COMMITTED"
    assert his.transfer_id != hers.transfer_id
    assert (his.amount.amount_minor, his.from_account.bank) == (700, "beta")
    for replica in ("gw-1", "gw-2"):
        await agrees(alice.at(c, replica), k, (ALICE, CY, 500), hers)
        await agrees(bob.at(c, replica), k, (BOB_BETA, ADA, 700), his)
    await settles(pki, c, before, {"alice": -500, "cy": +500, "bob@beta": -700, "ada": +700})


# (5): a bank that does not exist.


async def test_an_unknown_bank_is_not_found_final_and_holds_nothing(
    pki: Pki, pool: ChannelPool, shared: Shared
) -> None:
    c = shared.c
    ada1 = await login(pool, c, "gw-1", "ada")
    before = await books(pki, c, {"ada": ADA, "cy": CY})
    k = key()
    for caller in (ada1, ada1.at(c, "gw-2"), ada1):
        await expect_error(
            caller.pay(k, ADA, ("betta", "cy-usd"), 250),
            grpc.StatusCode.NOT_FOUND,
            Reason.BANK_NOT_FOUND,
        )
        assert await books(pki, c, {"ada": ADA, "cy": CY}) == before  # no hold, ever


# (9): GetPayment at the replica that did not coordinate the payment.


async def test_get_payment_answers_at_the_replica_that_did_not_coordinate(
    pki: Pki, pool: ChannelPool, shared: Shared
) -> None:
    c = shared.c
    ada1 = await login(pool, c, "gw-1", "ada")
    eve1 = await login(pool, c, "gw-1", "eve")
    before = await books(pki, c, {"ada": ADA, "eve": EVE, "cy": CY})
    paid, refused = key(), key()
    committed = await final_payment(ada1, paid, ADA, CY, 300)
    aborted = await final_payment(eve1, refused, EVE, CY, 100)
    assert (outcome(committed), outcome(aborted)) == ("COMMITTED", "ABORTED INSUFFICIENT_FUNDS")
    await settles(pki, c, before, {"ada": -300, "cy": +300})
    for k, caller, payment in ((paid, ada1, committed), (refused, eve1, aborted)):
        got = await final_status(caller.at(c, "gw-2"), k)
        assert (got.status, got.transfer_id) == (payment.status, payment.transfer_id), (
            f"gw-2 says {outcome(got)}, gw-1 answered {outcome(payment)}"
        )


# (7): an answer, then the replica's own record of it.


async def test_a_replica_that_answered_committed_never_reports_pending(
    pki: Pki, pool: ChannelPool, shared: Shared
) -> None:
    """Many payments at once, half of them one-phase (ada to bob, both at alpha):
    each one's record and decision then often share a group commit behind another
    payment's decision. GetPayment right after the answer, at the replica that
    gave it, must report that answer. (The precise test of the cause is in
    test_group_commit_order.py; this one is what a customer sees.)"""
    c = shared.c
    caller = await login(pool, c, "gw-1", "ada")  # one replica: the most contention
    before = await books(pki, c, {"ada": ADA, "bob": BOB, "cy": CY})
    moved = {"ada": 0, "bob": 0, "cy": 0}
    wrong: list[str] = []

    async def customer() -> None:
        for i in range(15):
            k, (payee, target) = key(), (("bob", BOB), ("cy", CY))[i % 2]
            answer = await final_payment(caller, k, ADA, target, 1)
            assert outcome(answer) == "COMMITTED"
            moved["ada"] -= 1
            moved[payee] += 1
            got = (await caller.get(k)).payment
            if outcome(got) != outcome(answer):
                wrong.append(f"{caller.name} {target[1]} {k}: {outcome(got)}")

    await asyncio.gather(*(customer() for _ in range(48)))
    assert not wrong, f"{len(wrong)} answered COMMITTED, then reported otherwise: {wrong[:5]}"
    await settles(pki, c, before, moved)


# ------------------------------------------------- (1): abandoned at one replica


SLOW_FIRST_PREPARE = {"STRIFE_FAILPOINTS": "bank.before_prepare=delay:3*1"}


@pytest.fixture
def slow_prepares(pki: Pki, tmp_path: Path) -> Iterator[Cluster]:
    """Each bank holds the first prepare it gets for 3 s (longer than a caller waits)."""
    with cluster(
        pki,
        tmp_path,
        gateways=("gw-1", "gw-2"),
        bank_extra=["--in-doubt-timeout", "0.3"],
        bank_env={"alpha": SLOW_FIRST_PREPARE, "beta": SLOW_FIRST_PREPARE},
    ) as c:
        yield c


async def test_a_payment_abandoned_at_one_replica_is_never_aborted_there(
    pki: Pki, pool: ChannelPool, slow_prepares: Cluster
) -> None:
    """gw-1's caller gives up while gw-1 waits for the banks; the retry at gw-2
    commits. Whatever gw-1 does next (its own run, its settler, a restart), it
    must never answer ABORTED for that key: the client would pay again."""
    c = slow_prepares
    gw1 = c.gateways["gw-1"]
    ada1 = await login(pool, c, "gw-1", "ada")
    ada2 = ada1.at(c, "gw-2")
    before = await books(pki, c, {"ada": ADA, "cy": CY})
    k = key()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ada1.pay(k, ADA, CY, 700, deadline_s=1.0)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # Keep gw-1 still while the retry runs at gw-2, so that nothing gw-1 does can
    # come first; if gw-2 waits for gw-1, gw-1 is let go after a while.
    gw1.signal(signal.SIGSTOP)
    try:
        payment = await final_payment(
            ada2, k, ADA, CY, 700, stalled=lambda: gw1.signal(signal.SIGCONT)
        )
    finally:
        gw1.signal(signal.SIGCONT)
    assert outcome(payment) == "COMMITTED"
    await agrees(ada1, k, (ADA, CY, 700), payment)
    c.restart_gateway("gw-1")  # SIGKILL, start again
    await agrees(ada1, k, (ADA, CY, 700), payment)
    await agrees(ada2, k, (ADA, CY, 700), payment)
    await settles(pki, c, before, {"ada": -700, "cy": +700})


async def test_a_payment_whose_replica_was_killed_is_never_aborted_there(
    pki: Pki, pool: ChannelPool, slow_prepares: Cluster
) -> None:
    """gw-1 is SIGKILLed while its prepares wait at the banks; the retry at gw-2
    commits; gw-1, restarted, recovers the payment as COMMITTED, never ABORTED."""
    c = slow_prepares
    ada1 = await login(pool, c, "gw-1", "ada")
    ada2 = ada1.at(c, "gw-2")
    before = await books(pki, c, {"ada": ADA, "cy": CY})
    k = key()
    first = asyncio.ensure_future(ada1.pay(k, ADA, CY, 800, deadline_s=10.0))
    await until(
        lambda: all(failpoint_hits(c.banks[b]) for b in ("alpha", "beta")),
        "gw-1's prepares to reach both banks",
    )
    c.gateways["gw-1"].kill()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    restarted = False

    def restart() -> None:
        nonlocal restarted
        c.restart_gateway("gw-1")
        restarted = True

    payment = await final_payment(ada2, k, ADA, CY, 800, stalled=restart)
    assert outcome(payment) == "COMMITTED"
    if not restarted:
        restart()
    await agrees(ada1, k, (ADA, CY, 800), payment)
    await agrees(ada2, k, (ADA, CY, 800), payment)
    await settles(pki, c, before, {"ada": -800, "cy": +800})


# ---------------------------------------- (2): two live processes under one name


async def start_clone(
    c: Cluster, extra: Sequence[str] = (), name: str = "gw-1"
) -> tuple[ServiceProcess, bool]:
    """A second gateway process under `name`, with its certificate, its own
    database and port (a cloned deployment). True if it started serving (it may
    still stop later)."""
    args = c.gateway_args(name, "127.0.0.1:0", extra)
    args[args.index("--db") + 1] = str(c.root / f"{name}-clone.db")
    clone = ServiceProcess("strife-gateway", args, c.root / f"{name}-clone.log")
    starting = asyncio.ensure_future(asyncio.to_thread(clone.start))
    try:
        await asyncio.wait_for(asyncio.shield(starting), timeout=25)
    except RuntimeError:  # it exited before serving
        return clone, False
    except TimeoutError:
        clone.kill()  # neither served nor exited; unblocks the starting thread
        await asyncio.gather(starting, return_exceptions=True)
        raise AssertionError("the clone neither started nor exited within 25 s") from None
    return clone, True


async def test_a_second_gateway_under_a_live_name_refuses_to_run(
    pki: Pki, pool: ChannelPool, tmp_path: Path
) -> None:
    """With a registry (the balancer) to tell, a second process under the name of
    a live gateway stops with a non-zero status and says why in its log; the
    first goes on serving."""
    address = f"127.0.0.1:{free_port()}"
    balancer = ServiceProcess(
        "strife-balancer",
        [
            "--listen",
            address,
            "--certs",
            str(pki.identity("balancer", "balancer")),
            "--heartbeat-interval",
            "0.2",
            "--lease-ttl",
            "0.6",
        ],
        tmp_path / "balancer.log",
    ).start()
    try:
        with cluster(pki, tmp_path, gateways=("gw-1",), gateway_extra=["--balancer", address]) as c:
            ada = await login(pool, c, "gw-1", "ada")
            # A payment at gw-1 first: the live gw-1 is the registered one.
            assert outcome(await final_payment(ada, key(), ADA, CY, 100)) == "COMMITTED"
            clone, _ = await start_clone(c, ["--balancer", address])
            try:
                await until(
                    lambda: clone.proc is not None and clone.proc.poll() is not None,
                    "the second gw-1 to stop",
                )
                assert clone.proc is not None and clone.proc.returncode != 0
                errors = [e for e in clone.log_events() if e.get("level") in ("error", "critical")]
                assert any("gw-1" in json.dumps(e) for e in errors), clone.log_path.read_text()
            finally:
                clone.stop()
            assert outcome(await final_payment(ada, key(), ADA, CY, 100)) == "COMMITTED"
    finally:
        balancer.stop()


async def test_a_cloned_gateway_never_completes_half_a_payment(
    pki: Pki, pool: ChannelPool, tmp_path: Path
) -> None:
    """Without a registry nothing stops a clone (the fence is the operator's), so
    this holds even then: replica A answers COMMITTED; beta is slow to apply A's
    commit; the key is retried at a clone B under the same name. B must not
    release the leg A holds at beta as if it were its own (payer debited, payee
    never credited)."""
    with cluster(
        pki,
        tmp_path,
        gateways=("gw-1",),
        gateway_extra=["--decision-timeout", "10"],
        bank_env={"beta": {"STRIFE_FAILPOINTS": "bank.before_commit=delay:5*1"}},
    ) as c:
        clone, started = await start_clone(c)
        try:
            if not started:  # refused: no second process can act as gw-1
                assert clone.proc is not None and clone.proc.returncode != 0
                return
            c.gateways["gw-1-clone"] = clone
            a = await login(pool, c, "gw-1", "ada")
            b = a.at(c, "gw-1-clone")
            before = await books(pki, c, {"ada": ADA, "cy": CY})
            k = key()
            first = await final_payment(a, k, ADA, CY, 900)
            assert outcome(first) == "COMMITTED"

            async def debited() -> bool:
                return (await books(pki, c, {"ada": ADA}))["ada"][:2] == (before["ada"][0] - 900, 0)

            await until(debited, "A's commit to reach the payer's bank")
            try:
                again: Any = await final_payment(b, k, ADA, CY, 900, deadline_s=10)
            except AssertionError as exc:
                again = exc
            await settles(pki, c, before, {"ada": -900, "cy": +900})
            assert not isinstance(again, AssertionError), str(again)
            assert outcome(again) == "COMMITTED"
        finally:
            c.gateways.pop("gw-1-clone", None)
            clone.stop()


# -------------------------- (8): one undeliverable decision, the others settle


async def test_one_undeliverable_decision_does_not_hold_up_the_others(
    pki: Pki, pool: ChannelPool, tmp_path: Path
) -> None:
    """Payment X's decision cannot reach gamma (down) for 8.5 s; then payment Y's
    commit misses beta once. Y must settle within 3 s of beta answering again,
    well below the settler's backoff cap (10 s)."""
    gamma_port = free_port()
    armed = tmp_path / "beta.failpoints"
    seed = write_extra_seed(tmp_path / "extra-seed.json")
    with cluster(
        pki,
        tmp_path,
        gateways=("gw-1",),
        gateway_extra=["--bank", f"gamma=127.0.0.1:{gamma_port}", "--decision-timeout", "0.3"],
        # alpha and beta leave in-doubt legs to the gateway's settler: it is on trial
        bank_extra=["--seed", str(seed), "--in-doubt-timeout", "30"],
        bank_env={"beta": {"STRIFE_FAILPOINTS_FILE": str(armed)}},
    ) as c:
        gamma_args = [
            "--name",
            "gamma",
            "--listen",
            f"127.0.0.1:{gamma_port}",
            "--db",
            str(tmp_path / "gamma.db"),
            "--init",
            "--seed",
            str(seed),
            "--certs",
            str(pki.identity("bank", "gamma")),
            "--grace",
            "1",
            "--in-doubt-timeout",
            "0.3",
            f"--coordinator=gw-1={c.gateways['gw-1'].address}",
        ]
        dies_on_commit = {"STRIFE_FAILPOINTS": "bank.before_commit"}
        gamma = ServiceProcess("strife-bank", gamma_args, tmp_path / "gamma.log", dies_on_commit)
        c.banks["gamma"] = gamma.start()
        try:
            ada = await login(pool, c, "gw-1", "ada")
            cy = await login(pool, c, "gw-1", "cy", "beta")
            before = await books(pki, c, {"ada": ADA, "cy": CY})
            x = await final_payment(ada, key(), ADA, GUS, 100)
            assert outcome(x) == "COMMITTED"
            assert gamma.proc is not None and gamma.proc.wait(10) == 75  # died on X's commit
            undeliverable_since = time.monotonic()
            # The fault's duration: X's deliveries keep failing for 8.5 s, long
            # enough for any backoff shared with X to approach its cap.
            await asyncio.sleep(max(0.0, undeliverable_since + 8.5 - time.monotonic()))

            armed.write_text("bank.before_commit=delay:30")  # beta misses Y's commit
            y = await final_payment(cy, key(), CY, ADA, 200)
            assert outcome(y) == "COMMITTED"
            await until(lambda: bool(failpoint_hits(c.banks["beta"])), "Y's commit to reach beta")
            armed.write_text("")
            back = time.monotonic()

            async def y_settled() -> bool:
                now = await books(pki, c, {"cy": CY})
                return now["cy"][:2] == (before["cy"][0] - 200, 0)

            await until(y_settled, "Y's commit to be resent to beta", within_s=10)
            took = time.monotonic() - back
            assert took < 3.0, f"Y settled {took:.1f} s after beta was back"

            c.banks["gamma"] = ServiceProcess("strife-bank", gamma_args, tmp_path / "gamma.log")
            c.banks["gamma"].start()
            await settles(
                pki,
                c,
                {**before, "gus": (0, 0, 0)},
                {"ada": -100 + 200, "cy": -200, "gus": +100},
                deadline_s=25,
            )
        finally:
            c.banks["gamma"].stop()
