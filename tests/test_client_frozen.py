"""What pay() costs when the gateways stop answering, with real processes.

A frozen gateway (SIGSTOP) is the hard case: its TCP port still accepts and an
established connection stays open, so a call to it fails only at its 5 s
deadline. pay() must not wait for that: it returns the payment queued within
a short bound, and the drainer delivers it exactly once when the gateway
resumes. A gateway that is gone (connection refused) fails at once and is
covered in test_client_failover. A gateway that is merely slow must not be
taken for a frozen one: pay() keeps waiting for its outcome.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from strife.client import EntryState

from .cluster_fixtures import cluster
from .conftest import Pki
from .support import until
from .test_client_failover import debits
from .test_client_support import ADA, CY, DEADLINE_S, client_for

# Well below the 5 s call deadline that bounded the first pay() before, and
# generous for a shared machine (pay_probe_after_s + pay_probe_timeout_s = 1.5 s).
FIRST_PAY_BOUND_S = 2.5
KNOWN_DOWN_BOUND_S = 1.0
SLOW_PREPARE_S = 2.0


async def test_frozen_gateways_pay_returns_queued_quickly_then_delivers_once(
    pki: Pki, tmp_path: Path
) -> None:
    with cluster(pki, tmp_path, gateways=("gw-1", "gw-2")) as c:
        async with client_for(pki, c, tmp_path / "outbox.db") as client:
            await client.login()  # the connection to one replica is up, then it freezes
            before = await client.balance(ADA)
            frozen = list(c.gateways.values())
            for gateway in frozen:
                gateway.signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                first = await client.pay(CY, amount_minor=321, currency="USD")
                first_s = time.monotonic() - started
                assert first_s < FIRST_PAY_BOUND_S, f"first pay() took {first_s:.2f} s"
                # Queued: IN_FLIGHT while the drainer's send to the frozen replica
                # is still open (PENDING again at its deadline).
                assert first.queued and first.state in (EntryState.PENDING, EntryState.IN_FLIGHT)

                started = time.monotonic()
                second = await client.pay(CY, amount_minor=1, currency="USD")
                second_s = time.monotonic() - started
                assert second_s < KNOWN_DOWN_BOUND_S, f"second pay() took {second_s:.2f} s"
                assert second.queued and second.state == EntryState.PENDING

                # Stay frozen until the drainer gave up on the first send (its
                # deadline) and sent it again under the same key: on resuming,
                # the first request may still be unread at the replica it went to.
                async def sent_again() -> bool:
                    return (await client.outbox_entry(first.entry_id)).sends >= 2

                await until(sent_again, "the payment to be sent again")
            finally:
                for gateway in frozen:
                    gateway.signal(signal.SIGCONT)

            settled = [
                await client.wait_for(first.entry_id, DEADLINE_S),
                await client.wait_for(second.entry_id, DEADLINE_S),
            ]
            assert [r.state for r in settled] == [EntryState.COMMITTED] * 2, settled

            async def posted() -> bool:
                now = await client.balance(ADA)
                return now.held_minor == 0 and now.balance_minor == before.balance_minor - 322

            await until(posted, "both payments to be posted")
            # Sent to a frozen replica and again later, maybe to the other one:
            # one debit each.
            transfer_ids = {r.transfer_id for r in settled}
            assert sorted(await debits(client, transfer_ids)) == [-321, -1]


async def test_a_slow_but_live_gateway_is_waited_for(pki: Pki, tmp_path: Path) -> None:
    """alpha holds the first prepare for 2 s: the gateway answers the probe, pay() waits."""
    with cluster(
        pki,
        tmp_path,
        gateway_extra=["--prepare-timeout", "10"],
        bank_env={"alpha": {"STRIFE_FAILPOINTS": f"bank.before_prepare=delay:{SLOW_PREPARE_S}*1"}},
    ) as c:
        async with client_for(pki, c, tmp_path / "outbox.db") as client:
            await client.login()
            started = time.monotonic()
            result = await client.pay(CY, amount_minor=5, currency="USD")
            elapsed_s = time.monotonic() - started
            assert result.state == EntryState.COMMITTED, result
            assert elapsed_s >= SLOW_PREPARE_S, elapsed_s
            assert (await client.outbox_entry(result.entry_id)).sends == 1
