"""Shared fixtures: hermetic tests, and a private CA and identity folders made with
strife's own tooling."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# Variables a user's shell may carry that Strife (or gRPC under it) reads. Removed
# here, before strife is imported (failpoints are read at import), and again
# around every test; a test that wants one sets it for the process it starts.
_USER_PREFIXES = ("STRIFE_",)
_USER_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "grpc_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "GRPC_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "GRPC_TRACE",
    "GRPC_VERBOSITY",
)


def _user_settings() -> list[str]:
    return [name for name in os.environ if name.startswith(_USER_PREFIXES)] + [
        name for name in _USER_VARIABLES if name in os.environ
    ]


for _name in _user_settings():
    del os.environ[_name]

from strife.security import certs  # noqa: E402


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test runs in its own empty working directory with a clean environment.

    Strife's defaults are relative to the working directory (`./certs/<identity>`,
    `./data/`, `.strife/cluster`) or come from the environment (`STRIFE_*`, the
    client's `~/.strife`): none of them may be the checkout's or the user's. What a
    test sets in `os.environ` is undone after it.
    """
    saved = dict(os.environ)
    for name in _user_settings():
        monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("STRIFE_HOME", str(tmp_path / "strife-home"))
    yield work
    os.environ.clear()
    os.environ.update(saved)


@dataclass(frozen=True)
class Pki:
    root: Path
    ca: certs.Authority

    def identity(self, role: str, name: str, serves: Sequence[str] = ()) -> Path:
        """`serves`: the banks a bank host serves (its certificate names them)."""
        folder = self.root / "+".join((f"{role}-{name}", *serves))
        if not folder.exists():
            issued = certs.issue(self.ca, role=role, name=name, serves=serves)
            certs.write_identity(folder, self.ca.cert, issued)
        return folder


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    return Pki(root=root, ca=certs.create_ca())


@pytest.fixture(scope="session")
def foreign_identity(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Path:
    """A client certificate from another CA, trusting ours so the handshake gets far."""
    other = certs.create_ca(common_name="Someone Else's CA")
    folder = tmp_path_factory.mktemp("foreign")
    certs.write_identity(folder, pki.ca.cert, certs.issue(other, role="bank", name="alpha"))
    return folder


@pytest.fixture(scope="session")
def expired_identity(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Path:
    now = dt.datetime.now(dt.UTC)
    issued = certs.issue(
        pki.ca,
        role="bank",
        name="alpha",
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    folder = tmp_path_factory.mktemp("expired")
    certs.write_identity(folder, pki.ca.cert, issued)
    return folder
