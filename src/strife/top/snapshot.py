"""Two scrapes of every process, turned into what an operator reads: rates
over the interval between them, and the gauges as of the second.

Counters are compared series by series; a counter that went down belongs to
a process that restarted in between, and counts from zero (as Prometheus's
`rate` treats a reset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from strife.top.scrape import Labels, Samples, Scrape

PAYMENT_METHOD = "/strife.v1.PaymentGateway/ProcessPayment"
# A family only that role declares: how a process given by address is recognised.
_ROLE_MARKERS = (
    ("strife_balancer_picks", "balancer"),
    ("strife_gateway_payments_in_flight", "gateway"),
    ("strife_bank_prepared_transfers", "bank"),
)


@dataclass(frozen=True)
class ProcessRow:
    name: str
    role: str
    up: bool
    error: str = ""
    rpc_per_s: float | None = None
    rpc_in_flight: float | None = None
    # Gateway: payments it is deciding or delivering. Bank: legs prepared (funds held).
    open_2pc: float | None = None
    # Bank: prepared legs past the in-doubt timeout, asked about at their coordinator.
    in_doubt: float | None = None
    # Gateway: decided (or undecided) payments some bank has not acknowledged yet.
    unsettled: float | None = None
    rss_bytes: float | None = None
    commit_ms: float | None = None  # mean COMMIT (WAL write + fsync) over the interval
    restarts: int = 0


@dataclass(frozen=True)
class Pick:
    """How often the balancer chose one instance."""

    instance: str
    total: float
    per_s: float
    share: float  # of all picks: clients keep a pick, so an interval holds few


@dataclass(frozen=True)
class Snapshot:
    interval_s: float
    rows: list[ProcessRow]
    payments_per_s: dict[str, float] = field(default_factory=dict)  # by outcome
    latency_ms: tuple[float | None, float | None] = (None, None)  # p50, p99
    picks: list[Pick] = field(default_factory=list)


def role_of(scrape: Scrape) -> str:
    if scrape.target.role:
        return scrape.target.role
    families = scrape.samples.families if scrape.samples else frozenset()
    return next((role for marker, role in _ROLE_MARKERS if marker in families), "")


def increase(before: Samples | None, after: Samples, name: str, **match: str) -> float:
    """How much the counter series named `name` (with `match`) grew."""
    old = dict(_series(before, name, match)) if before else {}
    grown = 0.0
    for labels, value in _series(after, name, match):
        previous = old.get(labels, 0.0)
        grown += value - previous if value >= previous else value
    return grown


def _series(samples: Samples, name: str, match: dict[str, str]) -> list[tuple[Labels, float]]:
    return [(frozenset(labels.items()), value) for labels, value in samples.select(name, **match)]


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """`histogram_quantile` over (upper bound, cumulative count) pairs."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: its bound is all we know
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return ordered[-1][0]


def _bucket_increase(
    pairs: Sequence[tuple[Scrape | None, Scrape]], name: str, **match: str
) -> list[tuple[float, float]]:
    """Each bucket's increase, summed over every process: the interval's histogram."""
    by_bound: dict[float, float] = {}
    for before, after in pairs:
        if after.samples is None:
            continue
        old = before.samples if before else None
        bounds = {labels["le"] for labels, _ in after.samples.select(f"{name}_bucket", **match)}
        for bound in bounds:
            grown = increase(old, after.samples, f"{name}_bucket", **match, le=bound)
            by_bound[float(bound)] = by_bound.get(float(bound), 0.0) + grown
    return list(by_bound.items())


def _served(before: Samples | None, after: Samples) -> float:
    """RPCs served, health checks and reflection aside (what callers asked for)."""
    methods = {
        labels.get("method", "")
        for labels, _ in after.select("strife_rpc_requests_total")
        if not labels.get("method", "").startswith("/grpc.")
    }
    return sum(increase(before, after, "strife_rpc_requests_total", method=m) for m in methods)


