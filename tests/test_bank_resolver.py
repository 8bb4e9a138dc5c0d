"""In-doubt transfers are resolved by asking their coordinator, after the timeout."""

from __future__ import annotations

from pathlib import Path

from strife.rpc.channels import ChannelPool

from .bank_fixtures import BankClient, bank_process
from .conftest import Pki
from .support import running_server, until

DEADLINE_S = 15.0


async def test_resolver_applies_commit_and_presumed_abort(pki: Pki, tmp_path: Path) -> None:
    # The test's coordinator answers COMMIT for ids starting with "c", ABORT otherwise
    # (what a gateway answers for an id it never logged: presumed abort).
    async with running_server(pki.identity("gateway", "gw-1")) as coordinator:
        with bank_process(
            pki,
            tmp_path,
            "--coordinator",
            f"gw-1={coordinator.address}",
            "--in-doubt-timeout",
            "0.3",
        ) as bank:
            async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
                gw = BankClient(pool, bank.address)
                start = await gw.balance("ada-usd")
                await gw.prepare("c-commit-me", "ada-usd", 250)
                await gw.prepare("x-abort-me", "ada-usd", 100)
                assert await gw.balance("ada-usd") == (start[0], 350, start[0] - 350)

                async def settled() -> bool:
                    return await gw.balance("ada-usd") == (start[0] - 250, 0, start[0] - 250)

                await until(settled, "both in-doubt transfers to resolve", within_s=DEADLINE_S)
                assert (await gw.prepare("c-commit-me", "ada-usd", 250)).replayed
    events = [e for e in bank.log_events() if e.get("event") == "in_doubt_resolved"]
    assert {(e["transfer_id"], e["decision"]) for e in events} == {
        ("c-commit-me", "COMMIT"),
        ("x-abort-me", "ABORT"),
    }


async def test_resolver_waits_while_the_coordinator_is_down(pki: Pki, tmp_path: Path) -> None:
    """It never aborts a YES vote on its own: no coordinator, no decision."""
    async with running_server(pki.identity("gateway", "gw-1")) as coordinator:
        address = coordinator.address
    # The coordinator is gone; the bank keeps the hold and keeps asking.
    with bank_process(
        pki, tmp_path, "--coordinator", f"gw-1={address}", "--in-doubt-timeout", "0.1"
    ) as bank:
        async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
            gw = BankClient(pool, bank.address)
            start = await gw.balance("bob-usd")
            await gw.prepare("c-held", "bob-usd", 40)

            async def asked_twice() -> bool:
                unreachable = [
                    e for e in bank.log_events() if e.get("event") == "coordinator_unreachable"
                ]
                return len(unreachable) >= 2

            await until(asked_twice, "two unanswered attempts", within_s=DEADLINE_S)
            assert await gw.balance("bob-usd") == (start[0], 40, start[0] - 40)
            # The coordinator comes back on the same address and answers COMMIT.
            async with running_server(pki.identity("gateway", "gw-1"), listen=address):

                async def committed() -> bool:
                    return await gw.balance("bob-usd") == (start[0] - 40, 0, start[0] - 40)

                await until(
                    committed,
                    "the resolver to reach the restarted coordinator",
                    within_s=DEADLINE_S,
                )
