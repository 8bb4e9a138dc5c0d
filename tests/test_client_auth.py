"""One login per need: whoever needs a session while a login is under way shares it."""

from __future__ import annotations

import asyncio
import time

import pytest

from strife.client import Credentials, LoginRequired, Session
from strife.client._auth import Authenticator


def _session(n: int) -> Session:
    return Session(f"c-{n}", "ada", "alpha", (), f"token-{n}", int(time.time() * 1000) + 600_000)


async def test_concurrent_needs_share_one_prompt_and_one_login() -> None:
    asked = asyncio.Event()
    answer = asyncio.Event()
    prompts: list[int] = []
    logins: list[Credentials] = []

    async def prompt() -> Credentials:  # a person typing a password
        prompts.append(1)
        asked.set()
        await answer.wait()
        return Credentials("ada", "pw", "alpha")

    async def login(credentials: Credentials) -> Session:
        logins.append(credentials)
        return _session(len(logins))

    auth = Authenticator(login, prompt)
    explicit = asyncio.create_task(auth.current())  # `await client.login()`
    await asked.wait()
    # While the prompt is open, the drainer and a read need a session too.
    drainer = asyncio.create_task(auth.refresh())
    read = asyncio.create_task(auth.token())
    answer.set()
    sessions = await asyncio.gather(explicit, drainer)
    assert await read == "token-1"
    assert len(prompts) == 1 and len(logins) == 1
    assert sessions[0] is sessions[1] is auth.session
    # A good token is reused; the next login is a new one.
    assert await auth.current() is sessions[0]
    assert (await auth.refresh()).access_token == "token-2"
    assert len(prompts) == 2


async def test_a_failed_login_fails_every_waiter_and_the_next_need_tries_again() -> None:
    answer = asyncio.Event()
    calls: list[int] = []

    async def prompt() -> Credentials:
        calls.append(1)
        if len(calls) == 1:
            await answer.wait()
            raise LoginRequired("no password given")
        return Credentials("ada", "pw", "alpha")

    async def login(credentials: Credentials) -> Session:
        return _session(len(calls))

    auth = Authenticator(login, prompt)
    first = asyncio.create_task(auth.refresh())
    second = asyncio.create_task(auth.refresh())
    answer.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(r, LoginRequired) for r in results) and len(calls) == 1
    assert (await auth.token()) == "token-2"


async def test_a_caller_that_gives_up_does_not_cancel_the_others_login() -> None:
    asked, answer = asyncio.Event(), asyncio.Event()

    async def prompt() -> Credentials:
        asked.set()
        await answer.wait()
        return Credentials("ada", "pw", "alpha")

    async def login(credentials: Credentials) -> Session:
        return _session(1)

    auth = Authenticator(login, prompt)
    impatient = asyncio.create_task(auth.refresh())
    patient = asyncio.create_task(auth.refresh())
    await asked.wait()  # both are waiting on the one login by now
    impatient.cancel()
    answer.set()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert (await patient).access_token == "token-1"
