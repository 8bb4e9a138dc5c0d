"""The money check: read every account's books at its bank, before and after.

The auditor uses the `admin` identity and talks to the banks directly
(`GetAccountBalance`, `GetTransactionHistory`), never through a gateway, so a
gateway bug cannot hide itself (a replicated bank through its f + 1 client).
After the load it checks that

- the total balance over all accounts used is unchanged, and no hold is left;
- every payment answered COMMITTED has exactly one ledger line at the payer's
  account (-amount) and exactly one at the payee's (+amount);
- every payment answered ABORTED has no line at all;
- every other new line (a payment left without an answer, or another client
  on a shared cluster) comes in a balanced debit/credit pair;
- each account's balance moved by exactly the sum of its new lines.

Run it against a quiet cluster: payments of other clients between the same
accounts are tolerated only as balanced pairs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import grpc

from strife.backoff import Backoff
from strife.errors import from_rpc_error
from strife.loadgen._model import Outcome, Payment
from strife.rpc.channels import ChannelPool, Peer
from strife.rpc.discovery import BalancerClient
from strife.rpc.limits import MAX_PAGE_SIZE
from strife.v1 import bank_pb2, bank_pb2_grpc

Ref = tuple[str, str]
T = TypeVar("T")

READ_CONCURRENCY = 16
READ_ATTEMPTS = 5
READ_BACKOFF = Backoff(0.2, 1.6)  # 0.2, 0.4, 0.8, 1.6 s between the five reads
MAX_LINES = 5_000_000
SETTLE_POLL_S = 0.25
EXAMPLES = 10

_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class AuditError(RuntimeError):
    """The books could not be read (not: the books are wrong; that is a failed report)."""


@dataclass(frozen=True, slots=True)
class Book:
    balance_minor: int
    held_minor: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class Line:
    ref: Ref
    sequence: int
    transfer_id: str
    amount_minor: int


@dataclass
class AuditReport:
    """What the books say about the run; `ok` is the verdict."""

    accounts: int
    money_before_minor: int
    money_after_minor: int
    held_before_minor: int
    held_after_minor: int
    settled: bool
    settle_wait_s: float
    committed_checked: int = 0
    aborted_checked: int = 0
    unknown_left: int = 0
    new_lines: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_amount: int = 0
    aborted_but_moved: int = 0
    unattributed_transfers: int = 0
    unbalanced_transfers: int = 0
    ledger_mismatch_accounts: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        return self.money_before_minor == self.money_after_minor

    @property
    def ok(self) -> bool:
        return (
            self.conserved
            and self.held_after_minor == self.held_before_minor
            and not any(
                (
                    self.unknown_left,
                    self.lost,
                    self.duplicated,
                    self.wrong_amount,
                    self.aborted_but_moved,
                    self.unbalanced_transfers,
                    self.ledger_mismatch_accounts,
                )
            )
        )

    def problems(self) -> list[str]:
        """One line per failed check, for the loud failure message."""
        out = []
        if not self.conserved:
            delta = self.money_after_minor - self.money_before_minor
            out.append(f"total money changed by {delta:+d} minor units")
        if self.held_after_minor != self.held_before_minor:
            out.append(f"holds left: {self.held_after_minor - self.held_before_minor:+d} minor")
        checks = {
            "payments without an answer after the resolution pass": self.unknown_left,
            "COMMITTED payments missing a ledger line (lost)": self.lost,
            "COMMITTED payments with a ledger line twice (duplicated)": self.duplicated,
            "COMMITTED payments with a wrong amount": self.wrong_amount,
            "ABORTED payments that moved money": self.aborted_but_moved,
            "unattributed transfers that are not a balanced pair": self.unbalanced_transfers,
            "accounts whose balance moved other than their ledger lines": (
                self.ledger_mismatch_accounts
            ),
        }
        out += [f"{count} {what}" for what, count in checks.items() if count]
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok, "conserved": self.conserved}


class Auditor:
    """Reads the banks' books for a fixed set of accounts (bounded concurrency, retries)."""

    def __init__(
        self,
        pool: ChannelPool,
        balancer: BalancerClient,
        accounts: Iterable[Ref],
        *,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        replicated: Mapping[str, Any] | None = None,
    ) -> None:
        self._pool = pool
        # Replicated banks' f + 1 clients (stub-shaped): no address to resolve.
        self._replicated = dict(replicated or {})
        self._balancer = balancer
        self.accounts = sorted(set(accounts))
        self._timeout_s = timeout_s
        self._clock = clock
        self._slots = asyncio.Semaphore(READ_CONCURRENCY)

    async def _call(
        self, bank: str, call: Callable[[bank_pb2_grpc.BankServiceAsyncStub], Awaitable[T]]
    ) -> T:
        """One read at `bank`, retried on transient errors with a fresh address."""
        refresh = False
        for attempt in range(READ_ATTEMPTS):
            stub = self._replicated.get(bank)
            if stub is None:
                address = await self._balancer.resolve("bank", bank, refresh=refresh)
                stub = bank_pb2_grpc.BankServiceStub(self._pool.get(address, Peer("bank", bank)))
            try:
                async with self._slots:
                    return await call(stub)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _TRANSIENT or attempt == READ_ATTEMPTS - 1:
                    raise AuditError(f"bank {bank}: {from_rpc_error(exc)}") from exc
                refresh = True
                await asyncio.sleep(READ_BACKOFF.delay_s(attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _book(self, ref: Ref, with_sequence: bool) -> Book:
        bank, account = ref
        reply = await self._call(
            bank,
            lambda stub: stub.GetAccountBalance(
                bank_pb2.GetAccountBalanceRequest(bank=bank, account_id=account),
                timeout=self._timeout_s,
            ),
        )
        sequence = 0
        if with_sequence:
            page = await self._call(
                bank,
                lambda stub: stub.GetTransactionHistory(
                    bank_pb2.BankHistoryRequest(bank=bank, account_id=account, page_size=1),
                    timeout=self._timeout_s,
                ),
            )
            sequence = page.entries[0].sequence if page.entries else 0
        return Book(reply.balance.balance.amount_minor, reply.balance.held.amount_minor, sequence)

    async def snapshot(self, with_sequence: bool = True) -> dict[Ref, Book]:
        books = await asyncio.gather(*(self._book(ref, with_sequence) for ref in self.accounts))
        return dict(zip(self.accounts, books, strict=True))

    async def lines_since(self, ref: Ref, after_sequence: int, budget: list[int]) -> list[Line]:
        """New ledger lines of one account, newest first, until `after_sequence`."""
        bank, account = ref
        lines: list[Line] = []
        token = ""
        while True:
            request = bank_pb2.BankHistoryRequest(
                bank=bank, account_id=account, page_size=MAX_PAGE_SIZE, page_token=token
            )

            def read(
                stub: bank_pb2_grpc.BankServiceAsyncStub,
                request: bank_pb2.BankHistoryRequest = request,
            ) -> Awaitable[bank_pb2.BankHistoryResponse]:
                return stub.GetTransactionHistory(request, timeout=self._timeout_s)

            page = await self._call(bank, read)
            for entry in page.entries:
                if entry.sequence <= after_sequence:
                    return lines
                lines.append(
                    Line(ref, entry.sequence, entry.transfer_id, entry.amount.amount_minor)
                )
            budget[0] -= len(page.entries)
            if budget[0] < 0:
                raise AuditError(f"more than {MAX_LINES} new ledger lines; refusing to read on")
            token = page.next_page_token
            if not token:
                return lines

    async def settle(
        self, before: dict[Ref, Book], expected: dict[Ref, int], timeout_s: float
    ) -> tuple[dict[Ref, Book], bool]:
        """Poll balances until they match `expected` and holds are back, or the timeout.

        A COMMITTED answer may precede a bank's applying the commit (the
        gateway's settler delivers it later), so the books are read only once
        they stop moving towards the expected state or the bound is hit.
        """
        deadline = self._clock() + timeout_s
        held_before = sum(b.held_minor for b in before.values())
        while True:
            now = await self.snapshot(with_sequence=False)
            held = sum(b.held_minor for b in now.values())
            matches = all(now[ref].balance_minor == expected[ref] for ref in self.accounts)
            if (matches and held == held_before) or self._clock() >= deadline:
                return now, matches and held == held_before
            await asyncio.sleep(SETTLE_POLL_S)

    async def audit(
        self, before: dict[Ref, Book], payments: Sequence[Payment], settle_timeout_s: float
    ) -> AuditReport:
        started = self._clock()
        expected = {ref: book.balance_minor for ref, book in before.items()}
        for p in payments:
            if p.outcome is Outcome.COMMITTED:
                expected[p.payer.ref] -= p.amount_minor
                expected[p.payee.ref] += p.amount_minor
        after, settled = await self.settle(before, expected, settle_timeout_s)
        budget = [MAX_LINES]
        per_account = await asyncio.gather(
            *(self.lines_since(ref, before[ref].last_sequence, budget) for ref in self.accounts)
        )
        return check(
            before,
            after,
            dict(zip(self.accounts, per_account, strict=True)),
            payments,
            settled,
            self._clock() - started,
        )


def check(
    before: dict[Ref, Book],
    after: dict[Ref, Book],
    lines: dict[Ref, list[Line]],
    payments: Sequence[Payment],
    settled: bool,
    settle_wait_s: float,
) -> AuditReport:
    """The verdict from two snapshots and the new lines (pure, so tests can feed it)."""
    report = AuditReport(
        accounts=len(before),
        money_before_minor=sum(b.balance_minor for b in before.values()),
        money_after_minor=sum(b.balance_minor for b in after.values()),
        held_before_minor=sum(b.held_minor for b in before.values()),
        held_after_minor=sum(b.held_minor for b in after.values()),
        settled=settled,
        settle_wait_s=round(settle_wait_s, 3),
    )
    by_transfer: dict[str, list[Line]] = {}
    for account_lines in lines.values():
        report.new_lines += len(account_lines)
        for line in account_lines:
            by_transfer.setdefault(line.transfer_id, []).append(line)

    def example(text: str) -> None:
        if len(report.examples) < EXAMPLES:
            report.examples.append(text)

    known: set[str] = set()
    for p in payments:
        if p.outcome is Outcome.COMMITTED:
            report.committed_checked += 1
            known.add(p.transfer_id)
            found = by_transfer.get(p.transfer_id, [])
            debits = [x for x in found if x.ref == p.payer.ref]
            credits = [x for x in found if x.ref == p.payee.ref]
            if not debits or not credits:
                report.lost += 1
                example(
                    f"lost: {p.transfer_id} {p.payer.ref}->{p.payee.ref} "
                    f"(payer lines {len(debits)}, payee lines {len(credits)})"
                )
            elif len(debits) > 1 or len(credits) > 1 or len(found) > 2:
                report.duplicated += 1
                example(f"duplicated: {p.transfer_id} has {len(found)} lines")
            elif (debits[0].amount_minor, credits[0].amount_minor) != (
                -p.amount_minor,
                p.amount_minor,
            ):
                report.wrong_amount += 1
                example(
                    f"wrong amount: {p.transfer_id} sent {p.amount_minor}, lines "
                    f"{debits[0].amount_minor}/{credits[0].amount_minor}"
                )
        elif p.outcome is Outcome.ABORTED:
            report.aborted_checked += 1
            known.add(p.transfer_id)
            if p.transfer_id in by_transfer:
                report.aborted_but_moved += 1
                example(f"aborted but moved: {p.transfer_id} ({p.reason})")
        elif p.outcome is Outcome.UNKNOWN:
            report.unknown_left += 1
            example(f"no answer: key {p.key} ({p.reason})")
    for transfer_id, found in by_transfer.items():
        if transfer_id in known:
            continue
        report.unattributed_transfers += 1
        amounts = sorted(x.amount_minor for x in found)
        if len(found) != 2 or amounts[0] >= 0 or sum(amounts) != 0:
            report.unbalanced_transfers += 1
            example(f"unbalanced unattributed transfer {transfer_id}: {amounts}")
    for ref, book in before.items():
        moved = after[ref].balance_minor - book.balance_minor
        if moved != sum(x.amount_minor for x in lines.get(ref, [])):
            report.ledger_mismatch_accounts += 1
            example(f"{ref[0]}/{ref[1]} balance moved {moved:+d}, its lines say otherwise")
    return report
