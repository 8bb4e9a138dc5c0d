"""Who is calling: the SPIFFE id in the verified peer certificate.

Roles come only from the certificate the TLS handshake verified, never from a
request field, so a client cannot claim to be a gateway.

The identity is read from the certificate itself (gRPC's `x509_pem_cert`),
from its URI SANs only: gRPC's `x509_subject_alternative_name` mixes DNS, IP
and URI names, and some gRPC versions expose no URI-only property, so a
`spiffe://` string in a DNS SAN would otherwise pass for an identity. As in
the SPIFFE X.509-SVID rules, a certificate must carry exactly one URI SAN.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from strife.security.certs import parse_spiffe_id


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    trust_domain: str
    role: str
    name: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.role}/{self.name}"


@dataclass(frozen=True, slots=True)
class VerifiedPeer:
    """What a verified client certificate says: its identity (None when it names
    none of this trust domain) and its RFC 8705 `x5t#S256` thumbprint."""

    identity: PeerIdentity | None
    cert_sha256: str


def cert_thumbprint(der: bytes) -> str:
    """RFC 8705's `x5t#S256`: base64url (no padding) of the SHA-256 of the DER certificate."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def thumbprint_of_pem(pem: bytes) -> str:
    """The `x5t#S256` of a PEM certificate (e.g. an identity folder's tls.crt)."""
    return cert_thumbprint(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))


def identity_of_certificate(cert: x509.Certificate, trust_domain: str) -> PeerIdentity | None:
    """The SPIFFE id of the certificate's one URI SAN, in `trust_domain`; else None.

    DNS, IP and other names are never read; no URI SAN, or more than one, is
    not an identity.
    """
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        return None
    if len(uris) != 1:
        return None
    try:  # the rules strife-certs issues by: a known role, a plain name
        parsed = parse_spiffe_id(uris[0])
    except ValueError:
        return None
    if parsed.trust_domain != trust_domain:
        return None
    return PeerIdentity(*parsed)


def peer_of_pem(pem: bytes, trust_domain: str) -> VerifiedPeer | None:
    """The verified peer a PEM certificate (gRPC's `x509_pem_cert`) describes."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return VerifiedPeer(
        identity=identity_of_certificate(cert, trust_domain),
        cert_sha256=cert_thumbprint(cert.public_bytes(Encoding.DER)),
    )


def peer_certificate(auth_context: Mapping[str, Sequence[bytes]]) -> bytes | None:
    """The PEM of a verified mTLS peer's certificate, or None (no TLS, no certificate)."""
    if auth_context.get("transport_security_type", (b"",))[0] != b"ssl":
        return None
    pems = auth_context.get("x509_pem_cert") or ()
    return pems[0] if len(pems) == 1 else None


def identity_from_auth_context(
    auth_context: Mapping[str, Sequence[bytes]], trust_domain: str
) -> PeerIdentity | None:
    """The single SPIFFE identity of a verified mTLS peer in our trust domain.

    A certificate with no URI SAN, several, or one that is not a SPIFFE id of
    this trust domain is not an identity (a SPIFFE id in a DNS SAN is not one).
    """
    pem = peer_certificate(auth_context)
    peer = None if pem is None else peer_of_pem(pem, trust_domain)
    return None if peer is None else peer.identity
