"""The outbox through outages: every gateway down, and one replica killed mid-run.

Each test owns its cluster, because it stops or kills gateways.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from strife.client import EntryState, PaymentResult, StrifeClient

from .cluster_fixtures import PASSWORDS, Cluster, cluster
from .conftest import Pki
from .processes import BIN, ServiceProcess
from .support import until
from .test_client_support import ADA, CY, DEADLINE_S, client_for, parsed, strife_cli


async def debits(client: StrifeClient, transfer_ids: set[str]) -> list[int]:
    """ada's ledger lines for these transfers (every page)."""
    return [
        e.amount_minor
        async for page in client.history(ADA, page_size=200)
        for e in page.entries
        if e.transfer_id in transfer_ids
    ]


async def test_all_gateways_down_pay_queues_then_delivers_exactly_once(
    pki: Pki, tmp_path: Path
) -> None:
    with cluster(pki, tmp_path, gateways=("gw-1", "gw-2")) as c:
        async with client_for(pki, c, tmp_path / "outbox.db") as client:
            await client.login()
            before = await client.balance(ADA)
            seen: list[PaymentResult] = []
            client.on_outcome(seen.append)
            outcomes = client.outcomes()
            for gateway in c.gateways.values():
                gateway.stop()

            started = time.monotonic()
            queued = await client.pay(CY, amount_minor=321, currency="USD")
            second = await client.pay(CY, amount_minor=1, currency="USD")
            elapsed_s = time.monotonic() - started
            assert queued.queued and second.queued
            assert elapsed_s < 1.5, f"pay took {elapsed_s:.2f} s with every gateway down"
            stored = await client.outbox_entry(queued.entry_id)
            assert stored.state == EntryState.PENDING and stored.last_error

            for name in list(c.gateways):
                c.restart_gateway(name)
            settled = [
                await asyncio.wait_for(anext(outcomes), DEADLINE_S),
                await asyncio.wait_for(anext(outcomes), DEADLINE_S),
            ]
            assert await client.wait_for(second.idempotency_key, DEADLINE_S) == settled[1]
            assert [r.entry_id for r in settled] == [queued.entry_id, second.entry_id]
            assert {r.state for r in settled} == {EntryState.COMMITTED}
            assert [r.entry_id for r in seen] == [queued.entry_id, second.entry_id]

            # COMMITTED is answered at the commit point; the banks post it right
            # after, and a restarted replica's settler may be the one to deliver.
            async def posted() -> bool:
                return (await client.balance(ADA)).balance_minor == before.balance_minor - 322

            await until(posted, "both payments to be posted")
            assert sorted(await debits(client, {r.transfer_id for r in settled})) == [-321, -1]


@pytest.mark.slow
async def test_transient_abort_is_resubmitted_under_a_new_key(pki: Pki, tmp_path: Path) -> None:
    """beta stalls: the payment aborts PREPARE_TIMEOUT (transient), and is sent again under
    a new key once beta is back; a business abort is never resubmitted (see the cluster tests)."""
    with cluster(pki, tmp_path, gateway_extra=["--prepare-timeout", "0.3"]) as c:
        async with client_for(pki, c, tmp_path / "outbox.db") as client:
            await client.login()
            before = await client.balance(ADA)
            c.banks["beta"].signal(signal.SIGSTOP)
            try:
                first = await client.pay(CY, 77, "USD", wait_s=0)

                async def resubmitted() -> bool:
                    return (await client.outbox_entry(first.entry_id)).resubmits >= 1

                await until(resubmitted, "a transient abort and a resubmission")
            finally:
                c.banks["beta"].signal(signal.SIGCONT)
            result = await client.wait_for(first.entry_id, DEADLINE_S)
            entry = await client.outbox_entry(first.entry_id)
            assert result.state == EntryState.COMMITTED
            assert entry.keys[0] == first.idempotency_key and len(entry.keys) >= 2
            assert entry.idempotency_key == entry.keys[-1]
            old = await client.payment_status(first.idempotency_key)
            assert old.abort_transient and old.abort_reason in (
                "PREPARE_TIMEOUT",
                "BANK_UNAVAILABLE",
            )

            async def settled_once() -> bool:  # holds of the aborted attempt are released
                now = await client.balance(ADA)
                return now.held_minor == 0 and now.balance_minor == before.balance_minor - 77

            await until(settled_once, "exactly one debit and no hold")
            assert await debits(client, {result.transfer_id, old.transfer_id}) == [-77]


