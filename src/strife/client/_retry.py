"""The client's one retry policy: tenacity, exponential backoff with full jitter, capped.

Full jitter (a delay drawn uniformly from zero to the exponential ceiling)
spreads clients that failed together, so a gateway coming back is not hit by
all of them in the same instant; the cap bounds how long a client waits after
the gateway is back. A server's `RetryInfo` hint (throttling, a busy
coordinator) raises the delay to at least the hint, still under the cap.

Only errors whose class says `retryable` are retried: UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED/REQUEST_IN_PROGRESS. A
terminal error ends the retrying at once. There is no attempt limit for the
drainer (a queued payment waits for the network as long as it takes, until
the user cancels it); one-shot reads pass a `stop`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from strife.backoff import Backoff, Jitter
from strife.observability.logging import get_logger

_log = get_logger("strife.client.retry")

# A hard ceiling on any configured cap: a client that sleeps longer than this
# between attempts looks dead to its user.
MAX_CAP_S = 300.0

Sleep = Callable[[float], Awaitable[None]]


def is_retryable(exc: BaseException) -> bool:
    """True for errors a later attempt may cure (the typed errors' `retryable`)."""
    return isinstance(exc, Exception) and bool(getattr(exc, "retryable", False))


def retry_after_hint_s(exc: BaseException | None) -> float:
    """The server's RetryInfo delay carried by a typed error, else 0."""
    hint = getattr(exc, "retry_after_s", None)
    return float(hint) if isinstance(hint, int | float) and hint > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, initial * base**(n-1))).

    Defaults: the first retry within 0.1 s (a blip costs nothing), the ceiling
    doubling per failure, capped at 5 s: a client whose gateway is down
    probes it at most every 5 s, which costs the gateway nothing and bounds
    how late a payment goes out after the gateway returns.
    """

    initial_s: float = 0.1
    cap_s: float = 5.0
    base: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.cap_s <= MAX_CAP_S:
            raise ValueError(f"need 0 < initial_s <= cap_s <= {MAX_CAP_S:g}")
        if self.base < 1:
            raise ValueError("base must be at least 1")

    @property
    def backoff(self) -> Backoff:
        """The shared backoff this policy is: full jitter under the ceiling."""
        return Backoff(self.initial_s, self.cap_s, self.base, Jitter.FULL)

    def ceiling_s(self, attempt: int) -> float:
        """The upper bound of the delay after the `attempt`-th failure (1-based)."""
        return self.backoff.ceiling_s(attempt)

    def delay_s(self, attempt: int, rng: random.Random, hint_s: float = 0.0) -> float:
        """Full jitter under the ceiling, raised to the server's hint, never above the cap."""
        return min(self.cap_s, max(self.backoff.delay_s(attempt, rng), hint_s))

    def wait(self, rng: random.Random | None = None) -> wait_base:
        """This policy as a tenacity wait strategy."""
        return _FullJitterWait(self, rng or random.Random())

    def retrying(
        self,
        *,
        sleep: Sleep = asyncio.sleep,
        stop: stop_base | None = None,
        rng: random.Random | None = None,
        what: str = "call",
    ) -> tenacity.AsyncRetrying:
        """An `AsyncRetrying` that retries retryable errors only and re-raises the rest.

        Cancellation is never retried: it propagates from the attempt or the sleep.
        """
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(is_retryable),
            wait=self.wait(rng),
            stop=stop if stop is not None else tenacity.stop_never,
            sleep=sleep,
            reraise=True,
            before_sleep=_log_retry(what),
        )


class _FullJitterWait(wait_base):
    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        return self._policy.delay_s(retry_state.attempt_number, self._rng, retry_after_hint_s(exc))


def _log_retry(what: str) -> Callable[[tenacity.RetryCallState], None]:
    def log(retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        exc: Any = outcome.exception() if outcome is not None else None
        level = "info" if retry_state.attempt_number == 1 else "debug"
        getattr(_log, level)(
            "retrying",
            what=what,
            attempt=retry_state.attempt_number,
            delay_s=round(retry_state.upcoming_sleep, 3),
            error=str(exc) if exc is not None else None,
        )

    return log
