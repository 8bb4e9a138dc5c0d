"""A replicated bank under churn: one replica at a time killed (SIGKILL, the primary
too) and started again from its journal, while payments go on.

Every payment a client saw committed moved its money once, nothing else moved,
and once the churn stops the four replicas reach one state: the journal's
recovery, view changes under load, rejoining the group's view and chunked
state transfer, together. (They need not end in one view: a replica that
asked alone for a later view waits there for the group, as PBFT has it.)"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest

from strife.bft.bank_client import ReplicatedBank
from strife.v1 import bank_pb2, money_pb2

from ..conftest import Pki
from ..support import until
from .replicated import BANK, replica_group
from .test_replicated_bank import balances, settle_states

PAYERS = 4
PAYMENTS_EACH = 60
KILLS = 6
CALL_S = 10.0


async def pay(
    bank: ReplicatedBank, transfer_id: str, minor: int
) -> bank_pb2.ProcessTransactionResponse:
    """One payment, asked again under its id until the group answers (it runs once)."""
    request = bank_pb2.ProcessTransactionRequest(
        bank=BANK, transfer_id=transfer_id, coordinator="gw-1", from_account_id="ann-usd",
        to_account_id="ben-usd", amount=money_pb2.Money(amount_minor=minor, currency="USD"),
        fingerprint=transfer_id.encode(),
    )  # fmt: skip
    for _ in range(20):
        try:
            return await bank.ProcessTransaction(request, timeout=CALL_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    raise AssertionError(f"{transfer_id}: no answer after 20 tries")


@pytest.mark.slow
async def test_payments_survive_replicas_killed_and_restarted_one_at_a_time(
    pki: Pki, tmp_path: Path
) -> None:
    rng = random.Random(7)
    with replica_group(pki, tmp_path / "group", state_chunk_bytes=2048) as group:
        async with group.pool() as pool, group.pool("admin", "tester") as admin:
            bank = group.bank(pool)
            committed: dict[str, int] = {}

            async def payer(k: int) -> None:
                for n in range(PAYMENTS_EACH):
                    transfer_id, minor = f"w{k}-{n}", 1 + (k + n) % 7
                    reply = await pay(bank, transfer_id, minor)
                    assert reply.state == bank_pb2.TRANSFER_STATE_COMMITTED, transfer_id
                    committed[transfer_id] = minor

            payers = [asyncio.create_task(payer(k)) for k in range(PAYERS)]
            try:
                for _ in range(KILLS):
                    victim = rng.randrange(4)
                    group.processes.pop(victim).kill()
                    before = len(committed)

                    async def went_on(since: int = before) -> bool:
                        return len(committed) >= since + 8 or all(p.done() for p in payers)

                    await until(went_on, "payments to go on with a replica down")
                    await asyncio.to_thread(group.start, victim)
                    await until(went_on, "payments to go on after the restart")
                await asyncio.gather(*payers)
            finally:
                for task in payers:
                    task.cancel()
            assert len(committed) == PAYERS * PAYMENTS_EACH
            # The group is live after the churn, and once it is quiet every replica
            # holds the one state (a replica that missed the last batches learns it
            # from the checkpoint the idle primary fills up to, and fetches it).
            committed["last"] = 1
            assert (await pay(bank, "last", 1)).state == bank_pb2.TRANSFER_STATE_COMMITTED
            await settle_states(group, admin, [0, 1, 2, 3])
            moved = sum(committed.values())
            found = await balances(bank)
            assert found == {"ann-usd": 100_000 - moved, "ben-usd": 50_000 + moved, "cat-usd": 0}
