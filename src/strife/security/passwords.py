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
import time
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
HASHING_WORKERS = 2
HASHING_EXECUTOR = ThreadPoolExecutor(max_workers=HASHING_WORKERS, thread_name_prefix="scrypt")


class HashingBusyError(Exception):
    """Too many password checks are waiting; shed this one rather than queue it."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"password checks busy; retry in {retry_after_s:.2f}s")
        self.retry_after_s = retry_after_s


class PasswordChecks:
    """A bounded queue in front of the hashing pool.

    At most `max_pending` checks run or wait at once; one more is refused at
    once (`HashingBusyError`, with how long the queue takes to drain) instead
    of waiting behind the others until its caller's deadline passes. A login
    flood then costs its senders refusals, and everyone else's login a short
    wait, not a timeout.
    """

    def __init__(self, max_pending: int = 16, workers: int = 2) -> None:
        self.max_pending = max_pending
        self._workers = workers
        self._pending = 0
        self._check_s = 0.05  # a moving average of one check's time

    @property
    def pending(self) -> int:
        return self._pending

    def wait_s(self) -> float:
        """About how long a check asked for now would wait and run."""
        return (self._pending // self._workers + 1) * self._check_s

    async def verify(
        self, password: str, stored: str | None, within_s: float | None = None
    ) -> bool:
        """The check, or HashingBusyError when the queue is full or the check
        would not finish within `within_s` (the caller's remaining deadline)."""
        wait_s = self.wait_s()
        if self._pending >= self.max_pending or (within_s is not None and wait_s > within_s):
            raise HashingBusyError(max(0.05, wait_s))
        self._pending += 1
        try:
            ok, took_s = await asyncio.get_running_loop().run_in_executor(
                HASHING_EXECUTOR, _timed_verify, password, stored
            )
        finally:
            self._pending -= 1
        self._check_s = 0.8 * self._check_s + 0.2 * took_s
        return ok


def _timed_verify(password: str, stored: str | None) -> tuple[bool, float]:
    started = time.perf_counter()
    ok = verify_password(password, stored)
    return ok, time.perf_counter() - started


PASSWORD_CHECKS = PasswordChecks(workers=HASHING_WORKERS)


async def verify_password_async(
    password: str, stored: str | None, within_s: float | None = None
) -> bool:
    """`verify_password` off the event loop, on the bounded hashing pool; raises
    `HashingBusyError` when too many checks are already waiting, or when it
    would not be done within `within_s`."""
    return await PASSWORD_CHECKS.verify(password, stored, within_s)
