"""The gateway's store, simulated: `GatewayStore`'s calls over rows in a dict.

The same calls with the same SQL semantics (an insert that ignores a
conflict, a decision that applies only to a PENDING row, a forget that
deletes only a PENDING one, ...), over rows that are the replica's disk.
Every write goes through the simulated group-commit writer (`Disk`): it is
applied, in issue order, when its batch commits, and reads see only what was
committed. A crash loses whatever was not committed yet.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from strife.gateway.store import PaymentRecord, PaymentState
from strife.simulation.disk import Disk
from strife.simulation.nodes import require_alive

EPOCH_MS = 1_700_000_000_000
"""Virtual time 0 as a wall-clock millisecond, so no record is stamped 0."""


class SimGatewayStore:
    """`GatewayStore`'s interface over rows in a dict: the replica's disk."""

    def __init__(
        self,
        rows: dict[str, PaymentRecord],
        disk: Disk,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._rows = rows
        self._disk = disk
        self._clock = clock
        self._rng = rng

    def _now_ms(self) -> int:
        return EPOCH_MS + int(self._clock() * 1000)

    # ------------------------------------------------------------------ writes

    def insert_pending(self, record: PaymentRecord) -> asyncio.Future[Any]:
        """INSERT ... ON CONFLICT DO NOTHING; the future resolves once committed."""
        assert record.state == PaymentState.PENDING
        rows = self._rows

        def work() -> None:
            if record.transfer_id not in rows:
                at_ms = self._now_ms()
                rows[record.transfer_id] = replace(record, created_at_ms=at_ms, updated_at_ms=at_ms)

        future = self._disk.submit(work)
        future.add_done_callback(_retrieved)
        return future

    async def decide(self, record: PaymentRecord, *, settled: bool = False) -> None:
        """UPDATE ... WHERE state = 'PENDING'."""
        assert record.state != PaymentState.PENDING
        rows = self._rows

        def work() -> None:
            row = rows.get(record.transfer_id)
            if row is not None and row.state == PaymentState.PENDING:
                rows[record.transfer_id] = replace(
                    row,
                    state=record.state,
                    abort_reason=record.abort_reason,
                    abort_transient=record.abort_transient,
                    settled=settled,
                    updated_at_ms=self._now_ms(),
                )

        await self._disk.submit(work)

    async def settle(self, transfer_id: str) -> None:
        rows = self._rows

        def work() -> None:
            row = rows.get(transfer_id)
            if row is not None:
                rows[transfer_id] = replace(row, settled=True, updated_at_ms=self._now_ms())

        await self._disk.submit(work)

    async def forget(self, transfer_id: str) -> None:
        """DELETE ... WHERE state = 'PENDING'."""
        rows = self._rows

        def work() -> None:
            row = rows.get(transfer_id)
            if row is not None and row.state == PaymentState.PENDING:
                del rows[transfer_id]

        await self._disk.submit(work)

    async def sweep(self, older_than_ms: int) -> int:
        rows = self._rows
        old = [t for t, r in rows.items() if r.settled and r.created_at_ms < older_than_ms]

        def work() -> None:
            for transfer_id in old:
                row = rows.get(transfer_id)
                if row is not None and row.settled:
                    del rows[transfer_id]

        if old:
            await self._disk.submit(work)
        return len(old)

    # ------------------------------------------------------------------- reads

    def by_transfer(self, transfer_id: str) -> PaymentRecord | None:
        """As last committed; synchronous, like the real indexed read."""
        return self._rows.get(transfer_id)

    async def unsettled(self, limit: int = 1000) -> list[PaymentRecord]:
        """Read now, delivered a moment later (a listing is stale once read)."""
        require_alive()
        listed = sorted(
            (r for r in self._rows.values() if not r.settled), key=lambda r: r.created_at_ms
        )[:limit]
        await asyncio.sleep(self._rng.uniform(0.0001, 0.001))
        return listed

    async def close(self) -> None:
        pass


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
