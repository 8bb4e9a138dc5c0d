"""A replica group's shape and PBFT's tunables."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    """n = 3f + 1 replicas, numbered 0..n-1; the primary of view v is v mod n.

    `window` (the distance from the low to the high water mark) must span at
    least two checkpoint intervals, so the primary can keep proposing while the
    next checkpoint gathers its certificate.
    """

    n: int = 4
    checkpoint_interval: int = 8
    window: int = 16
    batch_size: int = 8
    max_in_flight: int = 2
    """Sequence numbers the primary keeps open at once; requests arriving meanwhile batch up."""
    timeout: float = 1.0
    """Base request and view-change timeout (seconds); doubles with each failed view."""
    max_operation_bytes: int = 4096
    state_chunk_bytes: int = 1 << 20
    """A snapshot's bytes per STATE-REPLY: as hex inside JSON, well under the 4 MiB a
    gRPC message may carry."""

    def __post_init__(self) -> None:
        if self.n < 4 or (self.n - 1) % 3:
            raise ValueError(f"PBFT needs n = 3f + 1 >= 4 replicas, not {self.n}")
        if self.checkpoint_interval < 1 or self.window < 2 * self.checkpoint_interval:
            raise ValueError("the window must span at least two checkpoint intervals")
        if self.batch_size < 1 or self.max_in_flight < 1 or self.timeout <= 0:
            raise ValueError("batch size, in-flight limit and timeout must be positive")
        if self.state_chunk_bytes < 1:
            raise ValueError("a state chunk holds at least one byte")

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """2f + 1: any two quorums share an honest replica."""
        return 2 * self.f + 1

    @property
    def weak(self) -> int:
        """f + 1: at least one of them is honest."""
        return self.f + 1

    def primary(self, view: int) -> int:
        return view % self.n
