"""A peer's identity comes from its certificate's one URI SAN, never from a DNS SAN.

gRPC's `x509_subject_alternative_name` lists DNS, IP and URI names together, and
this gRPC exposes no URI-only property: a certificate from our CA naming
`spiffe://strife.local/admin/root` as a DNS name was accepted as `admin`.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strife.errors import from_rpc_error
from strife.security import certs
from strife.security.identity import (
    PeerIdentity,
    cert_thumbprint,
    identity_from_auth_context,
    thumbprint_of_pem,
)
from strife.v1 import gateway_pb2, gateway_pb2_grpc

from .conftest import Pki
from .support import running_server

ADMIN = "spiffe://strife.local/admin/root"
CLIENT = "spiffe://strife.local/client/x"


def _leaf(pki: Pki, names: Sequence[x509.GeneralName]) -> certs.Issued:
    """A client certificate signed by the test CA with exactly these SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return certs.Issued(key=key, cert=builder.sign(pki.ca.key, hashes.SHA256()))


def _auth_context(issued: certs.Issued) -> dict[str, list[bytes]]:
    """What gRPC's auth_context holds for a verified peer with this certificate."""
    names = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [certs.cert_to_pem(issued.cert)],
        "x509_subject_alternative_name": [str(n.value).encode() for n in names],
    }


CASES = [
    ("a SPIFFE id in a DNS SAN only", [x509.DNSName(ADMIN)], None),
    (
        "in a DNS SAN, next to a URI SAN",
        [x509.DNSName(ADMIN), x509.UniformResourceIdentifier(CLIENT)],
        PeerIdentity("strife.local", "client", "x"),
    ),
    (
        "two URI SANs, one SPIFFE",
        [
            x509.UniformResourceIdentifier(ADMIN),
            x509.UniformResourceIdentifier("https://example.com/"),
        ],
        None,
    ),
    (
        "the same SPIFFE id twice",
        [x509.UniformResourceIdentifier(ADMIN), x509.UniformResourceIdentifier(ADMIN)],
        None,
    ),
    (
        "two SPIFFE ids",
        [x509.UniformResourceIdentifier(ADMIN), x509.UniformResourceIdentifier(CLIENT)],
        None,
    ),
    (
        "another trust domain",
        [x509.UniformResourceIdentifier("spiffe://evil.org/admin/root")],
        None,
    ),
    (
        "one URI SAN",
        [x509.UniformResourceIdentifier(ADMIN)],
        PeerIdentity("strife.local", "admin", "root"),
    ),
    (
        "a name strife-certs never issues",
        [x509.UniformResourceIdentifier("spiffe://strife.local/admin/-root")],
        None,
    ),
]


@pytest.mark.parametrize(("names", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_identity_is_the_one_uri_san(
    pki: Pki, names: list[x509.GeneralName], expected: PeerIdentity | None
) -> None:
    assert identity_from_auth_context(_auth_context(_leaf(pki, names)), "strife.local") == expected


def test_no_certificate_is_no_identity() -> None:
    assert identity_from_auth_context({"transport_security_type": [b"ssl"]}, "strife.local") is None
    assert identity_from_auth_context({}, "strife.local") is None
    bad = {"transport_security_type": [b"ssl"], "x509_pem_cert": [b"not a certificate"]}
    assert identity_from_auth_context(bad, "strife.local") is None


def test_thumbprint_is_rfc_8705_x5t_s256(pki: Pki) -> None:
    issued = _leaf(pki, [x509.UniformResourceIdentifier(ADMIN)])
    der = issued.cert.public_bytes(Encoding.DER)
    expected = issued.cert.fingerprint(hashes.SHA256())
    assert cert_thumbprint(der) == base64.urlsafe_b64encode(expected).decode().rstrip("=")
    assert thumbprint_of_pem(certs.cert_to_pem(issued.cert)) == cert_thumbprint(der)
    assert len(cert_thumbprint(der)) == 43


async def test_a_dns_san_spiffe_id_is_not_admin_on_the_wire(pki: Pki, tmp_path: Path) -> None:
    """The handshake succeeds (our CA signed it); the server names no identity."""
    folder = certs.write_identity(
        tmp_path / "dns-admin", pki.ca.cert, _leaf(pki, [x509.DNSName(ADMIN)])
    )
    credentials = grpc.ssl_channel_credentials(
        (folder / "ca.crt").read_bytes(),
        (folder / "tls.key").read_bytes(),
        (folder / "tls.crt").read_bytes(),
    )
    async with running_server(pki.identity("gateway", "gw-1")) as server:
        channel = grpc.aio.secure_channel(
            server.address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        try:
            stub = gateway_pb2_grpc.PaymentGatewayStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Login(
                    gateway_pb2.LoginRequest(username="u", password="right"), timeout=5
                )
        finally:
            await channel.close()
    error = from_rpc_error(caught.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "PEER_NOT_AUTHENTICATED",
    )