@pytest.mark.slow
async def test_replica_killed_mid_run_payments_move_and_land_exactly_once(
    pki: Pki, tmp_path: Path
) -> None:
    count_before, count_after = 12, 12
    with ExitStack() as stack:
        balancer = ServiceProcess(
            "strife-balancer",
            [
                "--listen",
                "127.0.0.1:0",
                "--certs",
                str(pki.identity("balancer", "balancer")),
                "--heartbeat-interval",
                "0.1",
                "--lease-ttl",
                "0.5",
            ],
            tmp_path / "balancer.log",
        ).start()
        stack.callback(balancer.stop)
        c: Cluster = stack.enter_context(
            cluster(
                pki,
                tmp_path,
                gateways=("gw-1", "gw-2"),
                gateway_extra=["--balancer", balancer.address],
            )
        )
        async with client_for(pki, c, tmp_path / "outbox.db", balancer=balancer.address) as client:

            async def both_registered() -> bool:
                from strife.rpc.channels import ChannelPool
                from strife.rpc.discovery import BalancerClient

                async with ChannelPool(pki.identity("client", "default")) as pool:
                    servers = await BalancerClient(pool, balancer.address).list("gateway")
                return {s.instance for s in servers} == {"gw-1", "gw-2"}

            await until(both_registered, "both gateways to register")
            await client.login()
            before = await client.balance(ADA)
            first = await client.pay(CY, 1, "USD")
            assert first.state == EntryState.COMMITTED
            victim = next(n for n, g in c.gateways.items() if g.address == client.gateway)
            survivor = next(n for n in c.gateways if n != victim)

            entries = [first.entry_id]
            for _ in range(count_before):
                entries.append((await client.pay(CY, 1, "USD", wait_s=0)).entry_id)
            c.gateways[victim].kill()  # SIGKILL while the drainer is delivering
            for _ in range(count_after):
                entries.append((await client.pay(CY, 1, "USD", wait_s=0)).entry_id)

            async def moved_and_delivering() -> bool:
                later = await client.outbox_entry(entries[-1])
                return client.gateway == c.gateways[survivor].address and later.settled

            await until(moved_and_delivering, "the client to move to the surviving replica")
            # Payments the dead coordinator had prepared stay in doubt until it
            # is back (2PC blocks on its coordinator); bring it back to finish.
            c.restart_gateway(victim, ["--balancer", balancer.address])

            async def all_settled() -> bool:
                states = [(await client.outbox_entry(e)).state for e in entries]
                return all(s.settled for s in states)

            await until(all_settled, "every queued payment to settle")
            final = [await client.outbox_entry(e) for e in entries]
            assert {e.state for e in final} == {EntryState.COMMITTED}, final
            assert final[-1].gateway == c.gateways[survivor].address
            transfer_ids = {e.transfer_id for e in final}
            assert len(transfer_ids) == len(entries)

            async def all_posted() -> bool:
                now = await client.balance(ADA)
                return now.balance_minor == before.balance_minor - len(entries)

            await until(all_posted, "every committed payment to be posted")
            assert await debits(client, transfer_ids) == [-1] * len(entries)


def test_cli_pay_while_offline_then_watch_prints_the_outcome(pki: Pki, tmp_path: Path) -> None:
    with cluster(pki, tmp_path, gateways=("gw-1",)) as c:
        common = [
            "--gateway",
            c.gateways["gw-1"].address,
            "--certs",
            str(pki.identity("client", "default")),
            "--json",
        ]
        home = tmp_path / "home"
        login = strife_cli(
            ["login", "-u", "ada", "--bank", "alpha", "--password-stdin", *common],
            home=home,
            stdin=PASSWORDS["ada"] + "\n",
        )
        assert login.returncode == 0, login.stderr
        before = parsed(strife_cli(["balance", "--account", ADA, *common], home=home))
        c.gateways["gw-1"].stop()

        started = time.monotonic()
        pay = [
            "pay",
            "--to-bank",
            "beta",
            "--to-account",
            "cy-usd",
            "--amount",
            "4.56",
            "--currency",
            "USD",
            *common,
        ]
        paid = strife_cli(pay, home=home)
        elapsed_s = time.monotonic() - started  # includes starting Python: no waiting on top
        queued = parsed(paid)
        assert paid.returncode == 0 and queued["queued"] and queued["state"] == "PENDING"
        assert elapsed_s < 5, elapsed_s

        watcher = subprocess.Popen(
            [str(BIN / "strife"), "watch", "--until-empty", "--timeout", str(DEADLINE_S), *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "STRIFE_HOME": str(home)},
        )
        try:
            c.restart_gateway("gw-1")
            out, err = watcher.communicate(timeout=DEADLINE_S + 5)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
        assert watcher.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert [(e["event"], e["entry_id"], e["state"]) for e in events] == [
            ("settled", queued["entry_id"], "COMMITTED")
        ]
        after = parsed(strife_cli(["balance", "--account", ADA, *common], home=home))
        assert after["balances"][0]["balance_minor"] == before["balances"][0]["balance_minor"] - 456
