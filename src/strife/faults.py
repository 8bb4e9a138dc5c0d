"""Failpoints: named places where a test can make a process die, stall or fail on purpose.

Crash recovery is only as good as the crashes it was tested against, and a
SIGKILL from outside cannot aim at "after the COMMIT decision is on disk but
before any bank hears it". `STRIFE_FAILPOINTS=gateway.after_commit_decision`
makes the process exit at exactly that point (status 75, no cleanup, like a
kill). A slow or refusing peer is the same kind of fault: a bank that holds a
prepare for three seconds, or refuses one transfer's commit, is configured the
same way. Unset in production, a failpoint is one set lookup.

Configuration, comma-separated in `STRIFE_FAILPOINTS` (read once, at import)::

    NAME[=ACTION][@KEY][*COUNT]

- ACTION: `exit` (the default: `os._exit(75)`), `delay:SECONDS` (the calling
  task sleeps; other tasks run on) or `error` (raises `FailpointError`; in a
  gRPC handler the caller sees UNKNOWN).
- `@KEY`: fire only for calls that name KEY (a transfer id); without it, for
  every call of that name.
- `*COUNT`: fire only the first COUNT times it matches; without it, every time.

Example: `bank.before_prepare=delay:3*1,bank.before_commit=error@<transfer id>`
delays the first prepare by three seconds and refuses every commit of one
transfer. One name may appear several times; each entry fires on its own.

`STRIFE_FAILPOINTS_FILE=PATH` adds the entries in that file (commas or
newlines), read again on every call, so a test can arm and disarm failpoints
in a running process, e.g. for a transfer id it learned from a reply. A
changed file is a new set of entries: their counts start afresh. A missing
file arms nothing.

Places (the KEYs they pass):

- `gateway.before_decision`, `gateway.after_commit_decision` (none).
- `bank.before_prepare`, `bank.before_commit`, `bank.before_abort` (the
  transfer ids): at the start of the bank's Prepare, Commit and Abort and of
  the batch calls PrepareTransfers and DecideTransfers (a batch fires an entry
  once if any of its transfer ids matches).
- `client.*`: see `strife.client._drainer`.

`failpoint()` is for synchronous code and acts on exit and error entries;
`await failpoint_async()` acts on all three. Each firing is logged
(`failpoint`, with its name, action and keys) before it acts.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from strife.observability.logging import get_logger

EXIT_STATUS = 75
ENV = "STRIFE_FAILPOINTS"
FILE_ENV = "STRIFE_FAILPOINTS_FILE"

_log = get_logger("strife.faults")
_ENTRY = re.compile(
    r"(?P<name>[^=@*\s]+)(?:=(?P<action>exit|error|delay:[0-9.]+))?"
    r"(?:@(?P<key>[^*\s]+))?(?:\*(?P<count>[0-9]+))?"
)


class FailpointError(RuntimeError):
    """Raised by a failpoint configured `error`."""


@dataclass(slots=True)
class Failpoint:
    """One configured entry, with how often it has fired."""

    name: str
    action: str = "exit"
    delay_s: float = 0.0
    key: str | None = None
    count: int | None = None
    fired: int = 0

    def take(self, name: str, keys: tuple[str, ...]) -> bool:
        """Does this entry fire for this call? Counts the firing if so."""
        if name != self.name or (self.key is not None and self.key not in keys):
            return False
        if self.count is not None and self.fired >= self.count:
            return False
        self.fired += 1
        return True


def parse(text: str) -> list[Failpoint]:
    """Entries of a configuration string (commas or whitespace between entries)."""
    entries = []
    for raw in re.split(r"[,\s]+", text):
        if not raw:
            continue
        match = _ENTRY.fullmatch(raw)
        if match is None:
            raise ValueError(f"bad failpoint {raw!r}: NAME[=exit|error|delay:S][@KEY][*COUNT]")
        action = match["action"] or "exit"
        delay_s = 0.0
        if action.startswith("delay:"):
            action, delay_s = "delay", float(action.removeprefix("delay:"))
        count = int(match["count"]) if match["count"] is not None else None
        entries.append(Failpoint(match["name"], action, delay_s, match["key"], count))
    return entries


_FROM_ENV = parse(os.environ.get(ENV, ""))
_NAMES = frozenset(f.name for f in _FROM_ENV)
_FILE = os.environ.get(FILE_ENV) or None
_from_file: tuple[str, list[Failpoint]] = ("", [])


def _file_entries() -> list[Failpoint]:
    global _from_file
    assert _FILE is not None
    try:
        with open(_FILE, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if text != _from_file[0]:
        _from_file = (text, parse(text))
    return _from_file[1]


def _firing(name: str, keys: tuple[str, ...], *, delays: bool) -> list[Failpoint]:
    entries = _FROM_ENV if _FILE is None else [*_FROM_ENV, *_file_entries()]
    fired = [f for f in entries if (delays or f.action != "delay") and f.take(name, keys)]
    for f in fired:
        _log.warning(
            "failpoint",
            failpoint=name,
            action=f.action,
            delay_s=f.delay_s or None,
            keys=list(keys[:16]),
        )
    return fired


def _act(fired: list[Failpoint]) -> float:
    """Exit or raise as configured; the total delay asked for otherwise."""
    for f in fired:
        if f.action == "exit":
            os._exit(EXIT_STATUS)
        if f.action == "error":
            raise FailpointError(f"failpoint {f.name}")
    return sum(f.delay_s for f in fired)


def failpoint(name: str, *keys: str) -> None:
    """A failpoint in synchronous code: exit and error entries (delays need
    `failpoint_async`, and are not fired here)."""
    if name not in _NAMES and _FILE is None:
        return
    _act(_firing(name, keys, delays=False))


async def failpoint_async(name: str, *keys: str) -> None:
    """A failpoint in a coroutine: exit, error, or sleep for the delay."""
    if name not in _NAMES and _FILE is None:
        return
    delay_s = _act(_firing(name, keys, delays=True))
    if delay_s > 0:
        await asyncio.sleep(delay_s)


async def decision_failpoints(decisions: Iterable[Any]) -> None:
    """A DecideTransfers batch: `bank.before_commit` for its commits and
    `bank.before_abort` for its aborts, each keyed by their transfer ids."""
    if not _NAMES and _FILE is None:
        return
    items = list(decisions)
    commits = tuple(d.transfer_id for d in items if d.commit)
    aborts = tuple(d.transfer_id for d in items if not d.commit)
    if commits:
        await failpoint_async("bank.before_commit", *commits)
    if aborts:
        await failpoint_async("bank.before_abort", *aborts)
