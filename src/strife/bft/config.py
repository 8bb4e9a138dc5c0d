"""A replica group's shape and PBFT's tunables."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WIRE_LIMIT_BYTES", "Config"]

WIRE_LIMIT_BYTES = 256 * 1024 * 1024
"""The most a group's largest message may come to (`Config.largest_message_bytes`)."""
_OVERHEAD = 512
"""Per encoded message or request, beyond its operation: fields, names, a signature as hex."""


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
        if self.largest_message_bytes > WIRE_LIMIT_BYTES:
            raise ValueError(
                f"a NEW-VIEW could take {self.largest_message_bytes:,} bytes, over"
                f" {WIRE_LIMIT_BYTES:,}: a smaller window, batch or operation size"
            )

    @property
    def largest_message_bytes(self) -> int:
        """A bound on any message's encoding: a NEW-VIEW whose 2f+1 VIEW-CHANGEs each
        carry a prepared certificate for every sequence number of the window, every
        batch full of requests of the largest operation (bytes travel as hex), and
        the pre-prepares it derives; or a STATE-REPLY with a full chunk. Replica links
        and servers take messages this large, so a view change under load is never
        lost to the transport's limit."""
        request = 2 * self.max_operation_bytes + _OVERHEAD
        pre_prepare = self.batch_size * request + _OVERHEAD
        certificate = pre_prepare + 2 * self.f * _OVERHEAD
        view_change = self.window * certificate + (self.quorum + 1) * _OVERHEAD
        new_view = self.quorum * view_change + self.window * pre_prepare + _OVERHEAD
        state_reply = 2 * self.state_chunk_bytes + (self.quorum + 1) * _OVERHEAD
        return max(new_view, state_reply)

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
