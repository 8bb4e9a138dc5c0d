"""Private CA and mTLS identities for a Strife deployment.

Every process proves who it is with a leaf certificate whose URI SAN is a SPIFFE
id (``spiffe://<trust-domain>/<role>/<name>``); authorization reads the role from
that SAN, so this module is the only place that decides what a certificate says.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_SERVICE_HOSTS",
    "DEFAULT_TRUST_DOMAIN",
    "IDENTITY_TLD",
    "ORGANIZATION",
    "ROLES",
    "SERVICE_ROLES",
    "TLS_CERT",
    "TLS_KEY",
    "Authority",
    "Issued",
    "SpiffeId",
    "cert_from_pem",
    "cert_to_pem",
    "create_ca",
    "dev",
    "identity_host",
    "issue",
    "key_from_pem",
    "key_to_pem",
    "load_ca",
    "load_identity",
    "missing_identity_hosts",
    "parse_spiffe_id",
    "role_host",
    "spiffe_id",
    "spiffe_id_of",
    "trust_domain_of",
    "write_ca",
    "write_identity",
]

DEFAULT_TRUST_DOMAIN = "strife.local"
ROLES = ("gateway", "bank", "balancer", "client", "admin")
SERVICE_ROLES = ("gateway", "bank", "balancer")
DEFAULT_SERVICE_HOSTS = ("localhost", "127.0.0.1")
ORGANIZATION = "Strife"

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

CLOCK_SKEW = dt.timedelta(minutes=5)

# Service certificates also carry DNS names derived from their identity, under
# this label, so that a caller's ordinary TLS host-name check verifies whom it
# reached (docs/security.md). No real host is ever named under it.
IDENTITY_TLD = "strife"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# SPIFFE restricts trust domains to lowercase letters, digits, '.', '-' and '_'.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]{1,255}")
_SPIFFE_SCHEME = "spiffe://"

SigningKey = CertificateIssuerPrivateKeyTypes
_SIGNING_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


# --------------------------------------------------------------------------- ids


class SpiffeId(NamedTuple):
    trust_domain: str
    role: str
    name: str

    def __str__(self) -> str:
        return f"{_SPIFFE_SCHEME}{self.trust_domain}/{self.role}/{self.name}"


def _check_trust_domain(trust_domain: str) -> None:
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise ValueError(
            f"invalid trust domain {trust_domain!r}: use lowercase letters, digits, '.', '-', '_'"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid name {name!r}: 1-63 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )


def spiffe_id(trust_domain: str, role: str, name: str) -> str:
    """Build the identity string authorization keys on, rejecting anything ambiguous."""
    _check_trust_domain(trust_domain)
    _check_role(role)
    _check_name(name)
    return str(SpiffeId(trust_domain, role, name))


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Split a SPIFFE id, applying the same rules that :func:`spiffe_id` enforces."""
    if not uri.startswith(_SPIFFE_SCHEME):
        raise ValueError(f"not a SPIFFE id: {uri!r}")
    parts = uri[len(_SPIFFE_SCHEME) :].split("/")
    if len(parts) != 3:
        raise ValueError(f"SPIFFE id must be spiffe://<trust-domain>/<role>/<name>: {uri!r}")
    spiffe_id(*parts)
    return SpiffeId(*parts)


def identity_host(trust_domain: str, role: str, name: str) -> str:
    """`<name>.<role>.<trust-domain>.strife`: the host name a caller checks to
    reach exactly this identity (or, on a bank host, a bank it serves)."""
    spiffe_id(trust_domain, role, name)
    return f"{name}.{role}.{trust_domain}.{IDENTITY_TLD}"


def role_host(trust_domain: str, role: str) -> str:
    """`<role>.<trust-domain>.strife`: the host name a caller checks to reach any
    instance of `role`, when it does not know which one (a client's gateway)."""
    _check_trust_domain(trust_domain)
    _check_role(role)
    return f"{role}.{trust_domain}.{IDENTITY_TLD}"


