"""Command-line options every Strife server shares, parsed one way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from strife.observability.logging import configure_logging
from strife.rpc.server import ServerConfig
from strife.security.certs import (
    DEFAULT_TRUST_DOMAIN,
    cert_from_pem,
    missing_identity_hosts,
    spiffe_id_of,
)
from strife.security.tls import TlsFiles, TlsMaterial

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--listen", default="127.0.0.1:0", show_default=True, help="HOST:PORT to serve on."
    ),
    click.option(
        "--certs",
        type=click.Path(file_okay=False, path_type=Path),
        help="Identity folder with ca.crt, tls.crt, tls.key (see `strife-certs dev`).",
    ),
    click.option(
        "--insecure", is_flag=True, help="Plaintext, no peer authentication. Debugging only."
    ),
    click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True),
    click.option("--grace", "grace_s", default=5.0, show_default=True, help="Shutdown grace (s)."),
    click.option("--metrics-listen", default=None, help="HOST:PORT for Prometheus /metrics."),
    click.option(
        "--health-listen",
        default=None,
        envvar="STRIFE_HEALTH_LISTEN",
        help="HOST:PORT for grpc.health.v1 alone, in plaintext (container and Kubernetes probes).",
    ),
    click.option(
        "--log-format", type=click.Choice(["json", "console"]), default="json", show_default=True
    ),
    click.option("--log-level", default="info", show_default=True),
    # The original design's quick start spelled these differently; keep it working.
    click.option("--port", type=click.IntRange(0, 65535), help="Alias: --listen 127.0.0.1:PORT."),
    click.option("--ssl-cert", type=click.Path(dir_okay=False, path_type=Path), help="PEM file."),
    click.option("--ssl-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM file."),
    click.option(
        "--ssl-ca",
        type=click.Path(dir_okay=False, path_type=Path),
        help="CA PEM file (default: ca.crt beside --ssl-cert).",
    ),
)


def server_options(func: F) -> F:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def _tls_source(identity: str, options: dict[str, Any]) -> Path | TlsFiles | None:
    """--certs DIR, or --ssl-cert/--ssl-key(/--ssl-ca), or ./certs/<identity> if it exists."""
    if options["ssl_cert"] or options["ssl_key"]:
        if not (options["ssl_cert"] and options["ssl_key"]):
            raise click.UsageError("--ssl-cert and --ssl-key go together")
        ca = options["ssl_ca"] or Path(options["ssl_cert"]).parent / "ca.crt"
        return TlsFiles(ca=ca, cert=options["ssl_cert"], key=options["ssl_key"])
    if options["certs"] is not None:
        return Path(options["certs"])
    default = Path("certs") / identity
    return default if default.is_dir() else None


def server_config(name: str, options: dict[str, Any], identity: str | None = None) -> ServerConfig:
    """Configure logging and build the ServerConfig from parsed options.

    `identity` names the default identity folder under ./certs (what
    `strife-certs dev --out certs` writes), e.g. "bank-alpha".
    """
    configure_logging(options["log_format"], options["log_level"])
    certs = _tls_source(identity or name, options)
    if certs is None and not options["insecure"]:
        raise click.UsageError(
            "--certs DIR is required (or --ssl-cert/--ssl-key; or --insecure for debugging)"
        )
    if options["insecure"]:
        click.echo("WARNING: --insecure: plaintext gRPC without authentication", err=True)
    elif certs is not None:
        require_identity_hosts(certs)
    listen = options["listen"]
    if options["port"] is not None:
        listen = f"127.0.0.1:{options['port']}"
    return ServerConfig(
        name=name,
        listen=listen,
        certs=None if options["insecure"] else certs,
        insecure=options["insecure"],
        trust_domain=options["trust_domain"],
        grace_s=options["grace_s"],
        metrics_listen=options["metrics_listen"],
        health_listen=options["health_listen"],
    )


def require_identity_hosts(certs: Path | TlsFiles, serves: Sequence[str] = ()) -> None:
    """Refuse to start with a service certificate that callers cannot verify:
    one without its identity host names (made by an older strife-certs), or a
    bank host's that does not name every bank it serves."""
    try:
        cert = cert_from_pem(TlsMaterial.load(certs).cert)
    except (OSError, ValueError):
        return  # reported, with its own message, where the server reads the files
    missing = missing_identity_hosts(cert, serves)
    if not missing:
        return
    where = certs / "tls.crt" if isinstance(certs, Path) else certs.cert
    identity = spiffe_id_of(cert)
    fix = "strife-certs issue --ca CA_DIR --role ROLE --name NAME --out DIR --force"
    if serves:
        fix += f" --serves {','.join(serves)}"
    raise click.ClickException(
        f"{where} ({identity}) lacks the host names callers verify it by "
        f"({', '.join(missing)}): it was issued by an older strife-certs or for other "
        f"banks. Re-issue it: `strife-certs dev --out DIR` renews such identities, or `{fix}`."
    )


def named_addresses(values: tuple[str, ...]) -> dict[str, str]:
    """Repeated NAME=HOST:PORT options (--bank, --coordinator) as a mapping."""
    result = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or not name or not address:
            raise click.BadParameter(f"expected NAME=HOST:PORT, got {value!r}")
        result[name] = address
    return result
