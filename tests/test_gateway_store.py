"""The gateway's decision log on disk: its migrations keep every payment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from strife.gateway.store import _COLUMNS_V1, MIGRATIONS, GatewayStore, PaymentRecord, PaymentState
from strife.storage.sqlite import connect, migrate


def record(n: int, state: PaymentState, settled: bool) -> PaymentRecord:
    return PaymentRecord(
        customer_id=f"c-{n % 3}",
        idempotency_key=f"key-{n:016d}",
        transfer_id=f"t-{n:04d}",
        fingerprint=bytes([n % 256]) * 32,
        state=state,
        from_bank="alpha",
        from_account="ada-usd",
        to_bank="beta",
        to_account="cy-usd",
        amount_minor=100 + n,
        currency="USD",
        description=f"n{n}",
        abort_reason="INSUFFICIENT_FUNDS" if state == PaymentState.ABORTED else "",
        settled=settled,
        created_at_ms=1_000 + n,
        updated_at_ms=2_000 + n,
    )


async def test_version_2_keeps_every_payment_of_a_version_1_log(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    states = [PaymentState.PENDING, PaymentState.COMMITTED, PaymentState.ABORTED]
    written = [record(n, states[n % 3], settled=n % 2 == 0) for n in range(50)]
    conn = await connect(path)
    assert await migrate(conn, MIGRATIONS[:1]) == 1
    marks = ", ".join("?" * 17)
    rows = [
        (
            r.customer_id,
            r.idempotency_key,
            r.transfer_id,
            r.fingerprint,
            str(r.state),
            r.from_bank,
            r.from_account,
            r.to_bank,
            r.to_account,
            r.amount_minor,
            r.currency,
            r.description,
            r.abort_reason,
            int(r.abort_transient),
            int(r.settled),
            r.created_at_ms,
            r.updated_at_ms,
        )
        for r in written
    ]
    await conn.run(
        lambda raw: raw.executemany(f"INSERT INTO payments ({_COLUMNS_V1}) VALUES ({marks})", rows)
    )
    await conn.close()

    store = await GatewayStore.open(path)
    try:
        for r in written:
            assert store.by_transfer(r.transfer_id) == r
        unsettled = await store.unsettled()
        assert [u.transfer_id for u in unsettled] == [
            r.transfer_id for r in written if not r.settled
        ]
        # The log still refuses a second record for one transfer id.
        duplicate = replace(written[0], amount_minor=999_999, created_at_ms=0)
        await store.insert_pending(duplicate)
        assert store.by_transfer(duplicate.transfer_id) == written[0]
    finally:
        await store.close()
