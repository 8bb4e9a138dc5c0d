"""``strife-certs``: make the private CA and the per-process identity folders."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click
from cryptography import x509

from strife.security import certs

_DIR = click.Path(file_okay=False, path_type=Path)


@contextmanager
def _as_click_errors() -> Iterator[None]:
    """Library errors are user errors here: show the message, not a traceback."""
    try:
        yield
    except FileNotFoundError as exc:
        raise click.ClickException(f"missing file: {exc.filename}") from exc
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _split_hosts(hosts: Sequence[str]) -> list[str] | None:
    """Accept both ``--host a --host b`` and ``--host a,b``; none given means role default."""
    split = [h.strip() for value in hosts for h in value.split(",") if h.strip()]
    return split or None


def _expiry(cert: x509.Certificate) -> str:
    return cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")


def _describe(label: str, folder: Path, cert: x509.Certificate, status: str) -> None:
    ident = certs.spiffe_id_of(cert) or cert.subject.rfc4514_string()
    click.echo(f"{label:<16} {status:<8} {folder!s:<24} {ident}  expires {_expiry(cert)}")


def _load_ca_or_fail(ca_dir: Path) -> certs.Authority:
    if not (ca_dir / certs.CA_CERT).is_file() or not (ca_dir / certs.CA_KEY).is_file():
        raise click.ClickException(
            f"no CA in {ca_dir} (need {certs.CA_CERT} and {certs.CA_KEY}); "
            f"create one with: strife-certs init --out {ca_dir}"
        )
    with _as_click_errors():
        return certs.load_ca(ca_dir)


def _check_name(name: str) -> None:
    try:
        certs.spiffe_id(certs.DEFAULT_TRUST_DOMAIN, "client", name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--name'") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Certificates for Strife's mTLS: a private CA and one identity folder per process.

    Each identity folder (passed to services as --certs DIR) holds ca.crt,
    tls.crt and tls.key. `strife-certs dev --out certs` makes a whole local cluster.
    """


