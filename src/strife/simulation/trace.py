"""What happened in a run: a digest of every event, and the last few verbatim.

Two runs of one seed must produce the same digest; that is the replay test.
Events carry virtual time only (never wall-clock time), so they replay.
Log lines of the real code (warnings and errors) join the trace too, via
`LogSink`, minus their wall-clock timestamp.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable


class Trace:
    def __init__(self, clock: Callable[[], float], keep: int = 200) -> None:
        self._clock = clock
        self._digest = hashlib.blake2b(digest_size=16)
        self.events = 0
        self.last: deque[str] = deque(maxlen=keep)
        self.full: list[str] | None = None  # every event, when asked for (verbose runs)
        self.stopped = False

    def __call__(self, who: str, what: str) -> None:
        if self.stopped:
            return
        line = f"{self._clock():11.6f} {who:<10} {what}"
        self._digest.update(line.encode())
        self._digest.update(b"\n")
        self.events += 1
        self.last.append(line)
        if self.full is not None:
            self.full.append(line)

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()


class LogSink:
    """A text stream for `configure_logging`: JSON lines from the real code go to
    the trace of the run in progress (if any), without their timestamp."""

    def __init__(self) -> None:
        self.trace: Trace | None = None
        # Told of every error-level line: in Strife an error log means a broken rule.
        self.on_error: Callable[[str], None] | None = None

    def write(self, text: str) -> int:
        trace = self.trace
        if trace is None or not text.strip():
            return len(text)
        try:
            fields = json.loads(text)
        except ValueError:
            trace("log", text.strip())
            return len(text)
        fields.pop("ts", None)
        level = fields.pop("level", "")
        event = fields.pop("event", "")
        component = str(fields.pop("component", "")).rsplit(".", 1)[-1]
        rest = " ".join(f"{k}={v}" for k, v in fields.items())
        trace(component or "log", f"log {level} {event} {rest}".rstrip())
        if level == "error" and self.on_error is not None:
            self.on_error(f"{component}: {event} {rest}".rstrip())
        return len(text)

    def flush(self) -> None:
        pass


SINK = LogSink()
