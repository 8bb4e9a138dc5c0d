"""Failed-login throttling per username and per peer, with bounded memory.

A sliding window of recent failures per key; past the limit, logins for that
key are refused until the oldest failure leaves the window. The tables are
capped (least recently used keys dropped) so a flood of names cannot grow them.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailureWindow:
    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after_s(self, key: str) -> float:
        """0 when `key` may try now, else seconds until it may."""
        recent = self._recent(key)
        if recent is None or len(recent) < self.limit:
            return 0.0
        return max(0.0, recent[0] + self.window_s - self._clock())

    def failed(self, key: str) -> None:
        recent = self._recent(key)
        if recent is None:
            recent = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
        recent.append(self._clock())

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str) -> deque[float] | None:
        recent = self._failures.get(key)
        if recent is None:
            return None
        self._failures.move_to_end(key)
        horizon = self._clock() - self.window_s
        while recent and recent[0] <= horizon:
            recent.popleft()
        return recent


class LoginThrottle:
    """Username and peer limits together: the stricter one decides."""

    def __init__(
        self,
        per_username: int = 5,
        per_peer: int = 20,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.by_username = FailureWindow(per_username, window_s, clock=clock)
        self.by_peer = FailureWindow(per_peer, window_s, clock=clock)

    def retry_after_s(self, username: str, peer: str) -> float:
        return max(self.by_username.retry_after_s(username), self.by_peer.retry_after_s(peer))

    def failed(self, username: str, peer: str) -> None:
        self.by_username.failed(username)
        self.by_peer.failed(peer)

    def succeeded(self, username: str) -> None:
        self.by_username.succeeded(username)
