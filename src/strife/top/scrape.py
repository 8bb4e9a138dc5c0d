"""Read every target's /metrics at once and keep the samples by name and labels.

A scrape is plain HTTP in a thread per target, so one process that hangs
costs its timeout, not everyone's.
"""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from strife.top.targets import Target

Labels = frozenset[tuple[str, str]]
MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Samples:
    """One exposition: sample values by (sample name, labels), and the family
    names it declares (declared even before a labelled metric has a sample)."""

    values: Mapping[tuple[str, Labels], float] = field(default_factory=dict)
    families: frozenset[str] = frozenset()

    def select(self, name: str, **match: str) -> Iterable[tuple[dict[str, str], float]]:
        """Every sample named `name` whose labels include `match`."""
        for (sample, labels), value in self.values.items():
            if sample == name:
                found = dict(labels)
                if all(found.get(k) == v for k, v in match.items()):
                    yield found, value

    def total(self, name: str, **match: str) -> float:
        return sum(value for _, value in self.select(name, **match))

    def get(self, name: str, **match: str) -> float | None:
        found = [value for _, value in self.select(name, **match)]
        return sum(found) if found else None


def parse(text: str) -> Samples:
    values: dict[tuple[str, Labels], float] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Samples(values, frozenset(families))


@dataclass(frozen=True)
class Scrape:
    target: Target
    at: float  # monotonic seconds
    samples: Samples | None  # None: the scrape failed
    error: str = ""


def fetch(target: Target, timeout_s: float) -> Scrape:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(target.url, timeout=timeout_s) as reply:
            body = reply.read(MAX_BODY_BYTES).decode("utf-8", errors="replace")
        return Scrape(target, started, parse(body))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Scrape(target, started, None, error=str(getattr(exc, "reason", exc)))


def scrape_all(targets: Sequence[Target], timeout_s: float = 2.0) -> list[Scrape]:
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        return list(pool.map(lambda t: fetch(t, timeout_s), targets))
