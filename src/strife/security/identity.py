"""Who is calling: the SPIFFE id in the verified peer certificate.

Roles come only from the certificate the TLS handshake verified, never from a
request field, so a client cannot claim to be a gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ROLES = frozenset({"gateway", "bank", "balancer", "client", "admin"})
SERVICE_ROLES = frozenset({"gateway", "bank", "balancer"})


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    trust_domain: str
    role: str
    name: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.role}/{self.name}"


def parse_spiffe_id(uri: str) -> PeerIdentity | None:
    """`spiffe://domain/role/name` with a known role, else None."""
    if not uri.startswith("spiffe://"):
        return None
    parts = uri[len("spiffe://") :].split("/")
    if len(parts) != 3 or not all(parts) or parts[1] not in ROLES:
        return None
    return PeerIdentity(trust_domain=parts[0], role=parts[1], name=parts[2])


def identity_from_auth_context(
    auth_context: Mapping[str, Sequence[bytes]], trust_domain: str
) -> PeerIdentity | None:
    """The single SPIFFE identity of a verified mTLS peer in our trust domain.

    A certificate with no SPIFFE id, one from another trust domain, or several
    conflicting ids is not an identity.
    """
    if auth_context.get("transport_security_type", [b""])[0] != b"ssl":
        return None
    uris = auth_context.get("x509_uri_subject_alternative_name") or auth_context.get(
        "x509_subject_alternative_name", []
    )
    found = {
        parsed
        for raw in uris
        if (parsed := parse_spiffe_id(raw.decode("utf-8", "replace"))) is not None
    }
    if len(found) != 1:
        return None
    identity = found.pop()
    return identity if identity.trust_domain == trust_domain else None
