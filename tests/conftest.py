"""Shared fixtures: a private CA and identity folders made with strife's own tooling."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest

from strife.security import certs


@dataclass(frozen=True)
class Pki:
    root: Path
    ca: certs.Authority

    def identity(self, role: str, name: str) -> Path:
        folder = self.root / f"{role}-{name}"
        if not folder.exists():
            certs.write_identity(folder, self.ca.cert, certs.issue(self.ca, role=role, name=name))
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
