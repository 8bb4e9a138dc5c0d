"""Runs last in the package: the logs every process of the suite wrote so far hold
no password, bearer token or private key. The `world` fixture scans them once more
after the processes have stopped."""

from __future__ import annotations

from pathlib import Path

from .harness import PASSWORDS, World
from .logscan import secrets_in


def test_logs_hold_no_password_token_or_key(world: World) -> None:
    paths = world.log_paths()
    assert {p.name for p in paths} >= {
        "alpha.log",
        "beta.log",
        "gw-1.log",
        "gw-2.log",
        "balancer.log",
    }
    text = "".join(p.read_text(errors="replace") for p in paths)
    assert '"Login"' in text or "/Login" in text, "the logs saw no login: nothing was scanned"
    assert world.tokens, "no token was issued: the scan proves nothing"
    assert set(PASSWORDS) >= {"ada", "victim"}
    assert secrets_in(paths, list(world.tokens.values())) == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    planted = tmp_path / "planted.log"
    planted.write_text(
        '{"event": "x", "password": "pw-ada"}\n'
        '{"authorization": "Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjLWFkYSJ9.c2ln"}\n'
        "-----BEGIN PRIVATE KEY-----\n"
        '{"event": "fine", "password": "[redacted]"}\n'
    )
    assert [f.split(": ", 1)[1] for f in secrets_in([planted], [])] == [
        "the password of ada",
        "a bearer token",
        "a private key",
    ]
