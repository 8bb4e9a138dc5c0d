"""The attack suite's world: one cluster of real processes (a balancer, banks alpha
and beta, gateways gw-1 and gw-2, all registered at the balancer), identities an
attacker might hold, and a snapshot of everything an attack must not change."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strife.rpc.channels import ChannelPool
from strife.security import certs
from strife.security.tls import TlsMaterial
from strife.v1 import (
    balancer_pb2,
    balancer_pb2_grpc,
    bank_pb2,
    bank_pb2_grpc,
    coordinator_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

from .. import bank_fixtures
from ..cluster_fixtures import Cluster, cluster, free_port
from ..conftest import Pki
from ..processes import ServiceProcess

TIMEOUT_S = 5.0
TRUST_DOMAIN = certs.DEFAULT_TRUST_DOMAIN

# Users of their own, so throttling one never reaches another case (password pw-<name>).
EXTRA_USERS = [
    ("alpha", "c-victim", "victim"),
    ("alpha", "c-crowd", "crowd"),
    ("beta", "c-split", "split"),
]
PASSWORDS = {
    **{row[2]: row[4] for row in bank_fixtures.SEED},
    **{user: f"pw-{user}" for _, _, user in EXTRA_USERS},
}
ACCOUNTS = [(row[0], row[5]) for row in bank_fixtures.SEED] + [
    (bank, f"{customer}-usd") for bank, customer, _ in EXTRA_USERS
]
HOME_BANK = {row[2]: row[0] for row in bank_fixtures.SEED} | {
    user: bank for bank, _, user in EXTRA_USERS
}


@dataclass
class World:
    """What every case shares: the running processes and their identities."""

    pki: Pki
    root: Path
    cluster: Cluster
    balancer: ServiceProcess
    tokens: dict[str, str] = field(default_factory=dict)
    forged: dict[str, Path] = field(default_factory=dict)

    def gateway(self, name: str = "gw-1") -> str:
        return self.cluster.gateways[name].address

    def bank(self, name: str = "alpha") -> str:
        return self.cluster.banks[name].address

    def identity(self, role: str, name: str) -> Path:
        return self.pki.identity(role, name)

    def log_paths(self) -> list[Path]:
        return sorted(self.root.rglob("*.log"))


@contextmanager
def running_world(pki: Pki, root: Path) -> Iterator[World]:
    rows = [
        (bank, customer, user, user.title(), f"pw-{user}", f"{customer}-usd", "USD", "100.00")
        for bank, customer, user in EXTRA_USERS
    ]
    balancer_address = f"127.0.0.1:{free_port()}"
    with ExitStack() as stack:
        balancer = ServiceProcess(
            "strife-balancer",
            ["--listen", balancer_address, "--certs", str(pki.identity("balancer", "balancer"))],
            root / "balancer.log",
        ).start()
        stack.callback(balancer.stop)
        registered = ["--balancer", balancer_address]
        stack.enter_context(_patched_seed(rows))
        running = stack.enter_context(
            cluster(
                pki,
                root,
                gateways=("gw-1", "gw-2"),
                gateway_extra=registered,
                bank_extra=registered,
            )
        )
        yield World(pki=pki, root=root, cluster=running, balancer=balancer)


@contextmanager
def _patched_seed(rows: Sequence[tuple[str, ...]]) -> Iterator[None]:
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bank_fixtures, "SEED", [*bank_fixtures.SEED, *rows])
        yield


# ------------------------------------------------------------------ a session


@dataclass(frozen=True)
class State:
    """Balances and holds of every seeded account, ledger lines per bank, the registry."""

    accounts: tuple[tuple[str, str, int, int], ...]
    ledger_lines: tuple[tuple[str, int], ...]
    registry: tuple[tuple[str, str, str], ...]


class Session:
    """One test's channels, closed at its end."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._pools: dict[Path, ChannelPool] = {}
        self._raw: list[Any] = []

    def pool(self, identity: Path) -> ChannelPool:
        if identity not in self._pools:
            self._pools[identity] = ChannelPool(identity)
        return self._pools[identity]

    def as_role(self, role: str, name: str) -> ChannelPool:
        return self.pool(self.world.identity(role, name))

    def raw_channel(self, address: str, credentials: Any) -> Any:
        channel = grpc.aio.secure_channel(address, credentials)
        self._raw.append(channel)
        return channel

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        for channel in self._raw:
            await channel.close()

    # --- stubs

    def gateway_stub(self, pool: ChannelPool, gw: str = "gw-1") -> Any:
        return gateway_pb2_grpc.PaymentGatewayStub(pool.get(self.world.gateway(gw)))

    def coordinator_stub(self, pool: ChannelPool, gw: str = "gw-1") -> Any:
        return coordinator_pb2_grpc.CoordinatorStub(pool.get(self.world.gateway(gw)))

    def bank_stub(self, pool: ChannelPool, bank: str = "alpha") -> Any:
        return bank_pb2_grpc.BankServiceStub(pool.get(self.world.bank(bank)))

    def balancer_stub(self, pool: ChannelPool) -> Any:
        return balancer_pb2_grpc.LoadBalancerStub(pool.get(self.world.balancer.address))

    @property
    def client(self) -> ChannelPool:
        return self.as_role("client", "default")

    @property
    def admin(self) -> ChannelPool:
        return self.as_role("admin", "root")

    # --- customers

    async def token(self, user: str) -> str:
        """A genuine access token, from a real login over client/default at gw-1."""
        if user not in self.world.tokens:
            reply = await self.gateway_stub(self.client).Login(
                gateway_pb2.LoginRequest(
                    username=user, password=PASSWORDS[user], bank=HOME_BANK[user]
                ),
                timeout=TIMEOUT_S,
            )
            self.world.tokens[user] = reply.access_token
        return self.world.tokens[user]

    async def auth(self, user: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {await self.token(user)}"),)

    # --- what must not change

    async def snapshot(self) -> State:
        accounts = []
        lines = []
        for bank in ("alpha", "beta"):
            stub = self.bank_stub(self.admin, bank)
            count = 0
            for b, account in ACCOUNTS:
                if b != bank:
                    continue
                reply = await stub.GetAccountBalance(
                    bank_pb2.GetAccountBalanceRequest(account_id=account, bank=bank),
                    timeout=TIMEOUT_S,
                )
                balance = reply.balance
                accounts.append(
                    (bank, account, balance.balance.amount_minor, balance.held.amount_minor)
                )
                count += await self._lines(stub, bank, account)
            lines.append((bank, count))
        registry = []
        stub = self.balancer_stub(self.admin)
        for service in ("bank", "gateway"):
            reply = await stub.ListServers(
                balancer_pb2.ListServersRequest(service=service), timeout=TIMEOUT_S
            )
            registry += [(s.service, s.instance, s.address) for s in reply.servers]
        return State(tuple(accounts), tuple(lines), tuple(sorted(registry)))

    async def _lines(self, stub: Any, bank: str, account: str) -> int:
        count, token = 0, ""
        for _ in range(1000):
            page = await stub.GetTransactionHistory(
                bank_pb2.BankHistoryRequest(
                    account_id=account, bank=bank, page_size=200, page_token=token
                ),
                timeout=TIMEOUT_S,
            )
            count += len(page.entries)
            token = page.next_page_token
            if not token:
                return count
        raise AssertionError(f"{bank}/{account}: history does not end")

    def logins_granted(self) -> int:
        """`rpc` lines of Login calls that ended OK, at every gateway."""
        count = 0
        for process in self.world.cluster.gateways.values():
            for event in process.log_events():
                if str(event.get("method", "")).endswith("/Login") and event.get("code") == "OK":
                    count += 1
        return count


@asynccontextmanager
async def session(world: World) -> AsyncIterator[Session]:
    s = Session(world)
    try:
        yield s
    finally:
        await s.close()


# ------------------------------------------------------------------ certificates


def forged_identity(
    folder: Path,
    trust_ca: x509.Certificate,
    *,
    signer: Any,
    issuer: x509.Name,
    sans: Sequence[x509.GeneralName],
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Path:
    """A client certificate built by hand, trusting our CA so the handshake gets far."""
    if folder.exists():
        return folder
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    certs.write_identity(folder, trust_ca, certs.Issued(key=key, cert=cert))
    return folder


def spiffe(role: str, name: str, domain: str = TRUST_DOMAIN) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(f"spiffe://{domain}/{role}/{name}")


LOCALHOST = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))


def no_certificate_credentials(world: World) -> Any:
    material = TlsMaterial.load(world.identity("client", "default"))
    return grpc.ssl_channel_credentials(root_certificates=material.ca)


Attack = Callable[[Session], Awaitable[object]]
