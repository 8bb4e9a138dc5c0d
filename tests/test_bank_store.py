"""The bank store in-process: group commit, eviction and reload, seeding, reopening."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from strife.bank.ledger import LedgerError, Leg, TransferState
from strife.bank.seed import SeedError, SeedRow, load_seed
from strife.bank.store import BankStore, StoreConfig
from strife.storage.sqlite import QueueFullError

from .bank_fixtures import write_seed


def _plain(password: str) -> str:
    return "scrypt$1$1$1$" + password  # cheap stand-in: these tests never log in


def _rows(tmp_path: Path) -> list[SeedRow]:
    return load_seed(write_seed(tmp_path / "seed.json"), bank="alpha")


async def _open(tmp_path: Path, **config: Any) -> BankStore:
    store = await BankStore.open(StoreConfig(path=tmp_path / "bank.db", **config))
    return store


async def _prepare(store: BankStore, tid: str, amount: int = 10, account: str = "ada-usd") -> None:
    await store.prepare(
        transfer_id=tid,
        coordinator="gw-1",
        leg=Leg.DEBIT,
        account_id=account,
        amount_minor=amount,
        currency="USD",
        fingerprint=b"fp",
        counterparty="beta/cy-usd",
    )


async def test_seed_is_idempotent_and_keeps_moved_money(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    assert await store.seed(_rows(tmp_path), _plain) == 4
    await _prepare(store, "t1", 100)
    await store.commit(transfer_id="t1", coordinator="gw-1")
    await store.close()
    store = await _open(tmp_path)
    assert await store.seed(_rows(tmp_path), _plain) == 0
    account = await store.committed_account("ada-usd")
    assert account is not None and account.balance_minor == 100_000 - 100
    history = await store.history("ada-usd", None, 10)
    assert [h.transfer_id for h in history] == ["t1", "opening:ada-usd"]
    await store.close()


async def test_concurrent_requests_share_commits(tmp_path: Path) -> None:
    batches: list[int] = []
    store = await BankStore.open(StoreConfig(path=tmp_path / "bank.db"), on_batch=batches.append)
    await store.seed(_rows(tmp_path), _plain)
    batches.clear()
    await asyncio.gather(*(_prepare(store, f"t{i}", 1) for i in range(200)))
    assert sum(batches) == 200
    assert len(batches) < 50  # group commit: far fewer transactions than requests
    await store.close()


async def test_evicted_transfers_come_back_for_replays(tmp_path: Path) -> None:
    store = await _open(tmp_path, resident_transfers=10)
    await store.seed(_rows(tmp_path), _plain)
    for i in range(40):
        await _prepare(store, f"t{i}", 1)
        await store.commit(transfer_id=f"t{i}", coordinator="gw-1")
    assert len(store.ledger.transfers) <= 11
    assert "t0" not in store.ledger.transfers
    outcome = await store.commit(transfer_id="t0", coordinator="gw-1")
    assert outcome.replayed and outcome.transfer.state == TransferState.COMMITTED
    with pytest.raises(LedgerError) as caught:
        await _prepare(store, "t1", 2)  # same id, different amount
    assert caught.value.reason == "TRANSFER_ID_REUSED"
    account = await store.committed_account("ada-usd")
    assert account is not None and account.balance_minor == 100_000 - 40
    await store.close()


async def test_prepared_transfers_survive_reopen(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.seed(_rows(tmp_path), _plain)
    await _prepare(store, "held", 500)
    await store.close()
    store = await _open(tmp_path)
    assert [t.transfer_id for t in store.prepared()] == ["held"]
    assert store.ledger.accounts["ada-usd"].held_minor == 500
    await store.abort(transfer_id="held", coordinator="gw-1")
    assert store.ledger.accounts["ada-usd"].held_minor == 0
    await store.close()


async def test_full_queue_refuses_instead_of_growing(tmp_path: Path) -> None:
    store = await _open(tmp_path, max_batch=1, max_queue=4)
    await store.seed(_rows(tmp_path), _plain)
    results = await asyncio.gather(
        *(_prepare(store, f"q{i}", 1) for i in range(50)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, QueueFullError)]
    assert refused and len(refused) < 50
    assert all(r is None or isinstance(r, QueueFullError) for r in results)
    await store.close()


def test_seed_rejects_bad_rows(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "bank,customer_id,username,display_name,password,account_id,currency,opening_balance\n"
        "alpha,c1,u1,U,pw,a1,USD,1.005\n"
    )
    with pytest.raises(SeedError, match="2 decimal places"):
        load_seed(bad)
    for amount in ("1e3", "-5", "NaN", "1_000"):  # what Decimal takes and a payment may not
        bad.write_text(
            "bank,customer_id,username,display_name,password,account_id,currency,opening_balance\n"
            f"alpha,c1,u1,U,pw,a1,USD,{amount}\n"
        )
        with pytest.raises(SeedError, match=f"opening balance '{amount}': not a plain positive"):
            load_seed(bad)
    bad.write_text(
        "bank,customer_id,username,display_name,password,account_id,currency,opening_balance\n"
        "alpha,c1,u1,U,pw,a1,USD,1.00\nalpha,c2,u1,U,pw,a2,USD,1.00\n"
    )
    with pytest.raises(SeedError, match="two customers"):
        load_seed(bad)
