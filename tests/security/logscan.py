"""What the suite's processes wrote to their logs must hold no secret."""

from __future__ import annotations

import re
from pathlib import Path

from .harness import PASSWORDS

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}")
PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def secrets_in(paths: list[Path], tokens: list[str]) -> list[str]:
    """Each finding as `file:line: what`; empty when the logs are clean."""
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            where = f"{path.name}:{number}"
            for user, password in PASSWORDS.items():
                if password in line:
                    found.append(f"{where}: the password of {user}")
            if JWT.search(line):
                found.append(f"{where}: a bearer token")
            if any(token and token in line for token in tokens):
                found.append(f"{where}: an issued access token")
            if PEM_KEY.search(line):
                found.append(f"{where}: a private key")
    return found
