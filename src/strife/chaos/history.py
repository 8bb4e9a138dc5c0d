"""What the customers asked for and what they were told, per intent and per key.

An intent is one payment a customer wants made once. The outbox may send it
under several idempotency keys (a transient abort is resubmitted under a new
key); every key it used belongs to the intent. Operations are recorded as
Jepsen does: `invoke`, then `ok` (COMMITTED), `fail` (ABORTED or FAILED, or
refused before it was queued) or `unknown` (still queued, a deadline, a
cancelled call); later answers for a key (the outbox settling it, a gateway
asked at quiescence) are recorded as `answer` events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

INVOKE, OK, FAIL, UNKNOWN, ANSWER = "invoke", "ok", "fail", "unknown", "answer"


@dataclass
class Intent:
    id: int
    customer: str  # username
    customer_id: str
    bank: str  # the payer's bank (the token's)
    from_account: str
    to_bank: str
    to_account: str
    amount_minor: int
    via: str  # "outbox", or "deadline" / "cancel" for a direct call later queued
    keys: list[str] = field(default_factory=list)
    answers: dict[str, set[str]] = field(default_factory=dict)  # key -> statuses heard
    final_state: str = ""  # the outbox entry's state at quiescence
    queued: bool = True  # False: refused before it reached the outbox

    def heard(self, key: str, status: str) -> None:
        if key not in self.keys:
            self.keys.append(key)
        self.answers.setdefault(key, set()).add(status)


@dataclass
class History:
    started: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    intents: dict[int, Intent] = field(default_factory=dict)
    by_key: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 4)

    def new_intent(self, **fields: Any) -> Intent:
        intent = Intent(id=len(self.intents) + 1, **fields)
        self.intents[intent.id] = intent
        return intent

    def record(
        self, kind: str, intent: Intent, key: str, status: str = "", **extra: Any
    ) -> dict[str, Any]:
        if key and key not in intent.keys:
            intent.keys.append(key)
        if key:
            self.by_key.setdefault(key, intent.id)
        if status and kind in (OK, FAIL, ANSWER) and key:
            intent.heard(key, status)
        event = {
            "t": self.now(),
            "kind": kind,
            "intent": intent.id,
            "key": key,
            "status": status,
            **extra,
        }
        self.events.append(event)
        return event

    def link_key(self, intent: Intent, key: str) -> None:
        """A key the outbox resubmitted the intent under."""
        if key not in intent.keys:
            intent.keys.append(key)
            self.by_key[key] = intent.id
            self.events.append(
                {"t": self.now(), "kind": "resubmit", "intent": intent.id, "key": key}
            )

    def completions(self) -> list[dict[str, Any]]:
        """The first answer to each invoke, with its latency (for the plots)."""
        started: dict[int, float] = {}
        done = []
        for event in self.events:
            if event["kind"] == INVOKE:
                started.setdefault(event["intent"], event["t"])
            elif event["kind"] in (OK, FAIL, UNKNOWN) and event["intent"] in started:
                t0 = started.pop(event["intent"])
                done.append({**event, "latency_s": event["t"] - t0})
        return done
