"""Certificate tooling: what the certificates say, where they land, and that TLS accepts them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strife.rpc.channels import health_stub
from strife.security import certs
from strife.security.certs_cli import main as cli

UTC = dt.UTC


@pytest.fixture(scope="module")
def ca() -> certs.Authority:
    return certs.create_ca()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _serial(path: Path) -> int:
    return certs.cert_from_pem(path.read_bytes()).serial_number


# --------------------------------------------------------------------------- SPIFFE ids


def test_spiffe_id_format() -> None:
    assert certs.spiffe_id("strife.local", "bank", "alpha") == "spiffe://strife.local/bank/alpha"
    assert certs.parse_spiffe_id("spiffe://strife.local/gateway/gw-1") == certs.SpiffeId(
        "strife.local", "gateway", "gw-1"
    )


@pytest.mark.parametrize("role", ["", "Bank", "banker", "root", "gateway "])
def test_bad_role_rejected(role: str) -> None:
    with pytest.raises(ValueError, match="invalid role"):
        certs.spiffe_id("strife.local", role, "alpha")


@pytest.mark.parametrize("name", ["", "-alpha", ".alpha", "a/b", "al pha", "ä", "x" * 64])
def test_bad_name_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        certs.spiffe_id("strife.local", "bank", name)


def test_name_length_limit() -> None:
    assert certs.spiffe_id("strife.local", "bank", "x" * 63).endswith("/" + "x" * 63)


@pytest.mark.parametrize("domain", ["", "Strife.Local", "strife.local/x", "a b"])
def test_bad_trust_domain_rejected(domain: str) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        certs.spiffe_id(domain, "bank", "alpha")


@pytest.mark.parametrize(
    "uri",
    [
        "https://strife.local/bank/a",
        "spiffe://strife.local/bank",
        "spiffe://d/x/a",
        "spiffe://strife.local/bank/",
        "spiffe://strife.local/bank/a/b",
        "spiffe://strife.local/bank/-a",
        "spiffe://strife.local/bank/" + "x" * 64,
        "spiffe://Strife.Local/bank/a",
    ],
)
def test_parse_spiffe_id_rejects(uri: str) -> None:
    """The rules `spiffe_id` issues by; verified peers are read by the same."""
    with pytest.raises(ValueError):
        certs.parse_spiffe_id(uri)


def test_issue_rejects_bad_role_and_name(ca: certs.Authority) -> None:
    with pytest.raises(ValueError, match="invalid role"):
        certs.issue(ca, role="superuser", name="alpha")
    with pytest.raises(ValueError, match="invalid name"):
        certs.issue(ca, role="bank", name="../alpha")


# --------------------------------------------------------------------------- CA


def test_ca_extensions(ca: certs.Authority) -> None:
    cert = ca.cert
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.trust_domain == certs.DEFAULT_TRUST_DOMAIN
    cert.verify_directly_issued_by(cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > dt.timedelta(days=3649)


def test_write_and_load_ca(tmp_path: Path, ca: certs.Authority) -> None:
    folder = tmp_path / "ca"
    cert_path, key_path = certs.write_ca(ca, folder)
    assert (cert_path.name, key_path.name) == ("ca.crt", "ca.key")
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644
    assert _mode(folder) == 0o700
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = certs.load_ca(folder)
    assert loaded.cert == ca.cert
    assert certs.key_to_pem(loaded.key) == certs.key_to_pem(ca.key)


def test_load_ca_rejects_mismatched_key(tmp_path: Path, ca: certs.Authority) -> None:
    certs.write_ca(ca, tmp_path)
    (tmp_path / "ca.key").write_bytes(certs.key_to_pem(certs.create_ca().key))
    with pytest.raises(ValueError, match="does not match"):
        certs.load_ca(tmp_path)


def test_load_ca_rejects_leaf(tmp_path: Path, ca: certs.Authority) -> None:
    leaf = certs.issue(ca, role="bank", name="alpha")
    certs.write_ca(certs.Authority(key=leaf.key, cert=leaf.cert), tmp_path)
    with pytest.raises(ValueError, match="not a CA"):
        certs.load_ca(tmp_path)


def test_load_ca_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        certs.load_ca(tmp_path)


# --------------------------------------------------------------------------- leaves


def test_service_leaf_sans_and_usage(ca: certs.Authority) -> None:
    leaf = certs.issue(ca, role="bank", name="alpha")
    san = _san(leaf.cert)
    assert san.get_values_for_type(x509.DNSName) == [
        "localhost",
        "bank.strife.local.strife",
        "alpha.bank.strife.local.strife",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://strife.local/bank/alpha"
    ]
    assert leaf.spiffe_id == "spiffe://strife.local/bank/alpha"
    assert _eku(leaf.cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


@pytest.mark.parametrize("role", certs.SERVICE_ROLES)
def test_every_service_role_is_server_and_client(ca: certs.Authority, role: str) -> None:
    leaf = certs.issue(ca, role=role, name="n1")
    assert _eku(leaf.cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


@pytest.mark.parametrize("role", ["client", "admin"])
def test_client_roles_have_no_hosts_and_client_auth_only(ca: certs.Authority, role: str) -> None:
    leaf = certs.issue(ca, role=role, name="alice")
    san = _san(leaf.cert)
    assert san.get_values_for_type(x509.DNSName) == []
    assert san.get_values_for_type(x509.IPAddress) == []
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://strife.local/{role}/alice"
    ]
    assert _eku(leaf.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_explicit_hosts_split_into_dns_and_ip(ca: certs.Authority) -> None:
    hosts = ["bank.internal", "10.0.0.5", "::1", "bank.internal"]
    leaf = certs.issue(ca, role="bank", name="beta", hosts=hosts)
    san = _san(leaf.cert)
    assert san.get_values_for_type(x509.DNSName) == [
        "bank.internal",
        "bank.strife.local.strife",
        "beta.bank.strife.local.strife",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    client = certs.issue(ca, role="client", name="bob", hosts=["laptop"])
    assert _san(client.cert).get_values_for_type(x509.DNSName) == ["laptop"]


def test_empty_host_rejected(ca: certs.Authority) -> None:
    with pytest.raises(ValueError, match="empty host"):
        certs.issue(ca, role="bank", name="alpha", hosts=[" "])


def test_leaf_structure_and_chain(ca: certs.Authority) -> None:
    leaf = certs.issue(ca, role="gateway", name="gw-1")
    cert = leaf.cert
    cert.verify_directly_issued_by(ca.cert)
    assert cert.issuer == ca.cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Strife"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "gateway"
    )
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    assert isinstance(leaf.key.curve, ec.SECP256R1)


def test_leaf_from_another_ca_does_not_verify(ca: certs.Authority) -> None:
    other = certs.create_ca()
    leaf = certs.issue(other, role="bank", name="alpha")
    with pytest.raises(InvalidSignature):
        leaf.cert.verify_directly_issued_by(ca.cert)


def test_default_validity_allows_clock_skew(ca: certs.Authority) -> None:
    now = dt.datetime.now(UTC)
    cert = certs.issue(ca, role="bank", name="alpha", days=30).cert
    assert now - dt.timedelta(minutes=6) < cert.not_valid_before_utc < now - dt.timedelta(minutes=4)
    assert abs(cert.not_valid_after_utc - (now + dt.timedelta(days=30))) < dt.timedelta(minutes=1)


def test_expired_certificate(ca: certs.Authority) -> None:
    now = dt.datetime.now(UTC)
    past = now - dt.timedelta(days=1)
    cert = certs.issue(ca, role="client", name="old", not_after=past).cert
    assert cert.not_valid_after_utc < now
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    cert.verify_directly_issued_by(ca.cert)


def test_explicit_window(ca: certs.Authority) -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=UTC)
    end = dt.datetime(2020, 2, 1, tzinfo=UTC)
    cert = certs.issue(ca, role="bank", name="a", not_before=start, not_after=end).cert
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    with pytest.raises(ValueError, match="must be after"):
        certs.issue(ca, role="bank", name="a", not_before=end, not_after=start)
    with pytest.raises(ValueError, match="positive"):
        certs.issue(ca, role="bank", name="a", days=0)


def test_trust_domain_must_match_ca(ca: certs.Authority) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        certs.issue(ca, role="bank", name="alpha", trust_domain="other.org")
    other = certs.create_ca(trust_domain="other.org")
    leaf = certs.issue(other, role="bank", name="alpha", trust_domain="other.org")
    assert leaf.spiffe_id == "spiffe://other.org/bank/alpha"


# --------------------------------------------------------------------------- identity folders


def test_write_and_load_identity(tmp_path: Path, ca: certs.Authority) -> None:
    leaf = certs.issue(ca, role="bank", name="alpha")
    folder = certs.write_identity(tmp_path / "bank-alpha", ca.cert, leaf)
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert _mode(folder) == 0o700
    assert _mode(folder / "tls.key") == 0o600
    assert _mode(folder / "tls.crt") == 0o644
    assert _mode(folder / "ca.crt") == 0o644
    ca_cert, loaded = certs.load_identity(folder)
    assert ca_cert == ca.cert
    assert loaded.cert == leaf.cert
    loaded.cert.verify_directly_issued_by(ca_cert)


def test_write_identity_keeps_mode_of_existing_folder(tmp_path: Path, ca: certs.Authority) -> None:
    folder = tmp_path / "id"
    folder.mkdir(mode=0o750)
    folder.chmod(0o750)
    certs.write_identity(folder, ca.cert, certs.issue(ca, role="client", name="c"))
    assert _mode(folder) == 0o750
    assert _mode(folder / "tls.key") == 0o600


def test_overwritten_key_stays_private(tmp_path: Path, ca: certs.Authority) -> None:
    certs.write_identity(tmp_path, ca.cert, certs.issue(ca, role="bank", name="a"))
    (tmp_path / "tls.key").chmod(0o644)
    certs.write_identity(tmp_path, ca.cert, certs.issue(ca, role="bank", name="a"))
    assert _mode(tmp_path / "tls.key") == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- dev cluster

DEV_LABELS = {
    "balancer",
    "bank-alpha",
    "bank-beta",
    "bank-gamma",
    "gateway-gw-1",
    "gateway-gw-2",
    "client-default",
    "admin",
}


def test_dev_layout(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    folders = certs.dev(out)
    assert set(folders) == DEV_LABELS
    assert sorted(p.name for p in (out / "ca").iterdir()) == ["ca.crt", "ca.key"]
    assert _mode(out / "ca" / "ca.key") == 0o600
    ca = certs.load_ca(out / "ca")
    for label, folder in folders.items():
        assert folder == out / label
        assert _mode(folder / "tls.key") == 0o600
        ca_cert, leaf = certs.load_identity(folder)
        assert ca_cert == ca.cert
        leaf.cert.verify_directly_issued_by(ca.cert)
    expected = {
        "balancer": "spiffe://strife.local/balancer/balancer",
        "bank-beta": "spiffe://strife.local/bank/beta",
        "gateway-gw-2": "spiffe://strife.local/gateway/gw-2",
        "client-default": "spiffe://strife.local/client/default",
        "admin": "spiffe://strife.local/admin/admin",
    }
    for label, ident in expected.items():
        assert certs.load_identity(folders[label])[1].spiffe_id == ident


def test_dev_is_idempotent_and_force_replaces(tmp_path: Path) -> None:
    first = certs.dev(tmp_path)
    ca_serial = _serial(tmp_path / "ca" / "ca.crt")
    leaf_serials = {label: _serial(f / "tls.crt") for label, f in first.items()}

    second = certs.dev(tmp_path)
    assert second == first
    assert _serial(tmp_path / "ca" / "ca.crt") == ca_serial
    assert {label: _serial(f / "tls.crt") for label, f in second.items()} == leaf_serials

    certs.dev(tmp_path, force=True)
    new_ca = certs.load_ca(tmp_path / "ca")
    assert new_ca.cert.serial_number != ca_serial
    for label, folder in first.items():
        assert _serial(folder / "tls.crt") != leaf_serials[label]
        ca_cert, leaf = certs.load_identity(folder)
        assert ca_cert == new_ca.cert
        leaf.cert.verify_directly_issued_by(new_ca.cert)


def test_dev_repairs_missing_or_foreign_identities(tmp_path: Path) -> None:
    folders = certs.dev(tmp_path, banks=("alpha",), gateways=("gw-1",))
    kept = _serial(folders["bank-alpha"] / "tls.crt")
    (folders["gateway-gw-1"] / "tls.key").unlink()
    stranger = certs.create_ca()
    certs.write_identity(
        folders["admin"], stranger.cert, certs.issue(stranger, role="admin", name="admin")
    )

    again = certs.dev(tmp_path, banks=("alpha", "delta"), gateways=("gw-1",))
    ca = certs.load_ca(tmp_path / "ca")
    assert _serial(again["bank-alpha"] / "tls.crt") == kept
    assert "bank-delta" in again
    for label in ("gateway-gw-1", "admin", "bank-delta"):
        ca_cert, leaf = certs.load_identity(again[label])
        assert ca_cert == ca.cert
        leaf.cert.verify_directly_issued_by(ca.cert)


def test_dev_hosts_apply_to_services_only(tmp_path: Path) -> None:
    folders = certs.dev(tmp_path, banks=("alpha",), hosts=("bank.internal", "10.1.2.3"))
    bank = certs.load_identity(folders["bank-alpha"])[1].cert
    client = certs.load_identity(folders["client-default"])[1].cert
    assert _san(bank).get_values_for_type(x509.DNSName)[0] == "bank.internal"
    assert _san(bank).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert _san(client).get_values_for_type(x509.DNSName) == []


def test_dev_rejects_bad_name_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        certs.dev(tmp_path / "out", banks=("alpha", "no/slash"))
    assert not (tmp_path / "out").exists()


def test_dev_refuses_trust_domain_change_without_force(tmp_path: Path) -> None:
    certs.dev(tmp_path)
    with pytest.raises(ValueError, match="trust domain"):
        certs.dev(tmp_path, trust_domain="other.org")
    folders = certs.dev(tmp_path, trust_domain="other.org", force=True)
    assert certs.load_identity(folders["bank-alpha"])[1].spiffe_id == (
        "spiffe://other.org/bank/alpha"
    )


# --------------------------------------------------------------------------- TLS


async def test_grpc_mtls_with_dev_identities(tmp_path: Path) -> None:
    """The certificates must satisfy gRPC's TLS stack, not just our own checks."""
    folders = certs.dev(tmp_path, banks=("alpha",), gateways=("gw-1",))
    seen: list[bytes] = []

    class Health(health_pb2_grpc.HealthServicer):
        async def Check(
            self,
            request: health_pb2.HealthCheckRequest,
            context: grpc.aio.ServicerContext[
                health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
            ],
        ) -> health_pb2.HealthCheckResponse:
            seen.extend(context.auth_context()["peer_spiffe_id"])
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def read(label: str, name: str) -> bytes:
        return (folders[label] / name).read_bytes()

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    server_creds = grpc.ssl_server_credentials(
        [(read("bank-alpha", "tls.key"), read("bank-alpha", "tls.crt"))],
        root_certificates=read("bank-alpha", "ca.crt"),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", server_creds)
    await server.start()
    try:
        for label, host in (("gateway-gw-1", "localhost"), ("client-default", "127.0.0.1")):
            creds = grpc.ssl_channel_credentials(
                read(label, "ca.crt"), read(label, "tls.key"), read(label, "tls.crt")
            )
            async with grpc.aio.secure_channel(f"{host}:{port}", creds) as channel:
                stub = health_stub(channel)
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(None)
    assert seen == [b"spiffe://strife.local/gateway/gw-1", b"spiffe://strife.local/client/default"]


# --------------------------------------------------------------------------- CLI


def test_cli_init_and_refuse_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ca"
    result = runner.invoke(cli, ["init", "--out", str(out), "--days", "30"])
    assert result.exit_code == 0, result.output
    assert "ca.key" in result.output and "strife.local" in result.output
    serial = _serial(out / "ca.crt")
    assert _mode(out / "ca.key") == 0o600

    again = runner.invoke(cli, ["init", "--out", str(out)])
    assert again.exit_code == 1
    assert "--force" in again.output
    assert _serial(out / "ca.crt") == serial

    forced = runner.invoke(cli, ["init", "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert _serial(out / "ca.crt") != serial


def test_cli_issue(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["init", "--out", str(tmp_path / "ca")]).exit_code == 0
    args = ["issue", "--ca", str(tmp_path / "ca"), "--role", "gateway", "--name", "edge"]
    args += ["--out", str(tmp_path / "edge"), "--host", "edge.example.com,10.0.0.5"]
    result = runner.invoke(cli, [*args, "--host", "::1", "--days", "7"])
    assert result.exit_code == 0, result.output
    assert "spiffe://strife.local/gateway/edge" in result.output
    ca_cert, leaf = certs.load_identity(tmp_path / "edge")
    leaf.cert.verify_directly_issued_by(ca_cert)
    assert _san(leaf.cert).get_values_for_type(x509.DNSName)[0] == "edge.example.com"
    assert len(_san(leaf.cert).get_values_for_type(x509.IPAddress)) == 2
    assert leaf.cert.not_valid_after_utc - leaf.cert.not_valid_before_utc < dt.timedelta(days=8)
    assert _mode(tmp_path / "edge" / "tls.key") == 0o600

    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert runner.invoke(cli, [*args, "--force"]).exit_code == 0


def test_cli_issue_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["issue", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path / "x")]

    missing = runner.invoke(cli, [*base, "--role", "bank", "--name", "alpha"])
    assert missing.exit_code == 1
    assert "no CA" in missing.output and "strife-certs init" in missing.output

    assert runner.invoke(cli, ["init", "--out", str(tmp_path / "ca")]).exit_code == 0
    bad_role = runner.invoke(cli, [*base, "--role", "root", "--name", "alpha"])
    assert bad_role.exit_code == 2 and "--role" in bad_role.output
    bad_name = runner.invoke(cli, [*base, "--role", "bank", "--name", "a/b"])
    assert bad_name.exit_code == 2 and "invalid name" in bad_name.output
    foreign = runner.invoke(
        cli, [*base, "--role", "bank", "--name", "a", "--trust-domain", "other.org"]
    )
    assert foreign.exit_code == 1 and "trust domain" in foreign.output
    assert not (tmp_path / "x").exists()


def test_cli_dev(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "certs"
    args = ["dev", "--out", str(out), "--bank", "alpha", "--gateway", "gw-1", "--client", "alice"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    labels = {"ca", "balancer", "bank-alpha", "gateway-gw-1", "client-alice", "admin"}
    assert {p.name for p in out.iterdir()} == labels
    assert "spiffe://strife.local/client/alice" in result.output
    assert "issued" in result.output

    rerun = runner.invoke(cli, args)
    assert rerun.exit_code == 0, rerun.output
    assert "issued" not in rerun.output and "created" not in rerun.output

    bad = runner.invoke(cli, ["dev", "--out", str(out), "--bank", "-bad"])
    assert bad.exit_code == 1 and "invalid name" in bad.output


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "strife-certs"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("init", "issue", "dev"):
        assert command in result.stdout
