"""History page tokens are opaque and sealed by the bank; internal errors stay inside.

A token used to be readable base64 of `v1\\n<account>\\n<seq>`: anyone could
forge one, a 40-digit sequence number answered UNKNOWN with Python's
OverflowError text, and a token cut short answered OK with no lines, so a
client walking the history silently stopped early.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from strife.bank.pages import MAX_SEQ, open_page_token, seal_page_token
from strife.errors import from_rpc_error
from strife.rpc.channels import ChannelPool
from strife.v1 import bank_pb2, coordinator_pb2, coordinator_pb2_grpc

from .bank_fixtures import TIMEOUT_S, BankClient, bank_process, new_id
from .conftest import Pki

KEY = bytes(range(32))
ACCOUNT = "eve-usd"


def _forged(account: str, seq: str) -> str:
    return base64.urlsafe_b64encode(f"v1\n{account}\n{seq}".encode()).decode()


# --------------------------------------------------------------------------- pure


def test_a_token_opens_only_for_its_bank_account_and_key() -> None:
    token = seal_page_token(KEY, "alpha", ACCOUNT, 42)
    assert open_page_token(KEY, "alpha", ACCOUNT, token) == 42
    assert open_page_token(KEY, "alpha", "ada-usd", token) is None
    assert open_page_token(KEY, "beta", ACCOUNT, token) is None
    assert open_page_token(os.urandom(32), "alpha", ACCOUNT, token) is None
    # Field boundaries are unambiguous: ("a", "b\0c") is not ("a\0b", "c").
    odd = seal_page_token(KEY, "a", "b\0c", 7)
    assert open_page_token(KEY, "a\0b", "c", odd) is None
    assert open_page_token(KEY, "alpha", ACCOUNT, seal_page_token(KEY, "alpha", ACCOUNT, MAX_SEQ))


def test_a_token_reveals_nothing() -> None:
    token = seal_page_token(KEY, "alpha", ACCOUNT, 123456)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert ACCOUNT.encode() not in raw and b"123456" not in raw
    assert (123456).to_bytes(8, "big") not in raw
    assert token != seal_page_token(KEY, "alpha", ACCOUNT, 123456)  # fresh nonce each time


def test_every_damaged_token_is_refused() -> None:
    token = seal_page_token(KEY, "alpha", ACCOUNT, 42)
    damaged = [
        token[:-4],
        token[:-1],
        token[1:],
        token + "A",
        token + "=",
        token + "==",
        "",
        token[:10] + "é" + token[11:],
        "x" * 10_000,
        token.replace("-", "+").replace("_", "/"),
        _forged(ACCOUNT, "9" * 40),
        _forged(ACCOUNT, "5"),
        "garbage",
    ]
    for i in range(len(token)):  # every character changed
        for replacement in "AQ_-":
            if token[i] != replacement:
                damaged.append(token[:i] + replacement + token[i + 1 :])
    for bad in damaged:
        if bad != token:
            assert open_page_token(KEY, "alpha", ACCOUNT, bad) is None, bad


def test_sequence_numbers_out_of_range_are_not_sealed() -> None:
    for seq in (0, -1, MAX_SEQ + 1, 10**40):
        with pytest.raises(ValueError):
            seal_page_token(KEY, "alpha", ACCOUNT, seq)


# --------------------------------------------------------------------------- wire


@pytest.fixture
async def pool(pki: Pki) -> AsyncIterator[ChannelPool]:
    async with ChannelPool(pki.identity("gateway", "gw-1")) as p:
        yield p


async def _page(client: BankClient, account: str, token: str, size: int = 1) -> Any:
    return await client.stub.GetTransactionHistory(
        bank_pb2.BankHistoryRequest(account_id=account, page_size=size, page_token=token),
        timeout=TIMEOUT_S,
    )


async def _refused(client: BankClient, account: str, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _page(client, account, token)
    error = from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert "Error" not in error.message and "int" not in error.message, error.message


async def test_a_bank_refuses_forged_and_damaged_tokens_and_honours_its_own_after_a_restart(
    pki: Pki, pool: ChannelPool, tmp_path: Path
) -> None:
    db = tmp_path / "alpha.db"
    with bank_process(pki, tmp_path, db=db) as process:
        client = BankClient(pool, process.address)
        for amount in (1, 2, 3):
            tid = new_id()
            await client.prepare(tid, ACCOUNT, amount, debit=False)
            await client.commit(tid)
        first = await _page(client, ACCOUNT, "")
        token = first.next_page_token
        second = await _page(client, ACCOUNT, token)
        assert second.entries and second.next_page_token
        await _refused(client, ACCOUNT, _forged(ACCOUNT, "9" * 40))  # was UNKNOWN, OverflowError
        await _refused(client, ACCOUNT, _forged(ACCOUNT, str(second.entries[0].sequence)))
        await _refused(client, ACCOUNT, token[:-4])  # was OK with no lines
        await _refused(client, "ada-usd", token)  # another account's token
        assert ACCOUNT not in base64.urlsafe_b64decode(token + "==").decode("latin-1")
    # The key is the bank's, in its database: a token outlives a restart.
    with bank_process(pki, tmp_path, db=db) as process:
        client = BankClient(pool, process.address)
        again = await _page(client, ACCOUNT, token)
        assert list(again.entries) == list(second.entries)
        assert again.next_page_token and again.next_page_token != second.next_page_token
        rest = await _page(client, ACCOUNT, second.next_page_token, size=10)
        assert rest.entries and not rest.next_page_token


# --------------------------------------------------------------------------- internal errors


class _Broken(coordinator_pb2_grpc.CoordinatorServicer):
    """A handler failing the way a bug does: an exception no code path expected."""

    async def GetDecision(
        self,
        request: coordinator_pb2.GetDecisionRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.GetDecisionRequest, coordinator_pb2.GetDecisionResponse
        ],
    ) -> coordinator_pb2.GetDecisionResponse:
        raise OverflowError(f"Python int too large to convert: {request.transfer_id}")


async def test_an_unexpected_exception_is_internal_with_a_generic_message(pki: Pki) -> None:
    from strife.rpc.authz import AuthzTable
    from strife.rpc.server import ServerConfig, StrifeServer

    from .support import COORDINATOR

    server = StrifeServer(
        ServerConfig(
            name="broken", listen="127.0.0.1:0", certs=pki.identity("gateway", "gw-1"), grace_s=1
        ),
        AuthzTable({f"/{COORDINATOR}/GetDecision": ["bank"]}),
    )
    server.add_service(
        COORDINATOR,
        lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(_Broken(), s),
    )
    await server.start()
    try:
        async with ChannelPool(pki.identity("bank", "alpha")) as bank_pool:
            stub = coordinator_pb2_grpc.CoordinatorStub(bank_pool.get(server.address))
            for _ in range(2):  # and the server goes on serving
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetDecision(
                        coordinator_pb2.GetDecisionRequest(transfer_id="secret-42"),
                        timeout=TIMEOUT_S,
                    )
                error = from_rpc_error(caught.value)
                assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
                assert error.message == "internal error"
                assert "secret-42" not in str(caught.value.debug_error_string())
    finally:
        await server.stop(1.0)
