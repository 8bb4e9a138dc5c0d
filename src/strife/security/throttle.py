"""Failed-attempt windows with bounded memory, counted when an attempt starts.

A sliding window of recent attempts per key. An attempt takes a slot before
the password is checked (`reserve`), so concurrent guesses cannot all slip in
while the first ones are still being checked; when its answer is known it is
either kept as a failure (nothing to do), given back because no password was checked
(`release`: the bank was busy or unreachable), or the key is cleared
(`succeed`). Past the limit, attempts for that key are refused until the
oldest slot leaves the window. The table is capped (least recently used keys
dropped) so a flood of names cannot grow it.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slot:
    """One reserved attempt: its key and when it started."""

    key: Hashable
    at: float


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
        self._slots: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def retry_after_s(self, key: Hashable) -> float:
        """0 when `key` may try now, else seconds until it may."""
        recent = self._recent(key)
        if recent is None or len(recent) < self.limit:
            return 0.0
        return self._wait(recent)

    def reserve(self, key: Hashable) -> Slot | float:
        """A slot for one attempt, or the seconds to wait when the key is full."""
        recent = self._recent(key)
        if recent is None:
            recent = self._slots[key] = deque()
            if len(self._slots) > self._max_keys:
                self._slots.popitem(last=False)
        if len(recent) >= self.limit:
            return self._wait(recent)
        slot = Slot(key, self._clock())
        recent.append(slot.at)
        return slot

    def release(self, slot: Slot) -> None:
        """Give the slot back: the attempt checked no password."""
        recent = self._slots.get(slot.key)
        if recent is not None:
            with contextlib.suppress(ValueError):
                recent.remove(slot.at)

    def succeed(self, key: Hashable) -> None:
        """The right password: the key starts afresh."""
        self._slots.pop(key, None)

    def _wait(self, recent: deque[float]) -> float:
        # Never 0 while full: a slot still being checked has not failed yet.
        return max(0.001, recent[0] + self.window_s - self._clock())

    def _recent(self, key: Hashable) -> deque[float] | None:
        recent = self._slots.get(key)
        if recent is None:
            return None
        self._slots.move_to_end(key)
        horizon = self._clock() - self.window_s
        while recent and recent[0] <= horizon:
            recent.popleft()
        return recent
