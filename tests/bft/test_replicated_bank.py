"""A replicated bank of four real replica processes (f = 1) over mutual TLS.

Payments go through the f + 1 client (`ReplicatedBank`), as the gateway's
calls would. With one replica Byzantine in each of the ways of
`strife.bft.faults`, every outcome is the one a single honest bank would give
and no money appears or vanishes; honest replicas end in the same state. A
replica that missed a stretch catches up by state transfer; a group restarted
as a whole comes back from its journals; with two replicas silent (more than
f) the group stops and the client times out rather than accept anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from strife.bft.bank_client import ReplicatedBank
from strife.bft.status_cli import replicas
from strife.errors import Reason, from_rpc_error
from strife.rpc.channels import ChannelPool
from strife.v1 import bank_pb2, money_pb2

from ..conftest import Pki
from ..support import until
from .replicated import BANK, TOTAL_MINOR, ReplicaGroup, replica_group

CALL_S = 20.0
ACCOUNTS = ("ann-usd", "ben-usd", "cat-usd")


def _usd(minor: int) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=minor, currency="USD")


async def _prepare(
    bank: ReplicatedBank, transfer_id: str, leg: Any, account: str, minor: int
) -> bank_pb2.PrepareResponse:
    return await bank.Prepare(
        bank_pb2.PrepareRequest(
            bank=BANK, transfer_id=transfer_id, coordinator="gw-1", leg=leg,
            account_id=account, amount=_usd(minor), fingerprint=transfer_id.encode(),
            counterparty="elsewhere",
        ),
        timeout=CALL_S,
    )  # fmt: skip


async def _commit(bank: ReplicatedBank, transfer_id: str) -> bank_pb2.CommitResponse:
    return await bank.Commit(
        bank_pb2.CommitRequest(bank=BANK, transfer_id=transfer_id, coordinator="gw-1"),
        timeout=CALL_S,
    )


async def workload(bank: ReplicatedBank, rounds: int, tag: str = "") -> None:
    """Each round: a debit and a credit by 2PC (net zero), a one-phase payment, a
    refusal and an abort, with every answer checked against what one honest bank says."""
    for k in range(rounds):
        debit, credit = f"d{tag}{k}", f"c{tag}{k}"
        prepared = await _prepare(bank, debit, bank_pb2.LEG_DEBIT, "ann-usd", 100)
        assert prepared.state == bank_pb2.TRANSFER_STATE_PREPARED
        again = await _prepare(bank, debit, bank_pb2.LEG_DEBIT, "ann-usd", 100)
        assert again.replayed
        assert (await _commit(bank, debit)).state == bank_pb2.TRANSFER_STATE_COMMITTED
        await _prepare(bank, credit, bank_pb2.LEG_CREDIT, "cat-usd", 100)
        assert (await _commit(bank, credit)).state == bank_pb2.TRANSFER_STATE_COMMITTED
        one_phase = await bank.ProcessTransaction(
            bank_pb2.ProcessTransactionRequest(
                bank=BANK, transfer_id=f"p{tag}{k}", coordinator="gw-1",
                from_account_id="ann-usd", to_account_id="ben-usd", amount=_usd(50),
                fingerprint=b"p",
            ),
            timeout=CALL_S,
        )  # fmt: skip
        assert one_phase.state == bank_pb2.TRANSFER_STATE_COMMITTED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _prepare(bank, f"r{tag}{k}", bank_pb2.LEG_DEBIT, "cat-usd", 10**9)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert from_rpc_error(refused.value).reason == Reason.INSUFFICIENT_FUNDS
        await _prepare(bank, f"a{tag}{k}", bank_pb2.LEG_DEBIT, "ben-usd", 10)
        aborted = await bank.Abort(
            bank_pb2.AbortRequest(bank=BANK, transfer_id=f"a{tag}{k}", coordinator="gw-1"),
            timeout=CALL_S,
        )
        assert aborted.state == bank_pb2.TRANSFER_STATE_ABORTED


async def balances(bank: ReplicatedBank) -> dict[str, int]:
    found = {}
    for account in ACCOUNTS:
        reply = await bank.GetAccountBalance(
            bank_pb2.GetAccountBalanceRequest(bank=BANK, account_id=account), timeout=CALL_S
        )
        assert reply.balance.held.amount_minor == 0
        found[account] = reply.balance.balance.amount_minor
    return found


def expected(rounds: int) -> dict[str, int]:
    return {
        "ann-usd": 100_000 - rounds * 150,
        "ben-usd": 50_000 + rounds * 50,
        "cat-usd": rounds * 100,
    }


async def settle_states(group: ReplicaGroup, admin: ChannelPool, honest: list[int]) -> None:
    """Wait until the honest replicas have executed the same requests; their states agree."""

    async def agreed() -> bool:
        seen = [await group.status(admin, i) for i in honest]
        return len({(s["last_executed"], s["app_digest"]) for s in seen}) == 1

    await until(agreed, "honest replicas to agree on their state", within_s=30.0)


async def test_a_replicated_bank_answers_as_one_bank_would(pki: Pki, tmp_path: Path) -> None:
    with replica_group(pki, tmp_path / "group") as group:
        async with group.pool() as pool, group.pool("admin", "tester") as admin:
            bank = group.bank(pool)
            await workload(bank, 2)
            found = await balances(bank)
            assert found == expected(2)
            assert sum(found.values()) == TOTAL_MINOR
            await settle_states(group, admin, [0, 1, 2, 3])
            transfer = await bank.GetTransfer(
                bank_pb2.GetTransferRequest(bank=BANK, transfer_id="d0"), timeout=CALL_S
            )
            assert transfer.state == bank_pb2.TRANSFER_STATE_COMMITTED
            assert [p.account_id for p in transfer.postings] == ["ann-usd"]
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await bank.GetTransfer(
                    bank_pb2.GetTransferRequest(bank=BANK, transfer_id="nope"), timeout=CALL_S
                )
            assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
            first = await bank.GetTransactionHistory(
                bank_pb2.BankHistoryRequest(bank=BANK, account_id="ann-usd", page_size=3),
                timeout=CALL_S,
            )
            rest = await bank.GetTransactionHistory(
                bank_pb2.BankHistoryRequest(
                    bank=BANK, account_id="ann-usd", page_token=first.next_page_token
                ),
                timeout=CALL_S,
            )
            assert not rest.next_page_token
            lines = [
                (e.transfer_id, e.amount.amount_minor) for e in [*first.entries, *rest.entries]
            ]
            assert lines == [("p1", -50), ("d1", -100), ("p0", -50), ("d0", -100)]


@pytest.mark.parametrize(
    ("replica", "behaviour", "view_change"),
    [
        (0, "equivocate", True),
        (1, "wrong-results", False),
        (0, "silent", True),
        (0, "slow-primary", True),
        (2, "forge", False),
        (3, "replay", False),
        (1, "amnesia", False),
    ],
)
async def test_one_byzantine_replica_changes_no_outcome(
    pki: Pki, tmp_path: Path, replica: int, behaviour: str, view_change: bool
) -> None:
    honest = [i for i in range(4) if i != replica]
    with replica_group(pki, tmp_path / "group", byzantine={replica: behaviour}) as group:
        async with group.pool() as pool, group.pool("admin", "tester") as admin:
            bank = group.bank(pool)
            await workload(bank, 2)
            found = await balances(bank)
            assert found == expected(2)
            assert sum(found.values()) == TOTAL_MINOR
            await settle_states(group, admin, honest)
            statuses = [await group.status(admin, i) for i in honest]
            if view_change:
                # The faulty primary was replaced.
                assert all(s["view"] >= 1 for s in statuses), statuses
            if behaviour in ("forge", "replay"):
                dropped: dict[str, int] = {}
                for s in statuses:
                    for reason, count in s["dropped"].items():
                        dropped[reason] = dropped.get(reason, 0) + count
                assert dropped.get("wrong-sender", 0) > 0, dropped


async def test_a_replica_that_fell_behind_catches_up_by_state_transfer(
    pki: Pki, tmp_path: Path
) -> None:
    # Chunks of 512 bytes: the snapshot (a few kilobytes) crosses the wire in many.
    with replica_group(pki, tmp_path / "group", state_chunk_bytes=512) as group:
        async with group.pool() as pool, group.pool("admin", "tester") as admin:
            bank = group.bank(pool)
            await workload(bank, 1, tag="x")
            group.stop(3)
            # Enough for several checkpoints: the log below them is gone at the others.
            await workload(bank, 3, tag="y")
            restarted = group.start(3)
            await workload(bank, 2, tag="z")
            assert await balances(bank) == expected(6)
            stable = (await group.status(admin, 0))["stable"]

            async def caught_up() -> bool:
                status = await group.status(admin, 3)
                return bool(status["stable"] >= stable and status["last_executed"] >= stable)

            # The others' checkpoints (sent again while the group is quiet) tell it
            # how far behind it is; it takes the certified state from one of them.
            await until(caught_up, "the restarted replica to reach the stable checkpoint")
            events = [e.get("event") for e in restarted.log_events()]
            assert "state_installed" in events


async def test_a_group_restarted_as_a_whole_comes_back_from_its_journals(
    pki: Pki, tmp_path: Path
) -> None:
    with replica_group(pki, tmp_path / "group") as group:
        async with group.pool() as pool, group.pool("admin", "tester") as admin:
            bank = group.bank(pool)
            await workload(bank, 2, tag="a")
            for i in range(4):
                group.stop(i)
            for i in range(4):
                group.start(i)
            assert await balances(bank) == expected(2)
            await workload(bank, 1, tag="b")
            assert await balances(bank) == expected(3)
            await settle_states(group, admin, [0, 1, 2, 3])


async def test_with_two_silent_replicas_the_client_times_out_rather_than_accept(
    pki: Pki, tmp_path: Path
) -> None:
    with replica_group(pki, tmp_path / "group", byzantine={2: "silent", 3: "silent"}) as group:
        async with group.pool() as pool, group.pool("admin", "tester") as admin:
            bank = group.bank(pool)
            with pytest.raises(grpc.aio.AioRpcError) as stalled:
                await bank.Prepare(
                    bank_pb2.PrepareRequest(
                        bank=BANK, transfer_id="t", coordinator="gw-1", leg=bank_pb2.LEG_DEBIT,
                        account_id="ann-usd", amount=_usd(1), fingerprint=b"t",
                    ),
                    timeout=4.0,
                )  # fmt: skip
            assert stalled.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert from_rpc_error(stalled.value).reason == Reason.BANK_UNAVAILABLE
            # Nothing executed anywhere: two of four cannot form a quorum of three.
            for i in (0, 1):
                assert (await group.status(admin, i))["last_executed"] == 0


async def test_a_client_asks_only_what_its_certificate_allows(pki: Pki, tmp_path: Path) -> None:
    """The auditor reads; a gateway moves money only as its own coordinator."""
    with replica_group(pki, tmp_path / "group") as group:
        async with group.pool() as pool, group.pool("admin", "tester") as admin:
            auditor = group.bank(admin, "admin/tester")
            assert (await balances(auditor))["ann-usd"] == 100_000
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _prepare(auditor, "t-admin", bank_pb2.LEG_DEBIT, "ann-usd", 1)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            gateway = group.bank(pool)
            with pytest.raises(grpc.aio.AioRpcError) as impostor:
                await gateway.Commit(
                    bank_pb2.CommitRequest(bank=BANK, transfer_id="t", coordinator="gw-2"),
                    timeout=CALL_S,
                )
            assert impostor.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_the_replicas_command_shows_each_replica_and_who_is_unreachable(
    pki: Pki, tmp_path: Path
) -> None:
    with replica_group(pki, tmp_path / "group", byzantine={2: "wrong-results"}) as group:
        group.stop(3)
        result = CliRunner().invoke(
            replicas,
            ["--group", str(group.group_file), "--certs", str(pki.identity("admin", "tester"))],
        )
    assert result.exit_code == 3, result.output
    rows = result.output.splitlines()
    assert rows[0] == "vault: n=4 f=1"
    assert "view 0 (active), executed 0, stable 0" in rows[1]
    assert ", lie;" in rows[3]  # the behaviour `wrong-results` wears
    assert "unreachable (UNAVAILABLE" in rows[4]


async def test_an_audit_names_the_replica_whose_answer_was_outvoted(
    pki: Pki, tmp_path: Path
) -> None:
    with replica_group(pki, tmp_path / "group", byzantine={2: "wrong-results"}) as group:
        async with group.pool("admin", "tester") as admin:
            bank = group.bank(admin, "admin/tester")
            audit = await bank.audit_account("ann-usd", CALL_S)
    assert audit.account["balance_minor"] == 100_000
    assert audit.dissenters == (f"{BANK}-2",)
    assert audit.agreeing == (f"{BANK}-0", f"{BANK}-1", f"{BANK}-3")


async def test_with_a_liar_and_a_silent_replica_no_lie_is_ever_accepted(
    pki: Pki, tmp_path: Path
) -> None:
    """Two faulty of four, more than f, and PBFT promises nothing: here the group
    still runs (the liar takes part in agreement, only its replies lie), and the
    liar's replies never find a second voucher, so every answer accepted is right."""
    byzantine = {1: "wrong-results", 3: "silent"}
    with replica_group(pki, tmp_path / "group", byzantine=byzantine) as group:
        async with group.pool() as pool:
            bank = group.bank(pool)
            for n in range(6):
                reply = await bank.ProcessTransaction(
                    bank_pb2.ProcessTransactionRequest(
                        bank=BANK, transfer_id=f"p{n}", coordinator="gw-1",
                        from_account_id="ann-usd", to_account_id="ben-usd",
                        amount=_usd(1), fingerprint=b"p",
                    ),
                    timeout=CALL_S,
                )  # fmt: skip
                assert (reply.state, reply.replayed) == (bank_pb2.TRANSFER_STATE_COMMITTED, False)
            found = await balances(bank)
            assert (found["ann-usd"], found["ben-usd"]) == (100_000 - 6, 50_000 + 6)
            # The silent replica never answers: the audit ends at its deadline with
            # the liar named and the silent one in neither list.
            audit = await bank.audit_account("ann-usd", 3.0)
            assert audit.account["balance_minor"] == 100_000 - 6
            assert (audit.agreeing, audit.dissenters) == (
                (f"{BANK}-0", f"{BANK}-2"),
                (f"{BANK}-1",),
            )
