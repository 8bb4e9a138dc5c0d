"""Errors raised by the client itself, beside the server's typed errors.

Server refusals arrive as `strife.errors.StrifeError` subclasses (re-exported
from `strife.client`); these are the conditions the client detects locally,
before or without a call. Each class is a decision for the caller: wait
(`OutboxFull`), log in (`LoginRequired`), or fix the request.
"""

from __future__ import annotations


class ClientError(Exception):
    """A condition detected by the client library, not reported by a server."""


class OutboxFull(ClientError):
    """The outbox holds its limit of unsettled payments; no new one is accepted.

    Back-pressure, not a slow death: wait for queued payments to be delivered
    (or cancel some) and pay again.
    """

    def __init__(self, unsettled: int, limit: int) -> None:
        super().__init__(
            f"the outbox already holds {unsettled} unsettled payments (limit {limit});"
            " wait for them to be delivered or cancel some, then pay again"
        )
        self.unsettled = unsettled
        self.limit = limit


class LoginRequired(ClientError):
    """No usable access token and no way to get one (no credential callback, or it gave up)."""


class EntryNotFound(ClientError, LookupError):
    """No outbox entry with this id or idempotency key."""


class EntryStateError(ClientError):
    """The entry is not in a state that allows this operation (e.g. cancelling a settled one)."""
