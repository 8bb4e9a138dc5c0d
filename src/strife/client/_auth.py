"""Access tokens: a session from Login, refreshed through a credential callback.

The client never keeps a password: when the token is missing, about to
expire, or refused as expired, it asks the caller's `CredentialProvider` for
credentials, logs in, and forgets them. The outbox never sees a token either;
only `Session.to_json` writes one, for a caller that chooses to cache it
(the CLI, in a 0600 file).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from strife.client._exceptions import LoginRequired
from strife.client._models import Account, AccountRef


@dataclass(frozen=True, slots=True)
class Credentials:
    """What Login needs; the password is never stored or printed."""

    username: str
    password: str = field(repr=False)
    bank: str


CredentialProvider = Callable[[], Awaitable[Credentials]]
"""An async callable returning credentials; may raise `LoginRequired` to decline."""


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in customer: who, which accounts, and a short-lived token."""

    customer_id: str
    username: str
    bank: str
    accounts: tuple[Account, ...]
    access_token: str = field(repr=False)
    expires_at_unix_ms: int

    def expires_in_s(self, now_s: float | None = None) -> float:
        return self.expires_at_unix_ms / 1000 - (time.time() if now_s is None else now_s)

    def without_token(self) -> Session:
        """The identity without the secret: enough to queue payments offline."""
        return Session(self.customer_id, self.username, self.bank, self.accounts, "", 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "username": self.username,
            "bank": self.bank,
            "accounts": [
                {"bank": a.ref.bank, "account_id": a.ref.account_id, "currency": a.currency}
                for a in self.accounts
            ],
            "access_token": self.access_token,
            "expires_at_unix_ms": self.expires_at_unix_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        return cls(
            customer_id=str(data["customer_id"]),
            username=str(data["username"]),
            bank=str(data["bank"]),
            accounts=tuple(
                Account(AccountRef(str(a["bank"]), str(a["account_id"])), str(a["currency"]))
                for a in data.get("accounts", [])
            ),
            access_token=str(data.get("access_token", "")),
            expires_at_unix_ms=int(data.get("expires_at_unix_ms", 0)),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json())


Login = Callable[[Credentials], Awaitable[Session]]


class Authenticator:
    """Hands out a valid token, logging in again (once, for all callers) when needed.

    A login through the credential callback is shared: whoever needs a
    session while one is under way (the drainer, `login()`, a read) waits
    for it, so a prompting callback asks once and the gateway sees one
    Login. A token is refreshed `refresh_margin_s` before it expires, so a
    call rarely meets TOKEN_EXPIRED; when one does (clock skew, a key
    rotated), `invalidate` drops that token and the next `token()` logs in
    again.
    """

    def __init__(
        self,
        login: Login,
        provider: CredentialProvider | None,
        session: Session | None = None,
        *,
        refresh_margin_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh_margin_s < 0:
            raise ValueError("refresh_margin_s must not be negative")
        self._login = login
        self._provider = provider
        self._session = session
        self._margin_s = refresh_margin_s
        self._clock = clock
        self._running: asyncio.Future[Session] | None = None
        self._listeners: list[Callable[[Session], None]] = []

    @property
    def session(self) -> Session | None:
        return self._session

    def on_session(self, listener: Callable[[Session], None]) -> None:
        """Called with each new session (the CLI caches it; the drainer wakes up)."""
        self._listeners.append(listener)

    def adopt(self, session: Session) -> None:
        self._session = session
        for listener in self._listeners:
            listener(session)

    def _valid(self, session: Session | None) -> bool:
        return (
            session is not None
            and bool(session.access_token)
            and session.expires_in_s(self._clock()) > self._margin_s
        )

    async def token(self) -> str:
        return (await self.current()).access_token

    async def current(self) -> Session:
        """The session if its token is still good, else one (shared) login."""
        session = self._session
        if self._valid(session):
            assert session is not None
            return session
        return await self.refresh()

    async def refresh(self) -> Session:
        """Log in through the credential callback, or join the login under way."""
        running = self._running
        if running is None:
            running = self._running = asyncio.ensure_future(self._log_in())
            running.add_done_callback(self._finished)
        # Shielded: one caller giving up does not cancel the others' login.
        return await asyncio.shield(running)

    async def _log_in(self) -> Session:
        if self._provider is None:
            raise LoginRequired(
                "the access token is missing or expired and no credential callback was given;"
                " log in again"
            )
        credentials = await self._provider()
        session = await self._login(credentials)
        self.adopt(session)
        return session

    def _finished(self, running: asyncio.Future[Session]) -> None:
        if self._running is running:
            self._running = None
        if not running.cancelled():
            running.exception()  # seen by every waiter; never "never retrieved"

    def invalidate(self, token: str) -> None:
        """The server refused `token`: stop using it (unless a newer one replaced it)."""
        session = self._session
        if session is not None and session.access_token == token:
            self._session = session.without_token()
