"""Callers verify whom they reached: every channel names the identity it must reach.

A service certificate carries host names derived from its SPIFFE id
(`<name>.<role>.<trust-domain>.strife`, and `<role>.<trust-domain>.strife`); a
channel checks one of them in the TLS handshake, before any request is sent.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from strife.bank.resolver import Resolver
from strife.errors import Unavailable, from_rpc_error
from strife.rpc.channels import ChannelPool, Peer, health_stub
from strife.security import certs
from strife.security.certs_cli import main as certs_main
from strife.security.tls import TlsMaterial
from strife.v1 import coordinator_pb2, gateway_pb2, gateway_pb2_grpc

from .conftest import Pki
from .processes import BIN
from .support import running_server
from .test_client_support import strife_cli

TIMEOUT_S = 5.0


@asynccontextmanager
async def serving(identity: Path, servicer: Any = None) -> AsyncIterator[str]:
    """A bare server holding `identity`'s certificate: health, and `servicer` as a gateway."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    if servicer is not None:
        gateway_pb2_grpc.add_PaymentGatewayServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", TlsMaterial.load(identity).server_credentials())
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def reaches(pool: ChannelPool, address: str, peer: Peer) -> bool:
    try:
        await health_stub(pool.get(address, peer)).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        assert isinstance(error, Unavailable), error
        assert "older strife-certs" in error.message  # says what may be wrong
        return False
    return True


BANK, GATEWAY, BALANCER = "bank", "gateway", "balancer"
CASES: list[tuple[str, str, tuple[str, ...], Peer, bool]] = [
    (BANK, "alpha", (), Peer(BANK, "alpha"), True),
    (BANK, "alpha", (), Peer(BANK), True),
    (BANK, "alpha", (), Peer(BANK, "beta"), False),
    (BANK, "alpha", (), Peer(GATEWAY), False),
    (BANK, "alpha", (), Peer(GATEWAY, "alpha"), False),
    (BANK, "alpha", (), Peer(BALANCER), False),
    # A host of several banks answers for each bank it serves, and only those.
    (BANK, "east", ("alpha", "beta"), Peer(BANK, "alpha"), True),
    (BANK, "east", ("alpha", "beta"), Peer(BANK, "beta"), True),
    (BANK, "east", ("alpha", "beta"), Peer(BANK, "east"), True),
    (BANK, "east", ("alpha", "beta"), Peer(BANK, "gamma"), False),
    (GATEWAY, "gw-1", (), Peer(GATEWAY), True),
    (GATEWAY, "gw-1", (), Peer(GATEWAY, "gw-1"), True),
    (GATEWAY, "gw-1", (), Peer(GATEWAY, "gw-2"), False),
    (GATEWAY, "gw-1", (), Peer(BANK, "gw-1"), False),
    (BALANCER, "balancer", (), Peer(BALANCER), True),
    (BALANCER, "balancer", (), Peer(GATEWAY), False),
]


@pytest.mark.parametrize(("role", "name", "serves", "peer", "ok"), CASES)
async def test_a_channel_reaches_only_the_peer_it_names(
    pki: Pki, role: str, name: str, serves: tuple[str, ...], peer: Peer, ok: bool
) -> None:
    async with (
        serving(pki.identity(role, name, serves)) as address,
        ChannelPool(pki.identity(GATEWAY, "gw-1")) as pool,
    ):
        assert await reaches(pool, address, peer) is ok


async def test_a_pool_default_peer_applies_to_unnamed_channels(pki: Pki) -> None:
    async with (
        serving(pki.identity(BANK, "alpha")) as bank,
        serving(pki.identity(GATEWAY, "gw-1")) as gateway,
        ChannelPool(pki.identity("client", "default"), peer=Peer(GATEWAY)) as pool,
    ):
        assert await reaches(pool, gateway, Peer(GATEWAY))
        with pytest.raises(grpc.aio.AioRpcError):
            await health_stub(pool.get(bank)).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )


async def test_resolver_asks_only_the_coordinator_named_in_the_record(pki: Pki) -> None:
    """A bank in doubt must hear COMMIT/ABORT from that gateway, not another one."""
    async with (
        running_server(pki.identity(GATEWAY, "gw-2")) as impostor,
        running_server(pki.identity(GATEWAY, "gw-1")) as genuine,
        ChannelPool(pki.identity(BANK, "alpha")) as pool,
    ):
        addresses = {"gw-1": impostor.address}

        async def lookup(name: str) -> str | None:
            return addresses.get(name)

        resolver = Resolver(cast(Any, None), pool, lookup, rpc_timeout_s=TIMEOUT_S)
        transfer = cast(Any, SimpleNamespace(transfer_id="c-1", coordinator="gw-1"))
        assert await resolver._ask(transfer) is None
        addresses["gw-1"] = genuine.address
        assert await resolver._ask(transfer) == coordinator_pb2.DECISION_COMMIT


# ---------------------------------------------------------------- strife login


