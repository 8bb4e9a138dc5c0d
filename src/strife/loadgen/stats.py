"""Figures from a finished run: throughput, latency percentiles, time series.

Pure functions over the list of payments. Only payments due after the
warm-up count; their latency runs from first send (open loop: from the due
time) to the final answer, retries included, since that is what a customer
waits for.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from strife.loadgen._model import Outcome, Payment


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; NaN when empty."""
    if not ordered:
        return math.nan
    rank = math.ceil(fraction * len(ordered))
    return ordered[min(len(ordered) - 1, max(0, rank - 1))]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, latencies_ms: Iterable[float]) -> LatencySummary:
        ordered = sorted(v for v in latencies_ms if not math.isnan(v))
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 0.50),
            p90_ms=percentile(ordered, 0.90),
            p99_ms=percentile(ordered, 0.99),
            max_ms=ordered[-1],
            mean_ms=sum(ordered) / len(ordered),
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: _round(v) for k, v in asdict(self).items()}


def measured(payments: Iterable[Payment], warmup_s: float) -> list[Payment]:
    """The payments that count: due after the warm-up, and sent (not SKIPPED)."""
    return [p for p in payments if p.started_s >= warmup_s]


@dataclass(frozen=True, slots=True)
class Throughput:
    window_s: float
    answered_per_s: float
    """COMMITTED + ABORTED answers per second: the system's work rate."""
    committed_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return {k: _round(v) for k, v in asdict(self).items()}


def throughput(payments: Sequence[Payment], warmup_s: float) -> Throughput:
    """Answers per second between the end of the warm-up and the last answer.

    The window ends at the last answer, not at the nominal duration: payments
    started before the deadline are waited for and counted, so the tail
    belongs in the denominator too.
    """
    answered = [p for p in payments if p.answered and not p.resolved_late]
    if not answered:
        return Throughput(0.0, 0.0, 0.0)
    end_s = max(p.finished_s for p in answered)
    window_s = max(end_s - warmup_s, 1e-9)
    committed = sum(1 for p in answered if p.outcome is Outcome.COMMITTED)
    return Throughput(window_s, len(answered) / window_s, committed / window_s)


def outcomes(payments: Iterable[Payment]) -> dict[str, int]:
    counts = Counter(p.outcome_key for p in payments)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def time_series(payments: Sequence[Payment], bin_s: float) -> list[dict[str, Any]]:
    """Per bin of answer time: answers/s, commits/s and latency percentiles."""
    answered = [p for p in payments if p.answered and not p.resolved_late]
    if not answered:
        return []
    bins: dict[int, list[Payment]] = {}
    for p in answered:
        bins.setdefault(int(p.finished_s // bin_s), []).append(p)
    series = []
    for index in range(0, max(bins) + 1):
        members = bins.get(index, [])
        latency = LatencySummary.of(p.latency_ms for p in members)
        series.append(
            {
                "t_s": _round((index + 1) * bin_s),
                "answered_per_s": _round(len(members) / bin_s),
                "committed_per_s": _round(
                    sum(1 for p in members if p.outcome is Outcome.COMMITTED) / bin_s
                ),
                "p50_ms": _round(latency.p50_ms),
                "p90_ms": _round(latency.p90_ms),
                "p99_ms": _round(latency.p99_ms),
                "max_ms": _round(latency.max_ms),
            }
        )
    return series


def by_gateway(payments: Iterable[Payment]) -> dict[str, LatencySummary]:
    groups: dict[str, list[float]] = {}
    for p in payments:
        if p.answered and p.gateway and not p.resolved_late:
            groups.setdefault(p.gateway, []).append(p.latency_ms)
    return {name: LatencySummary.of(values) for name, values in sorted(groups.items())}


def _round(value: float | int) -> float | int | None:
    """JSON-friendly: microsecond precision, NaN as null."""
    if isinstance(value, int):
        return value
    return None if math.isnan(value) else round(value, 3)