def _identity_hosts(trust_domain: str, role: str, name: str, serves: Iterable[str]) -> list[str]:
    if role not in SERVICE_ROLES:
        return []
    named = [name, *(bank for bank in serves if bank != name)]
    return [role_host(trust_domain, role), *(identity_host(trust_domain, role, n) for n in named)]


def _is_reserved_host(host: str, trust_domain: str) -> bool:
    """Host SANs may not reach into the identity names, wildcards included."""
    suffix = f"{trust_domain}.{IDENTITY_TLD}"
    folded = host.lower().rstrip(".")
    return folded == suffix or folded.endswith("." + suffix)


def missing_identity_hosts(cert: x509.Certificate, serves: Iterable[str] = ()) -> list[str]:
    """The identity host names a service certificate should carry and does not
    (all of them for one made by an older strife-certs); [] for client/admin."""
    uri = spiffe_id_of(cert)
    if uri is None:
        return []
    try:
        ident = parse_spiffe_id(uri)
    except ValueError:
        return []
    expected = _identity_hosts(ident.trust_domain, ident.role, ident.name, serves)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        present = {str(v).lower() for v in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        present = set()
    return [host for host in expected if host.lower() not in present]


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The certificate's SPIFFE URI SAN, or None when it carries none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return next((uri for uri in uris if uri.startswith(_SPIFFE_SCHEME)), None)


def trust_domain_of(cert: x509.Certificate) -> str | None:
    """Trust domain a CA (or leaf) declares, so issuing can refuse a mismatch."""
    uri = spiffe_id_of(cert)
    if uri is None:
        return None
    return uri[len(_SPIFFE_SCHEME) :].split("/", 1)[0] or None


# --------------------------------------------------------------------------- PEM


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def key_to_pem(key: SigningKey) -> bytes:
    """Unencrypted PKCS#8: what gRPC and openssl both read without a passphrase prompt."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(data: bytes) -> SigningKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, _SIGNING_KEY_TYPES):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def _public_der(key: SigningKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_pair(key: SigningKey, cert: x509.Certificate, where: Path) -> None:
    if _public_der(key) != _public_der(cert):
        raise ValueError(f"{where}: private key does not match the certificate")


# --------------------------------------------------------------------------- files


def _ensure_dir(directory: Path) -> None:
    """Create private folders 0700; leave the mode of an existing folder to its owner."""
    if directory.is_dir():
        return
    directory.mkdir(mode=0o700, parents=True)
    directory.chmod(0o700)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace atomically so a key never exists, even briefly, with looser permissions."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            tmp.chmod(mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- time


def _utc(value: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC, matching what ends up in the certificate."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _validity(
    days: int, not_before: dt.datetime | None, not_after: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    """Backdate by the clock skew; an explicit past ``not_after`` drags the start along."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    now = dt.datetime.now(dt.UTC)
    lifetime = dt.timedelta(days=days)
    end = None if not_after is None else _utc(not_after)
    if not_before is not None:
        start = _utc(not_before)
    elif end is not None and end <= now - CLOCK_SKEW:
        start = end - lifetime
    else:
        start = now - CLOCK_SKEW
    if end is None:
        end = (now if not_before is None else start) + lifetime
    if end <= start:
        raise ValueError(f"not_after ({end.isoformat()}) must be after not_before")
    return start, end


def _hash_for(key: SigningKey) -> hashes.SHA256 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


# --------------------------------------------------------------------------- CA


@dataclass(frozen=True)
class Authority:
    """The deployment's private CA; whoever holds ``key`` can mint any identity."""

    key: SigningKey
    cert: x509.Certificate

    @property
    def trust_domain(self) -> str | None:
        return trust_domain_of(self.cert)


def create_ca(
    *,
    common_name: str = "Strife Private CA",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    days: int = 3650,
) -> Authority:
    """A CA that may sign leaves only (path length 0) and names its trust domain."""
    _check_trust_domain(trust_domain)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, None, None)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"{_SPIFFE_SCHEME}{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(key=key, cert=cert)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def write_ca(authority: Authority, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``ca.crt`` (0644, shared with everyone) and ``ca.key`` (0600, kept offline)."""
    folder = Path(directory)
    _ensure_dir(folder)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    _write_file(key_path, key_to_pem(authority.key), 0o600)
    _write_file(cert_path, cert_to_pem(authority.cert), 0o644)
    return cert_path, key_path