def _row(before: Scrape | None, after: Scrape, seconds: float) -> ProcessRow:
    target, role = after.target, role_of(after)
    samples = after.samples
    if samples is None:
        return ProcessRow(target.name, role, up=False, error=after.error, restarts=target.restarts)
    old = before.samples if before else None
    commits = increase(old, samples, "strife_storage_commit_seconds_count")
    commit_s = increase(old, samples, "strife_storage_commit_seconds_sum")
    open_2pc = in_doubt = unsettled = None
    if role == "gateway":
        open_2pc = samples.get("strife_gateway_payments_in_flight")
        unsettled = samples.get("strife_gateway_payments_unsettled")
    elif role == "bank":
        open_2pc = samples.get("strife_bank_prepared_transfers")
        in_doubt = samples.get("strife_bank_in_doubt_transfers")
    return ProcessRow(
        name=target.name,
        role=role,
        up=True,
        rpc_per_s=_served(old, samples) / seconds if old is not None and seconds > 0 else None,
        rpc_in_flight=samples.get("strife_rpc_in_flight"),
        open_2pc=open_2pc,
        in_doubt=in_doubt,
        unsettled=unsettled,
        rss_bytes=samples.get("process_resident_memory_bytes"),
        commit_ms=1000 * commit_s / commits if old is not None and commits > 0 else None,
        restarts=target.restarts,
    )


def _picks(before: Scrape | None, after: Scrape, seconds: float, service: str) -> list[Pick]:
    if after.samples is None:
        return []
    old = before.samples if before else None
    rows = []
    for labels, total in after.samples.select("strife_balancer_picks_total", service=service):
        instance = labels["picked"]
        grown = increase(old, after.samples, "strife_balancer_picks_total", **labels)
        rows.append((instance, total, grown if old is not None else 0.0))
    overall = sum(total for _, total, _ in rows)
    return sorted(
        (
            Pick(
                instance=instance,
                total=total,
                per_s=grown / seconds if seconds > 0 else 0.0,
                share=total / overall if overall else 0.0,
            )
            for instance, total, grown in rows
        ),
        key=lambda pick: pick.instance,
    )


def snapshot(
    before: Sequence[Scrape], after: Sequence[Scrape], service: str = "gateway"
) -> Snapshot:
    """Rows in `after`'s order; `before` is matched to it by process name."""
    earlier = {scrape.target.name: scrape for scrape in before}
    pairs = [(earlier.get(scrape.target.name), scrape) for scrape in after]
    spans = [a.at - b.at for b, a in pairs if b is not None and b.samples and a.samples]
    seconds = max(spans) if spans else 0.0
    rows = [_row(b, a, seconds) for b, a in pairs]
    gateways = [(b, a) for b, a in pairs if role_of(a) == "gateway"]
    outcomes: dict[str, float] = {}
    for b, a in gateways:
        if a.samples is None or b is None or b.samples is None or seconds <= 0:
            continue
        for labels, _ in a.samples.select("strife_payment_outcomes_total"):
            grown = increase(b.samples, a.samples, "strife_payment_outcomes_total", **labels)
            outcomes[labels["state"]] = outcomes.get(labels["state"], 0.0) + grown / seconds
    latency = _bucket_increase(gateways, "strife_rpc_latency_seconds", method=PAYMENT_METHOD)
    p50, p99 = quantile(0.5, latency), quantile(0.99, latency)
    balancers = [(b, a) for b, a in pairs if role_of(a) == "balancer"]
    picks = _picks(*balancers[0], seconds, service) if balancers else []
    return Snapshot(
        interval_s=seconds,
        rows=rows,
        payments_per_s=dict(sorted(outcomes.items())),
        latency_ms=(
            None if p50 is None else p50 * 1000,
            None if p99 is None else p99 * 1000,
        ),
        picks=picks,
    )
