"""The gateway's login throttle: per (bank, username) and per client host.

Each replica's throttle is a first line that answers cheaply, before any
password reaches a bank. The limit that holds across replicas is the bank's
own (`strife.bank.service`), which sees every replica's attempts and every
caller's, the admin's included. See docs/security.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from strife.security.throttle import FailureWindow, Slot


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """The slots one login holds while its password is checked."""

    user: Slot
    peer: Slot


class LoginThrottle:
    """Username and peer limits together: the stricter one decides.

    A username is known by its bank: alice at alpha and alice at beta are two
    people, and guesses against one never count for, or reset, the other.
    """

    def __init__(
        self,
        per_username: int = 5,
        per_peer: int = 20,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.by_username = FailureWindow(per_username, window_s, clock=clock)
        self.by_peer = FailureWindow(per_peer, window_s, clock=clock)

    def retry_after_s(self, bank: str, username: str, peer: str) -> float:
        return max(
            self.by_username.retry_after_s((bank, username)), self.by_peer.retry_after_s(peer)
        )

    def begin(self, bank: str, username: str, peer: str) -> LoginAttempt | float:
        """Count the attempt now, before the bank checks it; or the seconds to wait."""
        user = self.by_username.reserve((bank, username))
        if isinstance(user, float):
            return user
        peer_slot = self.by_peer.reserve(peer)
        if isinstance(peer_slot, float):
            self.by_username.release(user)
            return peer_slot
        return LoginAttempt(user, peer_slot)

    def failed(self, attempt: LoginAttempt) -> None:
        """Wrong password: both slots stay until they leave the window."""

    def unchecked(self, attempt: LoginAttempt) -> None:
        """No password was checked (bank busy, unreachable, throttling): give both back."""
        self.by_username.release(attempt.user)
        self.by_peer.release(attempt.peer)

    def succeeded(self, attempt: LoginAttempt) -> None:
        """A good login clears its username and costs its host nothing."""
        self.by_username.succeed(attempt.user.key)
        self.by_peer.release(attempt.peer)