def load_ca(directory: str | os.PathLike[str]) -> Authority:
    """Load a CA written by :func:`write_ca` or by the openssl recipe in certs/README.md."""
    folder = Path(directory)
    cert = cert_from_pem((folder / CA_CERT).read_bytes())
    key = key_from_pem((folder / CA_KEY).read_bytes())
    _check_pair(key, cert, folder)
    if not _is_ca(cert):
        raise ValueError(f"{folder / CA_CERT}: certificate is not a CA (BasicConstraints ca=False)")
    return Authority(key=key, cert=cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


# --------------------------------------------------------------------------- leaves


@dataclass(frozen=True)
class Issued:
    """A process identity: its private key and the CA-signed certificate naming it."""

    key: SigningKey
    cert: x509.Certificate

    @property
    def spiffe_id(self) -> str | None:
        return spiffe_id_of(self.cert)


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """IP literals must be IP SANs: TLS clients never match an IP against a DNS SAN."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts):
        if not host:
            raise ValueError("empty host name")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _extended_key_usage(role: str) -> x509.ExtendedKeyUsage:
    """Services both serve and dial peers; clients and admins only dial."""
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role in SERVICE_ROLES:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    return x509.ExtendedKeyUsage(usages)


def _authority_key_id(ca: Authority) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue(
    ca: Authority,
    *,
    role: str,
    name: str,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    hosts: Sequence[str] | None = None,
    days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    serves: Sequence[str] = (),
) -> Issued:
    """Sign a leaf for ``role``/``name``.

    ``hosts=None`` means localhost and 127.0.0.1 for service roles and no host SANs
    for client/admin, which never accept connections. ``not_before``/``not_after``
    override ``days`` so callers can mint already-expired certificates.

    Service roles also get their identity host names (:func:`identity_host`,
    :func:`role_host`); a bank host serving several banks names them in
    ``serves``, so that a gateway dialing bank ``alpha`` accepts it.
    """
    identity = spiffe_id(trust_domain, role, name)
    if serves and role != "bank":
        raise ValueError("only a bank host serves banks (serves= with role bank)")
    for bank in serves:
        _check_name(bank)
    ca_domain = ca.trust_domain
    if ca_domain is not None and ca_domain != trust_domain:
        raise ValueError(f"CA belongs to trust domain {ca_domain!r}, not {trust_domain!r}")
    if hosts is None:
        hosts = DEFAULT_SERVICE_HOSTS if role in SERVICE_ROLES else ()
    reserved = [h for h in hosts if _is_reserved_host(h.strip(), trust_domain)]
    if reserved:
        raise ValueError(
            f"host {reserved[0]!r} is under .{trust_domain}.{IDENTITY_TLD}, "
            "where Strife puts the names derived from identities"
        )
    start, end = _validity(days, not_before, not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    san = [
        *_general_names([*hosts, *_identity_hosts(trust_domain, role, name, serves)]),
        x509.UniformResourceIdentifier(identity),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(_extended_key_usage(role), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
        .sign(ca.key, _hash_for(ca.key))
    )
    return Issued(key=key, cert=cert)


# --------------------------------------------------------------------------- identity folders


def write_identity(
    directory: str | os.PathLike[str], ca_cert: x509.Certificate, issued: Issued
) -> Path:
    """Write the ``--certs DIR`` layout every Strife process reads: ca.crt, tls.crt, tls.key."""
    folder = Path(directory)
    _ensure_dir(folder)
    _write_file(folder / TLS_KEY, key_to_pem(issued.key), 0o600)
    _write_file(folder / TLS_CERT, cert_to_pem(issued.cert), 0o644)
    _write_file(folder / CA_CERT, cert_to_pem(ca_cert), 0o644)
    return folder


def load_identity(directory: str | os.PathLike[str]) -> tuple[x509.Certificate, Issued]:
    """Read an identity folder back as (trusted CA certificate, own identity)."""
    folder = Path(directory)
    ca_cert = cert_from_pem((folder / CA_CERT).read_bytes())
    cert = cert_from_pem((folder / TLS_CERT).read_bytes())
    key = key_from_pem((folder / TLS_KEY).read_bytes())
    _check_pair(key, cert, folder)
    return ca_cert, Issued(key=key, cert=cert)


# --------------------------------------------------------------------------- dev cluster


class _Planned(NamedTuple):
    label: str
    role: str
    name: str


def _dev_plan(
    banks: Iterable[str], gateways: Iterable[str], clients: Iterable[str]
) -> list[_Planned]:
    plan = [_Planned("balancer", "balancer", "balancer")]
    plan += [_Planned(f"bank-{n}", "bank", n) for n in dict.fromkeys(banks)]
    plan += [_Planned(f"gateway-{n}", "gateway", n) for n in dict.fromkeys(gateways)]
    plan += [_Planned(f"client-{n}", "client", n) for n in dict.fromkeys(clients)]
    plan.append(_Planned("admin", "admin", "admin"))
    return plan


def _dev_authority(ca_dir: Path, trust_domain: str, force: bool) -> Authority:
    """Reuse the CA unless forced: replacing it silently would orphan every issued identity."""
    exists = (ca_dir / CA_CERT).exists() or (ca_dir / CA_KEY).exists()
    if exists and not force:
        ca = load_ca(ca_dir)
        if ca.trust_domain not in (None, trust_domain):
            raise ValueError(
                f"{ca_dir} holds a CA for trust domain {ca.trust_domain!r}, not {trust_domain!r}; "
                "force (strife-certs dev --force) replaces it"
            )
        return ca
    ca = create_ca(trust_domain=trust_domain)
    write_ca(ca, ca_dir)
    return ca


def _identity_is_current(
    folder: Path, ca: Authority, expected_id: str, serves: Sequence[str] = ()
) -> bool:
    """An identity is reusable only if it still chains to this CA, names the same
    peer and carries every identity host name (older ones are re-issued)."""
    try:
        ca_cert, issued = load_identity(folder)
        issued.cert.verify_directly_issued_by(ca.cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    now = dt.datetime.now(dt.UTC)
    in_validity = issued.cert.not_valid_before_utc <= now < issued.cert.not_valid_after_utc
    return (
        ca_cert == ca.cert
        and in_validity
        and spiffe_id_of(issued.cert) == expected_id
        and not missing_identity_hosts(issued.cert, serves)
    )


def dev(
    out_dir: str | os.PathLike[str],
    *,
    banks: Iterable[str] = ("alpha", "beta", "gamma"),
    gateways: Iterable[str] = ("gw-1", "gw-2"),
    clients: Iterable[str] = ("default",),
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    hosts: Sequence[str] | None = None,
    force: bool = False,
    serves: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Path]:
    """Everything a local cluster needs, idempotently: rerunning keeps what is still valid.

    Writes ``out/ca/`` plus one identity folder per process (``balancer``,
    ``bank-<name>``, ``gateway-<name>``, ``client-<name>``, ``admin``) and returns
    them keyed by that label. ``hosts`` applies to service identities only;
    ``serves`` maps a bank host's name (one of ``banks``) to the banks it serves.
    """
    serves = serves or {}
    out = Path(out_dir)
    plan = _dev_plan(banks, gateways, clients)
    ids = {p.label: spiffe_id(trust_domain, p.role, p.name) for p in plan}
    ca = _dev_authority(out / "ca", trust_domain, force)
    folders: dict[str, Path] = {}
    for p in plan:
        folder = out / p.label
        served = tuple(serves.get(p.name, ())) if p.role == "bank" else ()
        if force or not _identity_is_current(folder, ca, ids[p.label], served):
            role_hosts = hosts if p.role in SERVICE_ROLES else None
            leaf = issue(
                ca,
                role=p.role,
                name=p.name,
                trust_domain=trust_domain,
                hosts=role_hosts,
                serves=served,
            )
            write_identity(folder, ca.cert, leaf)
        folders[p.label] = folder
    return folders
