"""Command-line options every Strife server shares, parsed one way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from strife.observability.logging import configure_logging
from strife.rpc.server import DEFAULT_TRUST_DOMAIN, ServerConfig

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
        "--log-format", type=click.Choice(["json", "console"]), default="json", show_default=True
    ),
    click.option("--log-level", default="info", show_default=True),
)


def server_options(func: F) -> F:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def server_config(name: str, options: dict[str, Any]) -> ServerConfig:
    """Configure logging and build the ServerConfig from parsed options."""
    configure_logging(options["log_format"], options["log_level"])
    if options["certs"] is None and not options["insecure"]:
        raise click.UsageError("--certs DIR is required (or --insecure for debugging)")
    if options["insecure"]:
        click.echo("WARNING: --insecure: plaintext gRPC without authentication", err=True)
    return ServerConfig(
        name=name,
        listen=options["listen"],
        certs=options["certs"],
        insecure=options["insecure"],
        trust_domain=options["trust_domain"],
        grace_s=options["grace_s"],
        metrics_listen=options["metrics_listen"],
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
