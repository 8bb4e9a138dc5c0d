"""Where a client profile lives on disk: `$STRIFE_HOME/<profile>/` or `~/.strife/<profile>/`.

A profile folder (0700) holds the outbox (`outbox.db`), its delivery lock,
the connection settings of the last login (`config.json`, no secrets) and,
for the CLI only, a short-lived token cache (`session.json`, 0600). The
password is never written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from strife.client._auth import Session

HOME_ENV = "STRIFE_HOME"
DEFAULT_PROFILE = "default"
_PROFILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def strife_home() -> Path:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".strife"


def profile_dir(profile: str = DEFAULT_PROFILE, home: Path | None = None) -> Path:
    """The profile's folder; created with mode 0700 (it holds the token cache)."""
    if not _PROFILE_NAME.fullmatch(profile) or profile in (".", ".."):
        raise ValueError("a profile name is 1-64 characters of [A-Za-z0-9._-]")
    folder = (home or strife_home()) / profile
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def outbox_path(folder: Path) -> Path:
    return folder / "outbox.db"


def _write_private(path: Path, text: str) -> None:
    """Write via a 0600 temporary file and rename: never readable by others, never torn."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def save_session(folder: Path, session: Session) -> None:
    """The CLI's token cache: 0600, and only until the token expires."""
    _write_private(folder / "session.json", session.dumps())


def load_session(folder: Path) -> Session | None:
    """The cached session, token included while unexpired; None when there is none.

    A cache file readable by others is refused (and its token ignored): it
    may have been copied or tampered with.
    """
    path = folder / "session.json"
    try:
        mode = path.stat().st_mode & 0o777
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        session = Session.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None
    if mode & 0o077 or session.expires_in_s() <= 0:
        return session.without_token()
    return session


def save_config(folder: Path, config: dict[str, Any]) -> None:
    _write_private(folder / "config.json", json.dumps(config, indent=2, sort_keys=True))


def load_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
