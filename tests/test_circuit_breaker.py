"""Circuit breakers with real processes: a frozen bank costs a timeout only until
its circuit opens; then payments to it, and reads through it, fail fast; after
it resumes, a half-open probe closes the circuit and payments commit again.

A frozen bank (SIGSTOP) is the hard case: its port accepts and open connections
stay open, so every call to it on the gateway's open connection waits for its
deadline.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import grpc

from strife.errors import from_rpc_error
from strife.rpc.channels import ChannelPool
from strife.v1 import gateway_pb2

from .cluster_fixtures import Cluster, Customer, cluster
from .conftest import Pki
from .support import until

ADA, CY = ("alpha", "ada-usd"), ("beta", "cy-usd")
PREPARE_TIMEOUT_S = 1.0
FAST_S = 0.3 * PREPARE_TIMEOUT_S  # "well under the prepare timeout", with slack for CI
DEADLINE_S = 30.0


def events(c: Cluster, name: str) -> list[dict[str, object]]:
    return [e for e in c.gateways["gw-1"].log_events() if e.get("event") == name]


async def test_frozen_bank_fails_fast_once_open_and_recovers(pki: Pki, tmp_path: Path) -> None:
    extra = ["--prepare-timeout", str(PREPARE_TIMEOUT_S)]
    with cluster(pki, tmp_path, gateway_extra=extra) as c:
        async with ChannelPool(pki.identity("client", "default")) as pool:
            ada = Customer(pool, c.gateways["gw-1"].address)
            await ada.login("ada")
            cy = Customer(pool, c.gateways["gw-1"].address)
            # The gateway's connection to beta is up before beta freezes: a call
            # on it then waits for its deadline (a connection not yet made fails
            # at once, with or without a breaker).
            warm = await ada.pay(str(uuid.uuid4()), ADA, CY, 1)
            assert warm.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
            c.banks["beta"].signal(signal.SIGSTOP)
            try:
                took: list[float] = []
                for _ in range(10):
                    started = time.monotonic()
                    reply = await ada.pay(str(uuid.uuid4()), ADA, CY, 100)
                    took.append(time.monotonic() - started)
                    # Not a fabricated outcome: the payer's YES is ours, so the
                    # abort is a promise we may make (the credit never prepared).
                    assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_ABORTED
                    assert reply.payment.abort_reason in {"PREPARE_TIMEOUT", "BANK_UNAVAILABLE"}
                    assert reply.payment.abort_transient
                assert took[-1] < FAST_S, f"10th payment took {took[-1]:.3f} s: {took}"
                assert len(events(c, "circuit_open")) == 1
                assert reply.payment.abort_reason == "BANK_UNAVAILABLE"

                # A read through the frozen bank fails fast too, saying when to retry.
                started = time.monotonic()
                try:
                    await cy.login("cy", bank="beta")
                except grpc.aio.AioRpcError as exc:
                    error = from_rpc_error(exc)
                else:
                    raise AssertionError("logged in through a frozen bank")
                assert time.monotonic() - started < FAST_S
                assert error.code is grpc.StatusCode.UNAVAILABLE
                assert error.reason == "BANK_UNAVAILABLE"
                assert error.retry_after_s is not None and error.retry_after_s <= 10.0
            finally:
                c.banks["beta"].signal(signal.SIGCONT)

            # A half-open probe (a payment's prepare, or the settler's abort)
            # finds beta answering and closes the circuit; payments commit again.
            async def commits() -> bool:
                reply = await ada.pay(str(uuid.uuid4()), ADA, CY, 1)
                return reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED

            await until(commits, "a payment to commit after beta resumed", within_s=DEADLINE_S)
            assert events(c, "circuit_closed")
            await cy.login("cy", bank="beta")

            async def released() -> bool:  # every abort reached alpha: no hold left
                return (await ada.balance(*ADA))[1] == 0

            await until(released, "alpha's holds to be released", within_s=DEADLINE_S)
