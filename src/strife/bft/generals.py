"""The Byzantine generals: Lamport, Shostak and Pease's oral-messages algorithm OM(m).

General 0 is the commander, 1..n-1 the lieutenants. OM(m) runs in m + 1 rounds
and is written here as the message tree it produces: a value received along the
path (0, a, b) is what b said a said the commander said. In round k every path
of k distinct generals starting with 0 reaches every general not on it, so round
k carries (n-1)(n-2)...(n-k) messages.

A lieutenant decides bottom up over its tree: at a path of m + 1 generals it
takes the value it received; above that, the majority of the value it received
along the path and what it resolved for each one-longer path. Ties, and values
that never arrived, are RETREAT: the paper's default, so a silent traitor is
just one more vote for retreating.

Messages are oral: a receiver knows who sent a message (the channel tells it)
but nothing proves what the sender was told, so a traitor can relay anything.
With n > 3m and at most m traitors this still gives IC1 (the loyal lieutenants
agree) and IC2 (they obey a loyal commander); with n <= 3m it cannot, and
`run` shows where it breaks.

Everything here is pure and deterministic: a traitor's random choices come from
its seed and the message it is choosing for, so the same run gives the same
messages whether it is computed here or played out between processes.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

COMMANDER = 0

Path = tuple[int, ...]


class Order(StrEnum):
    ATTACK = "attack"
    RETREAT = "retreat"

    @property
    def opposite(self) -> Order:
        return Order.RETREAT if self is Order.ATTACK else Order.ATTACK


DEFAULT = Order.RETREAT


def name(general: int) -> str:
    return "C" if general == COMMANDER else f"L{general}"


def path_text(path: Path) -> str:
    return ">".join(name(g) for g in path)


@dataclass(frozen=True, slots=True)
class Message:
    """One slot of the message tree: `path[-1]` tells `receiver` the value it
    holds for `path[:-1]`. `value` None: the sender said nothing."""

    path: Path
    receiver: int
    value: Order | None

    @property
    def sender(self) -> int:
        return self.path[-1]

    @property
    def round(self) -> int:
        return len(self.path)


# --------------------------------------------------------------------- strategies


class Strategy(Protocol):
    """What a general sends: `received` is the value it holds for `path`
    (the commander: its order, with `path` empty)."""

    @property
    def name(self) -> str: ...

    def send(
        self, sender: int, path: Path, receiver: int, received: Order, seed: int
    ) -> Order | None: ...


def message_rng(seed: int, sender: int, path: Path, receiver: int) -> random.Random:
    """One generator per message, so a choice does not depend on the order the
    messages are produced in (a string seed is hashed with SHA-512, the same in
    every process)."""
    return random.Random(f"{seed}/{sender}/{','.join(map(str, path))}/{receiver}")


@dataclass(frozen=True, slots=True)
class Loyal:
    name: str = "loyal"

    def send(
        self, sender: int, path: Path, receiver: int, received: Order, seed: int
    ) -> Order | None:
        return received


@dataclass(frozen=True, slots=True)
class Flip:
    """Relays the opposite of what it was told, to everyone."""

    name: str = "flip"

    def send(
        self, sender: int, path: Path, receiver: int, received: Order, seed: int
    ) -> Order | None:
        return received.opposite


@dataclass(frozen=True, slots=True)
class Split:
    """Two-faced: ATTACK to odd-numbered generals, RETREAT to even ones,
    whatever it was told. As commander: different orders to different lieutenants."""

    name: str = "split"

    def send(
        self, sender: int, path: Path, receiver: int, received: Order, seed: int
    ) -> Order | None:
        return Order.ATTACK if receiver % 2 else Order.RETREAT


@dataclass(frozen=True, slots=True)
class Arbitrary:
    """Any value or none, chosen afresh for each message from the seed."""

    name: str = "random"
    silence: float = 0.2

    def send(
        self, sender: int, path: Path, receiver: int, received: Order, seed: int
    ) -> Order | None:
        rng = message_rng(seed, sender, path, receiver)
        if rng.random() < self.silence:
            return None
        return rng.choice((Order.ATTACK, Order.RETREAT))


@dataclass(frozen=True, slots=True)
class Silent:
    """Sends nothing: every receiver falls back to the default."""

    name: str = "silent"

    def send(
        self, sender: int, path: Path, receiver: int, received: Order, seed: int
    ) -> Order | None:
        return None


@dataclass(frozen=True, slots=True)
class Scripted:
    """Exactly the given value for each listed message slot, keyed by
    (message path, receiver); `otherwise` for the rest. For exhaustive tests."""

    table: Mapping[tuple[Path, int], Order | None]
    otherwise: Strategy = field(default_factory=Loyal)
    name: str = "scripted"

    def send(
        self, sender: int, path: Path, receiver: int, received: Order, seed: int
    ) -> Order | None:
        key = ((*path, sender), receiver)
        if key in self.table:
            return self.table[key]
        return self.otherwise.send(sender, path, receiver, received, seed)


LOYAL = Loyal()
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Flip(), Split(), Arbitrary(), Silent())}
MIXED = "mixed"


# --------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Setup:
    """One run: `m` is the number of traitors OM(m) is asked to tolerate,
    `traitors` the generals that actually lie, and how."""

    n: int
    m: int
    order: Order = Order.ATTACK
    traitors: Mapping[int, Strategy] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be at least 2 (a commander and a lieutenant), not {self.n}")
        if self.m < 0:
            raise ValueError(f"m must not be negative, not {self.m}")
        bad = [g for g in self.traitors if not 0 <= g < self.n]
        if bad:
            raise ValueError(f"traitor {bad[0]} is not a general of 0..{self.n - 1}")

    def strategy(self, general: int) -> Strategy:
        return self.traitors.get(general, LOYAL)

    def is_loyal(self, general: int) -> bool:
        return general not in self.traitors

    @property
    def lieutenants(self) -> range:
        return range(1, self.n)

    @property
    def loyal_lieutenants(self) -> list[int]:
        return [g for g in self.lieutenants if self.is_loyal(g)]

    @property
    def guaranteed(self) -> bool:
        """Whether the theorem covers this run: n > 3m and at most m traitors."""
        return self.n > 3 * self.m and len(self.traitors) <= self.m


def plan(
    n: int,
    traitors: int,
    *,
    m: int | None = None,
    seed: int = 0,
    order: Order = Order.ATTACK,
    traitor_commander: bool = False,
    strategy: str = MIXED,
) -> Setup:
    """A run with `traitors` traitors picked from the seed (the commander among
    them if asked) and OM(m), m defaulting to the number of traitors.

    `strategy` names one strategy for every traitor, or `mixed`: each traitor
    draws one from the seed.
    """
    if traitors < 0 or traitors > n:
        raise ValueError(f"traitors must be between 0 and n={n}, not {traitors}")
    if traitor_commander and traitors == 0:
        raise ValueError("a traitorous commander needs at least one traitor")
    if traitors == n and not traitor_commander:
        raise ValueError(f"{n} traitors among {n} generals include the commander")
    if strategy != MIXED and strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(strategy_names())}")
    rng = random.Random(f"plan/{seed}")
    lieutenants = list(range(1, n))
    chosen = [COMMANDER] if traitor_commander else []
    chosen += sorted(rng.sample(lieutenants, traitors - len(chosen)))
    kinds = sorted(STRATEGIES)
    table = {g: STRATEGIES[rng.choice(kinds) if strategy == MIXED else strategy] for g in chosen}
    return Setup(n=n, m=traitors if m is None else m, order=order, traitors=table, seed=seed)


def strategy_names() -> list[str]:
    return [*sorted(STRATEGIES), MIXED]


# --------------------------------------------------------------------- the tree


def messages_in_round(n: int, k: int) -> int:
    """(n-1)(n-2)...(n-k): paths of k distinct generals from the commander,
    each sent to every general not on it."""
    return math.prod(max(n - i, 0) for i in range(1, k + 1))


def total_messages(n: int, m: int) -> int:
    return sum(messages_in_round(n, k) for k in range(1, m + 2))


def receivers(n: int, path: Path) -> list[int]:
    """Who hears the value relayed along `path`: every general not on it."""
    return [g for g in range(1, n) if g not in path]


def slots(n: int, m: int) -> Iterator[tuple[Path, int]]:
    """Every (path, receiver) of OM(m), round by round."""
    level: list[Path] = [(COMMANDER,)]
    for _ in range(m + 1):
        for path in level:
            for receiver in receivers(n, path):
                yield path, receiver
        level = [(*path, g) for path in level for g in receivers(n, path)]


def expected_paths(n: int, m: int, me: int, k: int) -> list[Path]:
    """The paths lieutenant `me` hears in round k (k = 1..m+1)."""
    if k > m + 1:
        return []
    others = [g for g in range(1, n) if g != me]
    return [(COMMANDER, *rest) for rest in itertools.permutations(others, k - 1)]


def outgoing(setup: Setup, sender: int, path: Path, received: Order) -> list[Message]:
    """What `sender` sends on, having been told `received` along `path` (empty
    for the commander's order); nothing once the path is m + 1 long."""
    if len(path) > setup.m:
        return []
    full = (*path, sender)
    strategy = setup.strategy(sender)
    return [
        Message(full, r, strategy.send(sender, path, r, received, setup.seed))
        for r in receivers(setup.n, full)
    ]


# --------------------------------------------------------------------- deciding


def majority(values: Sequence[Order]) -> Order:
    """The strict majority, else the default."""
    attack = sum(1 for v in values if v is Order.ATTACK)
    if 2 * attack > len(values):
        return Order.ATTACK
    if 2 * (len(values) - attack) > len(values):
        return Order.RETREAT
    return DEFAULT


@dataclass(frozen=True, slots=True)
class Vote:
    """A lieutenant's last majority: the commander's order as it heard it, and
    what it resolved each other lieutenant to have heard (OM(m-1) with that
    lieutenant as commander)."""

    lieutenant: int
    direct: Order
    relayed: Mapping[int, Order]
    decision: Order


def decide(n: int, m: int, me: int, received: Mapping[Path, Order | None]) -> Vote:
    """Lieutenant `me`'s decision from the values it received, by path; a path
    it heard nothing on counts as the default."""

    def heard(path: Path) -> Order:
        value = received.get(path)
        return DEFAULT if value is None else value

    def resolve(path: Path) -> Order:
        value = heard(path)
        if len(path) > m:
            return value
        below = [resolve((*path, g)) for g in receivers(n, path) if g != me]
        return majority([value, *below])

    root = (COMMANDER,)
    relayed = {g: resolve((*root, g)) for g in receivers(n, root) if g != me} if m > 0 else {}
    return Vote(me, heard(root), relayed, majority([heard(root), *relayed.values()]))


# --------------------------------------------------------------------- running


@dataclass(frozen=True)
class Verdict:
    """IC1 and IC2. `validity` is None when the commander is a traitor: IC2 asks
    nothing of the lieutenants then."""

    agreement: bool
    validity: bool | None
    guaranteed: bool

    @property
    def holds(self) -> bool:
        return self.agreement and self.validity is not False


@dataclass(frozen=True)
class Outcome:
    setup: Setup
    rounds: list[list[Message]]
    votes: dict[int, Vote]

    @property
    def decisions(self) -> dict[int, Order]:
        return {g: v.decision for g, v in self.votes.items()}

    @property
    def sent(self) -> int:
        return sum(1 for r in self.rounds for msg in r if msg.value is not None)

    def verdict(self) -> Verdict:
        decided = set(self.decisions.values())
        validity = decided <= {self.setup.order} if self.setup.is_loyal(COMMANDER) else None
        return Verdict(len(decided) <= 1, validity, self.setup.guaranteed)


def by_round(setup: Setup, messages: Sequence[Message]) -> list[list[Message]]:
    rounds: list[list[Message]] = [[] for _ in range(setup.m + 1)]
    for msg in messages:
        rounds[msg.round - 1].append(msg)
    return rounds


def outcome_of(setup: Setup, messages: Sequence[Message]) -> Outcome:
    """Decisions of the loyal lieutenants from the message tree as delivered."""
    heard: dict[int, dict[Path, Order | None]] = {g: {} for g in setup.lieutenants}
    for msg in messages:
        heard[msg.receiver][msg.path] = msg.value
    votes = {g: decide(setup.n, setup.m, g, heard[g]) for g in setup.loyal_lieutenants}
    return Outcome(setup, by_round(setup, messages), votes)


def run(setup: Setup) -> Outcome:
    """OM(m) as a synchronous exchange: each round's messages are relayed in the next."""
    messages = outgoing(setup, COMMANDER, (), setup.order)
    current = messages
    for _ in range(setup.m):
        current = [
            relay
            for msg in current
            for relay in outgoing(
                setup, msg.receiver, msg.path, DEFAULT if msg.value is None else msg.value
            )
        ]
        messages = messages + current
    return outcome_of(setup, messages)
