"""A PBFT client's side, pure: sign requests, and believe a result only when f+1 replicas agree.

At most f replicas are faulty, so f+1 matching signed replies include one
from an honest replica, and an honest replica replies only with what it
executed in the agreed order. Fewer than f+1 prove nothing: f liars could
have written them. Replies are matched on the request's timestamp and the
result; the view they name may differ (a reply resent after a view change).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from strife.bft.certificates import signed_by
from strife.bft.config import Config
from strife.bft.messages import Reply, Request
from strife.bft.signing import Signer, Verifier

__all__ = ["Accepted", "Client"]


@dataclass(frozen=True)
class Accepted:
    request: Request
    result: bytes
    vouchers: tuple[int, ...]
    """The replicas whose matching replies carried the result (at least f+1)."""


class Client:
    """One client with at most one request outstanding (the paper's assumption)."""

    def __init__(self, config: Config, signer: Signer, verifier: Verifier) -> None:
        self.config = config
        self.id = signer.identity
        self._signer = signer
        self._verifier = verifier
        self.timestamp = 0
        self.current: Request | None = None
        self._results: dict[int, bytes] = {}
        self.dropped: Counter[str] = Counter()

    def request(self, operation: bytes) -> Request:
        """A new request, with a timestamp above every earlier one of this client."""
        assert self.current is None, "one request at a time"
        self.timestamp += 1
        unsigned = Request(self.id, self.timestamp, operation)
        self.current = replace(unsigned, signature=self._signer.sign(unsigned.payload))
        self._results = {}
        return self.current

    def on_reply(self, reply: Reply) -> Accepted | None:
        """Count a reply; the result once f+1 distinct replicas sent the same one."""
        current = self.current
        if not signed_by(self._verifier, reply) or not 0 <= reply.replica < self.config.n:
            self.dropped["bad-signature"] += 1
            return None
        if current is None or (reply.client, reply.timestamp) != (self.id, current.timestamp):
            self.dropped["not-outstanding"] += 1
            return None
        # A replica's first answer counts; a faulty one cannot vote twice.
        self._results.setdefault(reply.replica, reply.result)
        votes = Counter(self._results.values())
        result, count = max(votes.items(), key=lambda item: (item[1], item[0]))
        if count < self.config.weak:
            return None
        vouchers = tuple(sorted(r for r, res in self._results.items() if res == result))
        self.current = None
        return Accepted(current, result, vouchers)
