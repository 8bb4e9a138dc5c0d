"""What the PBFT simulator checks, fed with what replicas and clients report.

Safety holds among the honest replicas (running the real code, unaltered on
the wire) whatever the others do, as long as at most f are Byzantine:

- agreement: no two honest replicas execute different batches at one
  sequence number, nor reach different states at one checkpoint;
- at most once: no honest replica executes a client's request twice;
- same results: honest replicas answer a request with the same result;
- client rule: an accepted result has f+1 distinct vouchers and is what the
  honest replicas computed.

Liveness (`Checker.finish`): with at most f faulty, every request completes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strife.bft.client import Accepted
from strife.bft.config import Config

__all__ = ["Checker", "Violation"]


@dataclass(frozen=True)
class Violation:
    check: str
    at: float
    detail: str

    def __str__(self) -> str:
        return f"{self.check} (t={self.at:.3f}): {self.detail}"


@dataclass
class Checker:
    config: Config
    honest: frozenset[int]
    violations: list[Violation] = field(default_factory=list)
    batches: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    states: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    results: dict[tuple[str, int], tuple[int, bytes]] = field(default_factory=dict)
    ran: set[tuple[int, str, int]] = field(default_factory=set)
    accepted: list[tuple[float, Accepted]] = field(default_factory=list)

    def _fail(self, check: str, at: float, detail: str) -> None:
        self.violations.append(Violation(check, at, detail))

    def executed(self, at: float, replica: int, seq: int, digest: bytes) -> None:
        if replica not in self.honest:
            return
        first = self.batches.setdefault(seq, (replica, digest))
        if first[1] != digest:
            self._fail(
                "agreement", at,
                f"replicas {first[0]} and {replica} executed different batches at {seq}:"
                f" {first[1].hex()[:12]} and {digest.hex()[:12]}",
            )  # fmt: skip

    def result(self, at: float, replica: int, client: str, timestamp: int, result: bytes) -> None:
        if replica not in self.honest:
            return
        key = (replica, client, timestamp)
        if key in self.ran:
            self._fail("at-most-once", at, f"replica {replica} ran {client}#{timestamp} twice")
        self.ran.add(key)
        first = self.results.setdefault((client, timestamp), (replica, result))
        if first[1] != result:
            self._fail(
                "same-results", at,
                f"{client}#{timestamp}: replica {first[0]} got {first[1]!r},"
                f" replica {replica} got {result!r}",
            )  # fmt: skip

    def state(self, at: float, replica: int, seq: int, digest: bytes) -> None:
        """A checkpoint taken, or a snapshot installed, by `replica` at `seq`."""
        if replica not in self.honest:
            return
        first = self.states.setdefault(seq, (replica, digest))
        if first[1] != digest:
            self._fail(
                "checkpoint-agreement", at,
                f"replicas {first[0]} and {replica} differ at checkpoint {seq}",
            )  # fmt: skip

    def accept(self, at: float, accepted: Accepted) -> None:
        self.accepted.append((at, accepted))
        request = accepted.request
        if len(set(accepted.vouchers)) < self.config.weak:
            self._fail("client-rule", at, f"{request.client}#{request.timestamp}: too few vouchers")

    def finish(self, at: float, faulty: int, unfinished: list[str]) -> None:
        """End-of-run checks: results against the honest replicas, and liveness."""
        for when, accepted in self.accepted:
            key = (accepted.request.client, accepted.request.timestamp)
            honest = self.results.get(key)
            if honest is None:
                if faulty <= self.config.f:
                    self._fail("client-rule", when, f"{key} accepted, no honest replica ran it")
            elif honest[1] != accepted.result:
                self._fail(
                    "client-rule", when,
                    f"{key[0]}#{key[1]} accepted {accepted.result!r} vouched by"
                    f" {accepted.vouchers}; honest replicas computed {honest[1]!r}",
                )  # fmt: skip
        if faulty <= self.config.f and unfinished:
            self._fail("liveness", at, "unfinished: " + ", ".join(unfinished))
