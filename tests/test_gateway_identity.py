"""A gateway runs only under the name its certificate carries."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import Pki
from .processes import BIN


def test_a_gateway_whose_name_is_not_its_certificates_refuses_to_start(
    pki: Pki, tmp_path: Path
) -> None:
    """Banks record the coordinator's name and check it against the caller's
    certificate; a process under a borrowed name would be a second gw-1."""
    result = subprocess.run(
        [
            str(BIN / "strife-gateway"),
            "--name",
            "gw-2",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "gw.db"),
            "--certs",
            str(pki.identity("gateway", "gw-1")),
            "--bank",
            "alpha=127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "does not match this gateway's certificate" in result.stderr
    assert "/gateway/gw-1" in result.stderr
    assert not (tmp_path / "gw.db").exists()
