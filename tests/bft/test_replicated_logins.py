"""Failed logins at a replicated bank, through real replica processes: the plain
bank's limit per username holds across gateways, since every attempt is counted
in the agreed order; every honest replica holds the same count; and a lying
replica can neither lock a username nor unlock one."""

from __future__ import annotations

from pathlib import Path

import grpc

from strife.bank.service import LOGIN_FAILURES_PER_USERNAME, LOGIN_WINDOW_S
from strife.bft.bank_client import ReplicatedBank
from strife.bft.bank_machine import operation
from strife.errors import Reason, from_rpc_error
from strife.v1 import bank_pb2

from ..conftest import Pki
from .replicated import BANK, replica_group
from .test_replicated_bank import CALL_S, settle_states


async def log_in(bank: ReplicatedBank, username: str, password: str) -> str:
    """The customer id; or the refusal's reason (status code checked against it)."""
    try:
        reply = await bank.AuthenticateCustomer(
            bank_pb2.AuthenticateCustomerRequest(bank=BANK, username=username, password=password),
            timeout=CALL_S,
        )
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        if error.reason == Reason.LOGIN_THROTTLED:
            assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.retry_after_s is not None
            assert 0 < error.retry_after_s <= LOGIN_WINDOW_S
        else:
            assert (exc.code(), error.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.INVALID_CREDENTIALS,
            )
        return str(error.reason)
    return reply.customer_id


async def guess_through_both(gw1: ReplicatedBank, gw2: ReplicatedBank, username: str) -> None:
    """The limit of wrong passwords, alternating gateways: each refused as wrong,
    the next one (through either gateway) throttled, and so is the right one."""
    gateways = (gw1, gw2)
    for k in range(LOGIN_FAILURES_PER_USERNAME):
        assert await log_in(gateways[k % 2], username, f"guess-{k}") == Reason.INVALID_CREDENTIALS
    assert await log_in(gw2, username, "guess-x") == Reason.LOGIN_THROTTLED
    assert await log_in(gw1, username, "guess-y") == Reason.LOGIN_THROTTLED
    assert await log_in(gw1, username, f"pw-{username}") == Reason.LOGIN_THROTTLED


async def test_failed_logins_count_across_gateways_at_every_replica(
    pki: Pki, tmp_path: Path
) -> None:
    with replica_group(pki, tmp_path / "group") as group:
        async with (
            group.pool() as pool1,
            group.pool("gateway", "gw-2") as pool2,
            group.pool("admin", "tester") as admin,
        ):
            gw1, gw2 = group.bank(pool1), group.bank(pool2, "gateway/gw-2")
            # A right password clears the count: four wrong, a right one, four wrong again.
            for k in range(LOGIN_FAILURES_PER_USERNAME - 1):
                assert await log_in((gw1, gw2)[k % 2], "ben", "no") == Reason.INVALID_CREDENTIALS
            assert await log_in(gw2, "ben", "pw-ben") == "c-ben"
            for k in range(LOGIN_FAILURES_PER_USERNAME - 1):
                assert await log_in((gw1, gw2)[k % 2], "ben", "no") == Reason.INVALID_CREDENTIALS
            await guess_through_both(gw1, gw2, "ann")
            # Names that do not exist are held alike: a refusal tells no one a name exists.
            await guess_through_both(gw1, gw2, "nobody")
            assert await log_in(gw2, "cat", "pw-cat") == "c-cat"
            # Every replica counted the same attempts: their states hash alike.
            await settle_states(group, admin, [0, 1, 2, 3])


async def test_a_lying_replica_neither_locks_nor_unlocks_a_username(
    pki: Pki, tmp_path: Path
) -> None:
    with replica_group(pki, tmp_path / "group", byzantine={1: "wrong-results"}) as group:
        async with (
            group.pool() as pool1,
            group.pool("gateway", "gw-2") as pool2,
            group.pool("admin", "tester") as admin,
        ):
            gw1, gw2 = group.bank(pool1), group.bank(pool2, "gateway/gw-2")
            # Its answers (a wrong record, a wrong count) never find a second voucher.
            assert await log_in(gw1, "cat", "pw-cat") == "c-cat"
            assert await log_in(gw2, "ben", "pw-ben") == "c-ben"
            await guess_through_both(gw1, gw2, "ann")
            assert await log_in(gw2, "ben", "pw-ben") == "c-ben"
            await settle_states(group, admin, [0, 2, 3])
            # It did answer the throttle's operations, and was outvoted each time.
            survey = await gw1.invoker.survey(operation("login-ok", username="cat"), CALL_S)
            assert (survey.result, survey.dissenters) == (b'{"attempts":0}', (1,))
