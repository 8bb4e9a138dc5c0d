"""The gateway's reads and logins name their bank: one server may host several.

The servicer is called directly with a fake bank server that records what it
was sent; nothing else of the gateway is needed for these calls.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.errors import AnyContext
from strife.gateway.service import GatewayServicer
from strife.gateway.throttle import LoginThrottle
from strife.gateway.tokens import Claims, TokenAuthority
from strife.observability import context as request_context
from strife.v1 import bank_pb2, gateway_pb2, money_pb2


class RecordingBank:
    """A server hosting alpha and beta; keeps every request it is sent."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def AuthenticateCustomer(self, request: Any, **_call: Any) -> Any:
        self.requests.append(request)
        ref = money_pb2.AccountRef(bank=request.bank, account_id="cy-usd")
        return bank_pb2.AuthenticateCustomerResponse(
            customer_id="c-cy", accounts=[money_pb2.Account(ref=ref, currency="USD")]
        )

    async def GetAccountBalance(self, request: Any, **_call: Any) -> Any:
        self.requests.append(request)
        return bank_pb2.GetAccountBalanceResponse()

    async def GetTransactionHistory(self, request: Any, **_call: Any) -> Any:
        self.requests.append(request)
        return bank_pb2.BankHistoryResponse()


class SharedServer:
    """`Banks` with alpha and beta behind one address."""

    def __init__(self, server: RecordingBank) -> None:
        self.server = server

    async def stub(self, bank: str) -> Any:
        return self.server if bank in ("alpha", "beta") else None


class Coordinator:
    """The coordinator's part the reads use: stubs (behind its breakers) and
    the wait for its own deliveries."""

    config = SimpleNamespace(decision_timeout_s=1.0)

    def __init__(self, banks: SharedServer) -> None:
        self.banks = banks

    async def stub(self, bank: str) -> Any:
        return await self.banks.stub(bank)

    async def delivered(self, bank: str, account_id: str, timeout_s: float) -> bool:
        return True


def servicer(server: RecordingBank) -> GatewayServicer:
    banks = SharedServer(server)
    # Fakes with only what the reads and Login call (this servicer never pays).
    return GatewayServicer(
        store=None,  # type: ignore[arg-type]
        coordinator=Coordinator(banks),  # type: ignore[arg-type]
        banks=banks,  # type: ignore[arg-type]
        tokens=TokenAuthority(Ed25519PrivateKey.generate()),
        throttle=LoginThrottle(),
    )


def as_customer(accounts: set[str]) -> None:
    claims = Claims("c-cy", "beta", frozenset(accounts), time.time() + 60)
    request_context.begin(request_context.RequestInfo("r-1", "test", principal=claims))


async def test_login_and_reads_name_the_bank() -> None:
    server = RecordingBank()
    gateway = servicer(server)
    # The one method of the server context these handlers read (the rest abort only on error).
    context = cast(AnyContext, SimpleNamespace(peer=lambda: "ipv4:127.0.0.1:5555"))

    login = await gateway.Login(
        gateway_pb2.LoginRequest(username="cy", password="pw-cy", bank="beta"), context
    )
    assert login.customer_id == "c-cy"
    as_customer({"beta/cy-usd"})
    account = money_pb2.AccountRef(bank="beta", account_id="cy-usd")
    await gateway.GetBalance(gateway_pb2.GetBalanceRequest(account=account), context)
    await gateway.GetTransactionHistory(
        gateway_pb2.GetTransactionHistoryRequest(account=account, page_size=5), context
    )

    assert [(type(r).__name__, r.bank) for r in server.requests] == [
        ("AuthenticateCustomerRequest", "beta"),
        ("GetAccountBalanceRequest", "beta"),
        ("BankHistoryRequest", "beta"),
    ]
    assert [r.account_id for r in server.requests[1:]] == ["cy-usd", "cy-usd"]
