"""SIGKILL a loaded strife-bank at random moments: nothing acknowledged is lost,
nothing unacknowledged is half-applied."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from strife.bank.ledger import Account, Ledger
from strife.bank.store import BankStore
from strife.money import parse_amount
from strife.rpc.channels import ChannelPool
from strife.storage.sqlite import connect

from .bank_fixtures import SEED, BankClient, bank_process, new_id
from .conftest import Pki

KILLS = 4
WORKERS = 16
# What a caller sees when the bank dies under its request.
_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass
class Acked:
    prepared: set[str] = field(default_factory=set)
    committed: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)
    amounts: dict[str, tuple[str, int, bool]] = field(default_factory=dict)


async def _traffic(
    client: BankClient, acked: Acked, rng: random.Random, stop: asyncio.Event
) -> None:
    """Prepare a debit or credit, then commit or abort it; record every acknowledgement."""
    while not stop.is_set():
        tid = new_id()
        account = rng.choice(["ada-usd", "bob-usd", "eve-usd"])
        debit = rng.random() < 0.5
        amount = rng.randint(1, 300)
        acked.amounts[tid] = (account, amount, debit)
        try:
            await client.prepare(tid, account, amount, debit=debit)
            acked.prepared.add(tid)
            if rng.random() < 0.8:
                await client.commit(tid)
                acked.committed.add(tid)
            else:
                await client.abort(tid)
                acked.aborted.add(tid)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _GONE:
                return  # the bank is gone; this worker's last request is unacknowledged
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc  # a NO vote


def _disk_state(db: Path) -> tuple[dict[str, Account], dict[str, str], dict[str, int]]:
    conn = sqlite3.connect(db)
    try:
        accounts = {
            row[0]: Account(*row)
            for row in conn.execute(
                "SELECT account_id, customer_id, currency, balance_minor, held_minor,"
                " pending_credit_minor FROM accounts"
            )
        }
        states = dict(conn.execute("SELECT transfer_id, state FROM transfers"))
        sums = dict(conn.execute("SELECT account_id, SUM(amount_minor) FROM entries GROUP BY 1"))
    finally:
        conn.close()
    return accounts, states, sums


async def _check(db: Path, acked: Acked) -> None:
    accounts, states, sums = _disk_state(db)
    for tid in acked.committed:
        assert states.get(tid) == "COMMITTED", tid
    for tid in acked.aborted:
        assert states.get(tid) == "ABORTED", tid
    for tid in acked.prepared - acked.committed - acked.aborted:
        assert states.get(tid) in {"PREPARED", "COMMITTED", "ABORTED"}, tid
    for account in accounts.values():
        # The balance is exactly the sum of its ledger lines (opening balance included).
        assert account.balance_minor == sums.get(account.account_id, 0), account
    # Holds and pending credits agree with the PREPARED records: the same check a
    # restart makes, and a half-applied change would break it.
    await _reload(db)


async def _reload(db: Path) -> None:
    write = await connect(db)
    try:
        ledger: Ledger = await BankStore._load(write)
        ledger.check_invariants()
    finally:
        await write.close()


@pytest.mark.slow
async def test_sigkill_loses_nothing_acknowledged(pki: Pki, tmp_path: Path) -> None:
    rng = random.Random(20261126)
    db = tmp_path / "alpha.db"
    acked = Acked()
    opening = sum(
        parse_amount(r[7], "USD") for r in SEED if r[0] == "alpha" and r[6] == "USD" and r[7] != "0"
    )
    for _ in range(KILLS):
        with bank_process(pki, tmp_path, db=db) as bank:
            async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
                client = BankClient(pool, bank.address)
                stop = asyncio.Event()
                workers = [
                    asyncio.create_task(_traffic(client, acked, random.Random(rng.random()), stop))
                    for _ in range(WORKERS)
                ]
                target = len(acked.committed) + rng.randint(20, 200)
                while len(acked.committed) < target and not all(w.done() for w in workers):
                    await asyncio.wait(workers, timeout=0.01)
                bank.kill()  # SIGKILL mid-traffic
                stop.set()
                await asyncio.gather(*workers)
        await _check(db, acked)
    assert len(acked.committed) >= KILLS * 20
    # Money is conserved up to what crossed the bank's boundary on purpose.
    accounts, states, _ = _disk_state(db)
    net = 0
    for tid, (_account, amount, debit) in acked.amounts.items():
        if states.get(tid) == "COMMITTED":
            net += -amount if debit else amount
    usd = sum(a.balance_minor for a in accounts.values() if a.currency == "USD")
    assert usd == opening + net
