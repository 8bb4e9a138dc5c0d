"""Helpers for the client tests: a client on a real cluster, the CLI as a child process.

Named `test_client_*` only to live beside the tests it serves; it holds no tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from strife.client import ClientConfig, Credentials, RetryPolicy, Session, StrifeClient

from .cluster_fixtures import PASSWORDS, Cluster
from .conftest import Pki
from .processes import BIN

DEADLINE_S = 20.0
ADA, BOB, EVE, CY = "alpha/ada-usd", "alpha/bob-usd", "alpha/eve-usd", "beta/cy-usd"
# Quick enough for tests, still the same policy and code paths.
FAST = ClientConfig(retry=RetryPolicy(initial_s=0.05, cap_s=0.5), idle_poll_s=0.2)


def credentials(
    username: str, calls: list[str] | None = None
) -> Callable[[], Awaitable[Credentials]]:
    """A credential callback for a seeded customer; records each time it is asked."""

    async def provide() -> Credentials:
        if calls is not None:
            calls.append(username)
        bank = "beta" if username == "cy" else "alpha"
        return Credentials(username, PASSWORDS[username], bank)

    return provide


def client_for(
    pki: Pki,
    c: Cluster,
    outbox: Path,
    username: str = "ada",
    *,
    gateways: Sequence[str] | None = None,
    balancer: str | None = None,
    session: Session | None = None,
    config: ClientConfig = FAST,
    background: bool = True,
    calls: list[str] | None = None,
) -> StrifeClient:
    if gateways is None and balancer is None:
        gateways = [g.address for g in c.gateways.values()]
    return StrifeClient(
        certs=pki.identity("client", "default"),
        gateways=gateways or (),
        balancer=balancer,
        outbox=outbox,
        credentials=credentials(username, calls),
        session=session,
        config=config,
        background=background,
    )


def strife_cli(
    args: Sequence[str],
    *,
    home: Path,
    stdin: str = "",
    env: dict[str, str] | None = None,
    timeout_s: float = DEADLINE_S,
) -> subprocess.CompletedProcess[str]:
    """The real `strife` console script in a child process, with its own STRIFE_HOME."""
    return subprocess.run(
        [str(BIN / "strife"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "STRIFE_HOME": str(home), **(env or {})},
        check=False,
    )


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout of a `--json` command: exactly one JSON document."""
    assert result.stdout.strip(), f"no output; stderr: {result.stderr}"
    return json.loads(result.stdout)