@main.command()
@click.option("--out", "out", type=_DIR, required=True, help="Folder for ca.crt and ca.key.")
@click.option("--trust-domain", default=certs.DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--common-name", default="Strife Private CA", show_default=True)
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (invalidates its leaves).")
def init(out: Path, trust_domain: str, common_name: str, days: int, force: bool) -> None:
    """Create the deployment's private CA."""
    existing = [p for p in (out / certs.CA_CERT, out / certs.CA_KEY) if p.exists()]
    if existing and not force:
        raise click.ClickException(
            f"{existing[0]} already exists; pass --force to replace the CA "
            "(every certificate it issued stops being trusted)"
        )
    with _as_click_errors():
        ca = certs.create_ca(common_name=common_name, trust_domain=trust_domain, days=days)
        cert_path, key_path = certs.write_ca(ca, out)
    click.echo(f"CA certificate  {cert_path}")
    click.echo(f"CA private key  {key_path}  (mode 0600; keep it off the servers)")
    click.echo(f"trust domain    {trust_domain}")
    click.echo(f"expires         {_expiry(ca.cert)}")


@main.command("issue")
@click.option("--ca", "ca_dir", type=_DIR, required=True, help="Folder holding ca.crt and ca.key.")
@click.option("--role", type=click.Choice(certs.ROLES), required=True)
@click.option("--name", required=True, help="Instance name, e.g. alpha or gw-1.")
@click.option("--out", "out", type=_DIR, required=True, help="Identity folder to write.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="DNS name or IP for the SAN (repeatable or comma-separated). "
    "Default: localhost,127.0.0.1 for services, none for client/admin.",
)
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True)
@click.option("--trust-domain", default=None, help="Default: the CA's trust domain.")
@click.option("--force", is_flag=True, help="Overwrite an existing identity in --out.")
@click.option(
    "--serves",
    multiple=True,
    help="Role bank, a host of several banks: the banks it serves (repeatable or "
    "comma-separated), so gateways dialing them accept its certificate.",
)
def issue_cmd(
    ca_dir: Path,
    role: str,
    name: str,
    out: Path,
    hosts: tuple[str, ...],
    days: int,
    trust_domain: str | None,
    force: bool,
    serves: tuple[str, ...],
) -> None:
    """Issue one identity (ca.crt, tls.crt, tls.key) signed by the CA."""
    _check_name(name)
    existing = [p for p in (out / certs.TLS_CERT, out / certs.TLS_KEY) if p.exists()]
    if existing and not force:
        raise click.ClickException(f"{existing[0]} already exists; pass --force to overwrite it")
    ca = _load_ca_or_fail(ca_dir)
    domain = trust_domain or ca.trust_domain or certs.DEFAULT_TRUST_DOMAIN
    with _as_click_errors():
        leaf = certs.issue(
            ca,
            role=role,
            name=name,
            trust_domain=domain,
            hosts=_split_hosts(hosts),
            days=days,
            serves=_split_hosts(serves) or (),
        )
        certs.write_identity(out, ca.cert, leaf)
    _describe(f"{role}-{name}", out, leaf.cert, "issued")
    sans = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts_out = [str(v) for v in sans.get_values_for_type(x509.DNSName)]
    hosts_out += [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
    click.echo(f"host SANs: {', '.join(hosts_out) or '(none)'}")


@main.command("dev")
@click.option("--out", "out", type=_DIR, default=Path("certs"), show_default=True)
@click.option(
    "--bank", "banks", multiple=True, help="Bank name (repeatable). Default: alpha, beta, gamma."
)
@click.option(
    "--gateway", "gateways", multiple=True, help="Gateway name (repeatable). Default: gw-1, gw-2."
)
@click.option(
    "--client", "clients", multiple=True, help="Client name (repeatable). Default: default."
)
@click.option(
    "--host", "hosts", multiple=True, help="Extra SAN hosts for services (replaces the default)."
)
@click.option("--trust-domain", default=certs.DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--force", is_flag=True, help="New CA and fresh identities for everything.")
@click.option(
    "--serves",
    "serves",
    multiple=True,
    help="HOST=BANK,BANK: a --bank that hosts several banks, and which (repeatable).",
)
def dev_cmd(
    out: Path,
    banks: tuple[str, ...],
    gateways: tuple[str, ...],
    clients: tuple[str, ...],
    hosts: tuple[str, ...],
    trust_domain: str,
    force: bool,
    serves: tuple[str, ...],
) -> None:
    """Write a CA and every identity a local cluster needs; safe to rerun."""
    ca_dir = out / "ca"
    ca_before = _read_or_none(ca_dir / certs.CA_CERT)
    before = {p.name: _read_or_none(p / certs.TLS_CERT) for p in _subdirs(out)}
    with _as_click_errors():
        folders = certs.dev(
            out,
            banks=banks or ("alpha", "beta", "gamma"),
            gateways=gateways or ("gw-1", "gw-2"),
            clients=clients or ("default",),
            trust_domain=trust_domain,
            hosts=_split_hosts(hosts),
            force=force,
            serves=_served(serves),
        )
    ca_cert = certs.cert_from_pem((ca_dir / certs.CA_CERT).read_bytes())
    ca_status = "kept" if ca_before == certs.cert_to_pem(ca_cert) else "created"
    _describe("ca", ca_dir, ca_cert, ca_status)
    for label, folder in folders.items():
        pem = (folder / certs.TLS_CERT).read_bytes()
        status = "kept" if before.get(folder.name) == pem else "issued"
        _describe(label, folder, certs.cert_from_pem(pem), status)
    click.echo(f"start each process with --certs {out}/<label>")


def _served(values: tuple[str, ...]) -> dict[str, list[str]]:
    served: dict[str, list[str]] = {}
    for value in values:
        host, sep, banks = value.partition("=")
        if not sep or not host or not _split_hosts((banks,)):
            raise click.BadParameter(
                f"expected HOST=BANK,BANK, got {value!r}", param_hint="'--serves'"
            )
        served.setdefault(host, []).extend(_split_hosts((banks,)) or ())
    return served


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
