"""A deterministic, seeded simulator for the PBFT core (`python -m strife.bft.simulation`).

One seed draws a world (`draw`): a group of 4 or 7 replicas running the real
`Replica`, a few clients making requests one at a time through the real
`Client`, up to f Byzantine replicas (`strife.bft.byzantine`), perhaps an
honest replica partitioned away for a while, and a network that drops,
duplicates, delays and reorders messages until the global stabilisation time
(GST), after which every message arrives within `DELTA`. Virtual time, one
event queue ordered by (time, insertion), one PRNG stream per component: the
same seed gives the same run, event for event. `invariants.Checker` checks
safety throughout and liveness at the end; a failing seed prints its world and
the tail of its event trace, and replays with `--seed N`.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from strife.bft.byzantine import Behaviour, Wire, make_behaviour
from strife.bft.client import Client
from strife.bft.effects import (
    Broadcast,
    CancelTimer,
    CheckpointTaken,
    Dropped,
    Executed,
    Output,
    Receive,
    Send,
    SendReply,
    SetTimer,
    StateInstalled,
    TimerExpired,
    ViewEntered,
)
from strife.bft.invariants import Checker, Violation
from strife.bft.messages import Message, Reply
from strife.bft.replica import Replica
from strife.bft.scenario import Scenario, draw, draw_hard
from strife.bft.signing import Keys, ed25519_keys, keyed_hash_keys, replica_identity
from strife.bft.statemachine import Accounts

__all__ = [
    "DELTA",
    "LIVENESS_S",
    "Result",
    "Scenario",
    "draw",
    "draw_hard",
    "main",
    "run",
    "run_seed",
]

DELTA = 0.02
"""After GST every message arrives within this many virtual seconds."""
LIVENESS_S = 60.0
"""After GST (and the end of any partition), every request must complete within this."""
CLIENT_RETRY_S = 1.5


@dataclass
class Result:
    scenario: Scenario
    violations: list[Violation]
    events: int
    virtual_s: float
    wall_s: float
    digest: str
    views: int
    executed: int
    accepted: int
    unfinished: int
    installs: int
    dropped: Counter[str]
    last_executed: tuple[int, ...]
    """Per replica, the last sequence number it executed (or installed)."""
    done_after_settled_s: float
    """From GST (or the partition's end, if later) to the last client's last result."""
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self) -> str:
        checks = sorted({v.check for v in self.violations})
        head = f"seed {self.scenario.seed} " + ("ok" if self.ok else "FAILED: " + ", ".join(checks))
        drops = ", ".join(f"{k}={v}" for k, v in self.dropped.most_common(6)) or "none"
        lines = [
            head,
            self.scenario.describe(),
            f"  run:    {self.events} events, {self.virtual_s:.2f} virtual s, {self.wall_s:.3f} s;"
            f" view {self.views}, {self.executed} sequence numbers executed,"
            f" {self.accepted} results accepted, {self.unfinished} unfinished,"
            f" {self.installs} state transfers; trace {self.digest[:12]}",
            f"  dropped by honest replicas: {drops}",
        ]
        if self.violations:
            lines.append("  violations:")
            lines += [f"    {v}" for v in self.violations[:10]]
        if self.trace:
            lines.append(f"  the last {len(self.trace)} events:")
            lines += [f"    {line}" for line in self.trace]
        lines.append(f"  replay: {self.scenario.replay_command()}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Deliver:
    src: int | str
    dst: int | str
    message: Message


@dataclass(frozen=True)
class _Timer:
    replica: int
    kind: str
    token: int


@dataclass(frozen=True)
class _ClientSend:
    client: int
    token: int | None = None
    """A retry carries the token it was set with; a newer request makes it stale."""


_Event = _Deliver | _Timer | _ClientSend


@dataclass
class _SimClient:
    client: Client
    account: str
    remaining: int
    started: int = 0
    retry_token: int = 0
    done_at: float | None = None


class _World:
    def __init__(self, scenario: Scenario, trace: int) -> None:
        self.s = scenario
        config = scenario.config
        seed = scenario.seed
        self.net_rng = random.Random(f"strife-bft-net/{seed}")
        self.client_rng = random.Random(f"strife-bft-clients/{seed}")
        client_ids = [f"client-{i}" for i in range(scenario.clients)]
        identities = [replica_identity(r) for r in range(config.n)] + client_ids
        keys: Keys = (
            ed25519_keys(identities, seed)
            if scenario.signatures == "ed25519"
            else keyed_hash_keys(identities, seed)
        )
        self.apps = [Accounts() for _ in range(config.n)]
        self.replicas = [
            Replica(config, r, keys.signer(replica_identity(r)), keys.verifier, self.apps[r])
            for r in range(config.n)
        ]
        self.behaviours: dict[int, Behaviour] = {
            r: make_behaviour(
                name, config, r, keys.signer(replica_identity(r)),
                random.Random(f"strife-bft-byzantine/{seed}/{r}"),
            )
            for r, name in scenario.faulty
        }  # fmt: skip
        self.clients = [
            _SimClient(
                Client(config, keys.signer(c), keys.verifier), f"acct-{i}", scenario.requests
            )
            for i, c in enumerate(client_ids)
        ]
        self.checker = Checker(config, frozenset(range(config.n)) - set(self.behaviours))
        self.queue: list[tuple[float, int, _Event]] = []
        self.order = 0
        self.now = 0.0
        self.tokens: dict[tuple[int, str], int] = {}
        self.events = 0
        self.digest = hashlib.sha256()
        self.trace: deque[str] | None = deque(maxlen=trace) if trace else None
        self.views = 0
        self.installs = 0
        self.dropped: Counter[str] = Counter()

    # -- the event queue ---------------------------------------------------

    def push(self, at: float, event: _Event) -> None:
        self.order += 1
        heapq.heappush(self.queue, (at, self.order, event))

    def note(self, line: str) -> None:
        self.digest.update(line.encode())
        if self.trace is not None:
            self.trace.append(f"{self.now:9.4f} {line}")

    def cut(self, a: int | str, b: int | str, at: float) -> bool:
        part = self.s.partition
        return part is not None and part[1] <= at < part[2] and part[0] in (a, b)

    def send(self, src: int | str, dst: int | str, message: Message, extra: float = 0.0) -> None:
        if self.cut(src, dst, self.now):
            return
        rng = self.net_rng
        if self.now < self.s.gst:
            if rng.random() < self.s.drop:
                return
            copies = 2 if rng.random() < self.s.duplicate else 1
            for _ in range(copies):
                at = self.now + extra + rng.uniform(0.0, self.s.delay_max)
                self.push(at, _Deliver(src, dst, message))
        else:
            self.push(self.now + extra + rng.uniform(0.0, DELTA), _Deliver(src, dst, message))

    # -- clients -----------------------------------------------------------

    def client_send(self, index: int) -> None:
        sim = self.clients[index]
        if sim.client.current is None:
            if sim.remaining == 0:
                return
            sim.remaining -= 1
            sim.started += 1
            request = sim.client.request(self.operation(index, sim))
        else:
            request = sim.client.current
        self.note(f"client-{index} sends #{request.timestamp}")
        for r in range(self.s.config.n):
            self.send(sim.client.id, r, request)
        sim.retry_token += 1
        self.push(self.now + CLIENT_RETRY_S, _ClientSend(index, sim.retry_token))

    def operation(self, index: int, sim: _SimClient) -> bytes:
        rng = self.client_rng
        if sim.started == 1:
            return f"deposit {sim.account} 1000".encode()
        others = [c.account for c in self.clients if c is not sim]
        if others and rng.random() < 0.8:
            return f"transfer {sim.account} {rng.choice(others)} {rng.randint(1, 600)}".encode()
        return f"balance {sim.account}".encode()

    def client_reply(self, index: int, reply: Reply) -> None:
        sim = self.clients[index]
        accepted = sim.client.on_reply(reply)
        if accepted is None:
            return
        self.note(f"client-{index} accepts #{accepted.request.timestamp} {accepted.result!r}")
        self.checker.accept(self.now, accepted)
        sim.retry_token += 1
        if sim.remaining == 0:
            sim.done_at = self.now
        else:
            self.push(self.now + self.client_rng.uniform(0.0, 0.2), _ClientSend(index))

    # -- replicas ----------------------------------------------------------

    def replica_outputs(self, r: int, outputs: Sequence[Output]) -> None:
        wires: list[Wire] = []
        n = self.s.config.n
        for o in outputs:
            match o:
                case Send():
                    wires.append(Wire(o.to, o.message))
                case Broadcast():
                    wires += [Wire(to, o.message) for to in range(n) if to != r]
                case SendReply():
                    wires.append(Wire(o.reply.client, o.reply))
                case SetTimer():
                    token = self.tokens.get((r, o.kind), 0) + 1
                    self.tokens[(r, o.kind)] = token
                    self.push(self.now + o.after, _Timer(r, o.kind, token))
                case CancelTimer():
                    self.tokens[(r, o.kind)] = self.tokens.get((r, o.kind), 0) + 1
                case Executed():
                    self.note(f"r{r} executes {o.seq} {o.digest.hex()[:8]} ({len(o.results)})")
                    self.checker.executed(self.now, r, o.seq, o.digest)
                    for request, result in o.results:
                        self.checker.result(self.now, r, request.client, request.timestamp, result)
                case CheckpointTaken():
                    self.checker.state(self.now, r, o.seq, o.state_digest)
                case StateInstalled():
                    self.note(f"r{r} installs state at {o.seq}")
                    self.installs += 1
                    self.checker.state(self.now, r, o.seq, o.state_digest)
                case ViewEntered():
                    self.note(f"r{r} enters view {o.view}")
                    self.views = max(self.views, o.view)
                case Dropped():
                    if r in self.checker.honest:
                        self.dropped[o.reason] += 1
        behaviour = self.behaviours.get(r)
        if behaviour is not None:
            wires = behaviour.speaks(wires)
        for wire in wires:
            self.send(r, wire.to, wire.message, wire.delay)

    def deliver(self, src: int | str, dst: int | str, message: Message) -> None:
        if self.cut(src, dst, self.now):
            return
        if isinstance(dst, str):
            assert isinstance(message, Reply), message
            self.client_reply(int(dst.rsplit("-", 1)[1]), message)
            return
        behaviour = self.behaviours.get(dst)
        if behaviour is not None and not behaviour.hears(message):
            return
        self.note(f"{src}->r{dst} {message.KIND}")
        self.replica_outputs(dst, self.replicas[dst].handle(Receive(message)))

    def timer(self, r: int, kind: str, token: int) -> None:
        if self.tokens.get((r, kind)) != token:
            return
        behaviour = self.behaviours.get(r)
        if behaviour is not None and behaviour.name == "silent":
            return
        self.note(f"r{r} timer {kind}")
        self.replica_outputs(r, self.replicas[r].handle(TimerExpired(kind)))

    # -- the run -----------------------------------------------------------

    def unfinished(self) -> list[str]:
        return [
            f"{c.client.id} ({c.remaining + (c.client.current is not None)} left)"
            for c in self.clients
            if c.done_at is None
        ]

    def run(self) -> None:
        rng = self.client_rng
        for index in range(len(self.clients)):
            self.push(rng.uniform(0.0, 0.5), _ClientSend(index))
        deadline = self.s.settled_at + LIVENESS_S
        while self.queue:
            at, _, event = heapq.heappop(self.queue)
            if at > deadline:
                break
            self.now = at
            self.events += 1
            match event:
                case _Deliver():
                    self.deliver(event.src, event.dst, event.message)
                case _Timer():
                    self.timer(event.replica, event.kind, event.token)
                case _ClientSend():
                    if event.token in (None, self.clients[event.client].retry_token):
                        self.client_send(event.client)
            if all(c.done_at is not None for c in self.clients):
                break
        self.checker.finish(self.now, self.s.faulty_count, self.unfinished())


def run(scenario: Scenario, *, trace: int = 0) -> Result:
    """Run one world to the end; `trace` keeps that many of the last events."""
    started = time.perf_counter()
    world = _World(scenario, trace)
    world.run()
    honest = world.checker.honest
    return Result(
        scenario=scenario,
        violations=world.checker.violations,
        events=world.events,
        virtual_s=world.now,
        wall_s=time.perf_counter() - started,
        digest=world.digest.hexdigest(),
        views=world.views,
        executed=max((world.replicas[r].last_executed for r in honest), default=0),
        accepted=len(world.checker.accepted),
        unfinished=len(world.unfinished()),
        installs=world.installs,
        dropped=world.dropped,
        last_executed=tuple(r.last_executed for r in world.replicas),
        done_after_settled_s=max(
            [0.0] + [c.done_at - scenario.settled_at for c in world.clients if c.done_at]
        ),
        trace=list(world.trace or ()),
    )


def run_seed(seed: int, *, trace: int = 0, hard: bool = False, **overrides: Any) -> Result:
    """Run seed `seed`'s world (`draw_hard`'s with `hard`), with `Scenario` fields
    in `overrides` replaced."""
    return run(replace((draw_hard if hard else draw)(seed), **overrides), trace=trace)


def _faulty(text: str) -> tuple[tuple[int, str], ...]:
    pairs = [item.split("=") for item in text.split(",") if item]
    return tuple(sorted((int(r), name) for r, name in pairs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strife.bft.simulation",
        description="Deterministic simulation of PBFT with Byzantine replicas.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run (replay) this one seed")
    which.add_argument("--seeds", type=int, default=200, help="run this many seeds")
    parser.add_argument("--first", type=int, default=1, help="first seed of --seeds")
    parser.add_argument("--trace", type=int, default=60, help="events to print for a failure")
    parser.add_argument("--faulty", type=_faulty, help="override: e.g. 0=lie,1=lie")
    parser.add_argument("--ed25519", action="store_true", help="override: Ed25519 signatures")
    parser.add_argument(
        "--hard", action="store_true", help="harsher worlds: f faulty, 30-40%% loss, late GST"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"hard": args.hard}
    if args.faulty is not None:
        overrides["faulty"] = args.faulty
    if args.ed25519:
        overrides["signatures"] = "ed25519"
    if args.seed is not None:
        result = run_seed(args.seed, trace=args.trace, **overrides)
        print(result.report())
        return 0 if result.ok else 1
    started = time.perf_counter()
    failed = []
    for seed in range(args.first, args.first + args.seeds):
        result = run_seed(seed, **overrides)
        if not result.ok:
            failed.append(seed)
            print(run_seed(seed, trace=args.trace, **overrides).report())
    wall = time.perf_counter() - started
    print(f"{args.seeds} seeds in {wall:.1f} s ({args.seeds / wall:.0f} seeds/s)")
    if failed:
        print(f"{len(failed)} failed: " + " ".join(map(str, failed)))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