class CountingGateway(gateway_pb2_grpc.PaymentGatewayServicer):
    """Login only: the other methods answer UNIMPLEMENTED, as the generated base does
    (hence the `type: ignore[abstract]` where it is made)."""

    def __init__(self) -> None:
        self.logins: list[str] = []

    async def Login(
        self,
        request: gateway_pb2.LoginRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.LoginRequest, gateway_pb2.LoginResponse],
    ) -> gateway_pb2.LoginResponse:
        self.logins.append(request.username)
        return gateway_pb2.LoginResponse(
            access_token="t",
            expires_at_unix_ms=int((time.time() + 600) * 1000),
            customer_id="c-ada",
        )


async def login_at(address: str, pki: Pki, home: Path) -> Any:
    args = [
        "login",
        "-u",
        "ada",
        "--bank",
        "alpha",
        "--password-stdin",
        "--gateway",
        address,
        "--certs",
        str(pki.identity("client", "default")),
    ]
    return await asyncio.to_thread(strife_cli, args, home=home, stdin="pw-ada\n")


async def test_strife_login_sends_no_password_to_a_bank_posing_as_a_gateway(
    pki: Pki, tmp_path: Path
) -> None:
    fake = CountingGateway()  # type: ignore[abstract]
    async with serving(pki.identity(BANK, "alpha"), fake) as address:
        result = await login_at(address, pki, tmp_path / "posing")
    assert fake.logins == []
    assert result.returncode != 0
    # The genuine article gets the call, so the above is not a broken test.
    genuine = CountingGateway()  # type: ignore[abstract]
    async with serving(pki.identity(GATEWAY, "gw-1"), genuine) as address:
        await login_at(address, pki, tmp_path / "genuine")
    assert genuine.logins == ["ada"]


# ------------------------------------------------------------------ certificates


def old_identity(pki: Pki, folder: Path, role: str, name: str) -> Path:
    """A certificate as an older strife-certs made it: no identity host names."""
    issued = certs.issue(pki.ca, role=role, name=name)
    sans = [
        san
        for san in issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if not (isinstance(san, x509.DNSName) and san.value.endswith(".strife"))
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(issued.cert.subject)
        .issuer_name(issued.cert.issuer)
        .public_key(issued.key.public_key())
        .serial_number(issued.cert.serial_number)
        .not_valid_before(issued.cert.not_valid_before_utc)
        .not_valid_after(issued.cert.not_valid_after_utc)
    )
    for ext in issued.cert.extensions:
        if isinstance(ext.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        else:
            builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(pki.ca.key, hashes.SHA256())
    certs.write_identity(folder, pki.ca.cert, certs.Issued(key=issued.key, cert=cert))
    return folder


def test_a_server_with_an_old_certificate_says_to_reissue_it(pki: Pki, tmp_path: Path) -> None:
    folder = old_identity(pki, tmp_path / "balancer", "balancer", "balancer")
    assert certs.missing_identity_hosts(certs.load_identity(folder)[1].cert)
    result = subprocess.run(
        [str(BIN / "strife-balancer"), "--certs", str(folder), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "older strife-certs" in result.stderr and "Re-issue" in result.stderr


def test_dev_reissues_identities_without_host_names(tmp_path: Path) -> None:
    folders = certs.dev(tmp_path, banks=("alpha",), gateways=("gw-1",))
    ca = certs.load_ca(tmp_path / "ca")
    pki = Pki(root=tmp_path, ca=ca)
    old_identity(pki, folders["gateway-gw-1"], "gateway", "gw-1")
    certs.dev(tmp_path, banks=("alpha",), gateways=("gw-1",))
    cert = certs.load_identity(folders["gateway-gw-1"])[1].cert
    assert certs.missing_identity_hosts(cert) == []


def test_a_host_certificate_names_the_banks_it_serves(tmp_path: Path) -> None:
    folders = certs.dev(tmp_path, banks=("alpha", "beta", "east"), serves={"east": ["alpha"]})
    east = certs.load_identity(folders["bank-east"])[1].cert
    assert certs.missing_identity_hosts(east, ["alpha"]) == []
    assert certs.missing_identity_hosts(east, ["alpha", "beta"]) == [
        "beta.bank.strife.local.strife"
    ]
    result = CliRunner().invoke(
        certs_main,
        [
            "issue",
            "--ca",
            str(tmp_path / "ca"),
            "--role",
            "bank",
            "--name",
            "west",
            "--serves",
            "beta,gamma",
            "--out",
            str(tmp_path / "west"),
        ],
    )
    assert result.exit_code == 0, result.output
    west = certs.load_identity(tmp_path / "west")[1].cert
    assert certs.missing_identity_hosts(west, ["beta", "gamma"]) == []


@pytest.mark.parametrize(
    "host", ["alpha.bank.strife.local.strife", "*.bank.strife.local.strife", "STRIFE.local.strife"]
)
def test_identity_host_names_cannot_be_claimed_as_hosts(pki: Pki, host: str) -> None:
    with pytest.raises(ValueError, match="identities"):
        certs.issue(pki.ca, role="gateway", name="gw-1", hosts=["localhost", host])
