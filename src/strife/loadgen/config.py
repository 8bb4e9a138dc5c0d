"""The load generator's knobs, with explicit defaults and their bounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from strife.rpc.discovery import POLICIES

Mix = Literal["cross", "any"]
PayeeSet = Literal["auto", "all"]

MAX_CLIENTS = 2_000
MAX_DURATION_S = 3_600.0
MAX_COUNT = 10_000_000
MAX_IN_FLIGHT = 10_000
MAX_LOGIN_CONCURRENCY = 64


class ConfigError(ValueError):
    """A load configuration that cannot run (refused before anything is sent)."""


@dataclass(frozen=True)
class LoadConfig:
    """One load run.

    Closed loop (the default): every simulated customer sends its next payment
    as soon as the previous one is answered, at most `concurrency` in flight
    overall. Open loop (`rate_per_s` set): payments are due on a fixed
    schedule whatever the answers, and latency counts from the due time, so a
    slow system cannot hide its queueing delay (coordinated omission); when
    `max_in_flight` are outstanding a due payment is SKIPPED, not queued
    without bound. The run ends after `duration_s` or `count` payments,
    whichever comes first; at least one of them must be set.
    """

    clients: int = 100
    duration_s: float | None = 10.0
    count: int | None = None
    rate_per_s: float | None = None
    concurrency: int | None = None
    """Closed loop: payments in flight at once (default: one per client)."""
    max_in_flight: int = 1_000
    """Open loop: the bound on outstanding payments."""
    policy: str | None = None
    """Balancer policy asked for per request; None uses the balancer's own."""
    mix: Mix = "cross"
    """cross: the payee is always at another bank (two-phase commit); any: any other account."""
    payees: PayeeSet = "auto"
    """auto: the payers pay each other when they can (no drift); all: any known customer."""
    amount_minor_max: int = 100
    currency: str = "USD"
    warmup_s: float = 0.0
    """Payments due in the first `warmup_s` are made and audited but not measured."""
    gateway_ttl_s: float = 5.0
    """How long a customer keeps the balancer's answer (jittered ±50%) before asking again."""
    login_concurrency: int = 8
    """Logins at once: each costs ~40 ms of scrypt at the customer's bank."""
    call_timeout_s: float = 5.0
    max_attempts: int = 6
    """Sends of one payment (same key) before it is left UNKNOWN for the resolution pass."""
    payment_deadline_s: float = 30.0
    resolve_timeout_s: float = 60.0
    """Bound on the pass that re-asks about UNKNOWN payments after the load."""
    settle_timeout_s: float = 30.0
    """Bound on waiting for the banks' books to settle before the audit reads them."""
    bin_s: float = 1.0
    """Width of the time-series bins (throughput and latency over time)."""
    seed: int | None = None

    def validate(self) -> None:
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise ConfigError(f"clients must be 1..{MAX_CLIENTS}")
        if self.duration_s is None and self.count is None:
            raise ConfigError("set a duration or a count (every run is bounded)")
        if self.duration_s is not None and not 0 < self.duration_s <= MAX_DURATION_S:
            raise ConfigError(f"duration must be in (0, {MAX_DURATION_S:g}] s")
        if self.count is not None and not 1 <= self.count <= MAX_COUNT:
            raise ConfigError(f"count must be 1..{MAX_COUNT}")
        if self.rate_per_s is not None and not 0 < self.rate_per_s <= 100_000:
            raise ConfigError("rate must be in (0, 100000] payments/s")
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_IN_FLIGHT:
            raise ConfigError(f"concurrency must be 1..{MAX_IN_FLIGHT}")
        if self.rate_per_s is not None and self.concurrency is not None:
            raise ConfigError(
                "--rate (open loop) and --concurrency (closed loop) exclude each other"
            )
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ConfigError(f"max_in_flight must be 1..{MAX_IN_FLIGHT}")
        if self.policy is not None and self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}")
        if self.mix not in ("cross", "any"):
            raise ConfigError("mix must be cross or any")
        if self.payees not in ("auto", "all"):
            raise ConfigError("payees must be auto or all")
        if not 1 <= self.amount_minor_max <= 10**9:
            raise ConfigError("amount_minor_max must be 1..10^9")
        if not 1 <= self.login_concurrency <= MAX_LOGIN_CONCURRENCY:
            raise ConfigError(f"login_concurrency must be 1..{MAX_LOGIN_CONCURRENCY}")
        if not 1 <= self.max_attempts <= 100:
            raise ConfigError("max_attempts must be 1..100")
        positive = {
            "call_timeout_s": self.call_timeout_s,
            "payment_deadline_s": self.payment_deadline_s,
            "resolve_timeout_s": self.resolve_timeout_s,
            "settle_timeout_s": self.settle_timeout_s,
            "gateway_ttl_s": self.gateway_ttl_s,
            "bin_s": self.bin_s,
        }
        for name, value in positive.items():
            if not 0 < value <= MAX_DURATION_S:
                raise ConfigError(f"{name} must be in (0, {MAX_DURATION_S:g}]")
        if self.warmup_s < 0 or (self.duration_s is not None and self.warmup_s >= self.duration_s):
            raise ConfigError("warmup must be >= 0 and shorter than the duration")

    @property
    def closed_loop(self) -> bool:
        return self.rate_per_s is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
