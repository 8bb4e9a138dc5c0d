"""A replicated bank's resolver: a leg left in doubt is settled by the group.

A leg prepared under gateway gw-1's name that gw-1 never decided (a gateway
that died between its prepares and its decision looks the same): after the
in-doubt timeout every replica asks gw-1, hears ABORT (presumed abort: gw-1
has no record of it), and votes; f + 1 votes alike abort the leg and release
its hold, though one replica lies to clients throughout.
"""

from __future__ import annotations

from pathlib import Path

from strife.v1 import bank_pb2, money_pb2

from ..cluster_fixtures import cluster
from ..conftest import Pki
from ..support import until
from .replicated import BANK, replica_group


async def test_a_leg_its_coordinator_never_decided_is_aborted_by_the_group(
    pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "cluster").mkdir()
    with cluster(pki, tmp_path / "cluster") as c:
        extra = ["--coordinator", f"gw-1={c.gateways['gw-1'].address}", "--in-doubt-timeout", "1"]
        with replica_group(
            pki, tmp_path / "vault", byzantine={2: "wrong-results"}, extra=extra
        ) as group:
            async with group.pool() as pool:
                bank = group.bank(pool)
                prepared = await bank.Prepare(
                    bank_pb2.PrepareRequest(
                        bank=BANK, transfer_id="stranded", coordinator="gw-1",
                        leg=bank_pb2.LEG_DEBIT, account_id="ann-usd",
                        amount=money_pb2.Money(amount_minor=4_000, currency="USD"),
                        fingerprint=b"stranded", counterparty="beta/cy-usd",
                    ),
                    timeout=20,
                )  # fmt: skip
                assert prepared.state == bank_pb2.TRANSFER_STATE_PREPARED

                async def settled() -> bool:
                    reply = await bank.GetTransfer(
                        bank_pb2.GetTransferRequest(bank=BANK, transfer_id="stranded"),
                        timeout=20,
                    )
                    return bool(reply.state == bank_pb2.TRANSFER_STATE_ABORTED)

                await until(settled, "the group to abort the stranded leg", within_s=30)
                balance = await bank.GetAccountBalance(
                    bank_pb2.GetAccountBalanceRequest(bank=BANK, account_id="ann-usd"),
                    timeout=20,
                )
                assert balance.balance.held.amount_minor == 0
                assert balance.balance.balance.amount_minor == 100_000
            votes = [
                e for i in range(4) for e in group.processes[i].log_events()
                if e.get("event") == "in_doubt_vote"
            ]  # fmt: skip
            assert votes and all(v["decision"] == "ABORT" for v in votes)
