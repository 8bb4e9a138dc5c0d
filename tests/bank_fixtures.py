"""A seeded strife-bank process and a gateway-identity client for it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from strife.rpc.channels import ChannelPool
from strife.v1 import bank_pb2, bank_pb2_grpc, money_pb2

from .conftest import Pki
from .processes import ServiceProcess

TIMEOUT_S = 5.0

SEED = [
    ("alpha", "c-ada", "ada", "Ada", "pw-ada", "ada-usd", "USD", "1000.00"),
    ("alpha", "c-ada", "ada", "Ada", "pw-ada", "ada-eur", "EUR", "20.00"),
    ("alpha", "c-bob", "bob", "Bob", "pw-bob", "bob-usd", "USD", "50.00"),
    ("alpha", "c-eve", "eve", "Eve", "pw-eve", "eve-usd", "USD", "0"),
    ("beta", "c-cy", "cy", "Cy", "pw-cy", "cy-usd", "USD", "10.00"),
]
COLUMNS = (
    "bank",
    "customer_id",
    "username",
    "display_name",
    "password",
    "account_id",
    "currency",
    "opening_balance",
)


def write_seed(path: Path) -> Path:
    path.write_text(json.dumps([dict(zip(COLUMNS, row, strict=True)) for row in SEED]))
    return path


@contextmanager
def bank_process(
    pki: Pki, tmp: Path, *extra: str, name: str = "alpha", db: Path | None = None
) -> Iterator[ServiceProcess]:
    with _bank_server(pki, tmp, name, ["--db", str(db or tmp / f"{name}.db"), *extra]) as process:
        yield process


@contextmanager
def bank_host_process(
    pki: Pki, tmp: Path, banks: Sequence[str], *extra: str, name: str = "east"
) -> Iterator[ServiceProcess]:
    """One strife-bank process `name` serving `banks`, databases under tmp/data."""
    for bank in banks:  # each bank registers and asks under its own identity
        pki.identity("bank", bank)
    hosted = [arg for bank in banks for arg in ("--bank", bank)]
    with _bank_server(
        pki, tmp, name, [*hosted, "--data-dir", str(tmp / "data"), *extra], serves=banks
    ) as process:
        yield process


@contextmanager
def _bank_server(
    pki: Pki, tmp: Path, name: str, args: Sequence[str], serves: Sequence[str] = ()
) -> Iterator[ServiceProcess]:
    seed = write_seed(tmp / "seed.json")
    process = ServiceProcess(
        "strife-bank",
        [
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--init",
            "--seed",
            str(seed),
            "--certs",
            str(pki.identity("bank", name, serves)),
            "--grace",
            "1",
            *args,
        ],
        tmp / f"{name}.log",
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def usd(amount_minor: int) -> Any:
    return money_pb2.Money(amount_minor=amount_minor, currency="USD")


def new_id() -> str:
    return uuid.uuid4().hex


class BankClient:
    """Calls a bank as gateway `coordinator`, with deadlines on every call.

    `bank` goes into every request: "" (the default) means the server's only bank.
    """

    def __init__(
        self, pool: ChannelPool, address: str, coordinator: str = "gw-1", *, bank: str = ""
    ) -> None:
        self.stub = bank_pb2_grpc.BankServiceStub(pool.get(address))
        self.coordinator = coordinator
        self.bank = bank

    async def prepare(
        self,
        transfer_id: str,
        account: str,
        amount_minor: int,
        *,
        debit: bool = True,
        fingerprint: bytes = b"fp",
        currency: str = "USD",
    ) -> Any:
        return await self.stub.Prepare(
            bank_pb2.PrepareRequest(
                transfer_id=transfer_id,
                coordinator=self.coordinator,
                leg=bank_pb2.LEG_DEBIT if debit else bank_pb2.LEG_CREDIT,
                account_id=account,
                amount=money_pb2.Money(amount_minor=amount_minor, currency=currency),
                fingerprint=fingerprint,
                counterparty="beta/cy-usd",
                bank=self.bank,
            ),
            timeout=TIMEOUT_S,
        )

    async def commit(self, transfer_id: str) -> Any:
        return await self.stub.Commit(
            bank_pb2.CommitRequest(
                transfer_id=transfer_id, coordinator=self.coordinator, bank=self.bank
            ),
            timeout=TIMEOUT_S,
        )

    async def abort(self, transfer_id: str) -> Any:
        return await self.stub.Abort(
            bank_pb2.AbortRequest(
                transfer_id=transfer_id, coordinator=self.coordinator, bank=self.bank
            ),
            timeout=TIMEOUT_S,
        )

    async def balance(self, account: str) -> tuple[int, int, int]:
        reply = await self.stub.GetAccountBalance(
            bank_pb2.GetAccountBalanceRequest(account_id=account, bank=self.bank),
            timeout=TIMEOUT_S,
        )
        b = reply.balance
        return b.balance.amount_minor, b.held.amount_minor, b.available.amount_minor
