"""Password hashes with scrypt (stdlib), compared in constant time.

Hashing is slow on purpose (tens of milliseconds), so callers run it in an
executor, never on the event loop. An unknown username is checked against a
dummy hash so that it costs the same time as a wrong password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

PREFIX = "scrypt"
SALT_BYTES = 16
HASH_BYTES = 32


@dataclass(frozen=True, slots=True)
class ScryptParams:
    n: int = 2**14
    r: int = 8
    p: int = 1


DEFAULT_PARAMS = ScryptParams()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=256 * 1024 * 1024,
        dklen=HASH_BYTES,
    )


def hash_password(password: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    """`scrypt$n$r$p$salt$hash`, self-describing so parameters can change later."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password, salt, params)
    return f"{PREFIX}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(digest)}"


def is_hash(value: str) -> bool:
    parts = value.split("$")
    return len(parts) == 6 and parts[0] == PREFIX and all(p.isdigit() for p in parts[1:4])


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches `stored`; None (unknown user) costs the same."""
    if stored is None or not is_hash(stored):
        _derive(password, _DUMMY_SALT, DEFAULT_PARAMS)
        return False
    _, n, r, p, salt, digest = stored.split("$")
    params = ScryptParams(int(n), int(r), int(p))
    actual = _derive(password, base64.b64decode(salt), params)
    return hmac.compare_digest(actual, base64.b64decode(digest))


_DUMMY_SALT = secrets.token_bytes(SALT_BYTES)


# Each scrypt call allocates 16 MiB, and glibc keeps a thread's arena after
# it: a small pool bounds that memory (the default executor has up to 6
# threads here) and bounds how much CPU a login flood can take.
HASHING_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scrypt")


async def verify_password_async(password: str, stored: str | None) -> bool:
    """`verify_password` off the event loop, on the bounded hashing pool."""
    return await asyncio.get_running_loop().run_in_executor(
        HASHING_EXECUTOR, verify_password, password, stored
    )
