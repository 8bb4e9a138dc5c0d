"""A seed's world for the PBFT simulator: group, clients, faults and network, all drawn
from the seed (`draw`), or written out by hand in a test."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from strife.bft.byzantine import BEHAVIOURS
from strife.bft.config import Config

__all__ = ["Scenario", "draw", "draw_hard"]


@dataclass(frozen=True)
class Scenario:
    seed: int
    config: Config
    faulty: tuple[tuple[int, str], ...] = ()
    """Byzantine replicas and their behaviour (`strife.bft.byzantine.BEHAVIOURS`)."""
    partition: tuple[int, float, float] | None = None
    """(replica, from, until): cut off from everyone in that window, honest otherwise."""
    clients: int = 3
    requests: int = 4
    drop: float = 0.0
    duplicate: float = 0.0
    delay_max: float = 0.05
    gst: float = 0.0
    signatures: str = "keyed-hash"
    hard: bool = False
    """Drawn by `draw_hard` rather than `draw`."""

    @property
    def faulty_count(self) -> int:
        """Replicas that count against f: the Byzantine ones and a partitioned one."""
        away = {self.partition[0]} if self.partition is not None else set()
        return len({r for r, _ in self.faulty} | away)

    @property
    def settled_at(self) -> float:
        return max(self.gst, self.partition[2] if self.partition is not None else 0.0)

    def replay_command(self) -> str:
        command = f"python -m strife.bft.simulation --seed {self.seed}"
        if self.hard:
            command += " --hard"
        drawn = (draw_hard if self.hard else draw)(self.seed)
        if self.faulty != drawn.faulty:
            command += " --faulty " + ",".join(f"{r}={b}" for r, b in self.faulty)
        if self.signatures == "ed25519" != drawn.signatures:
            command += " --ed25519"
        if replace(self, faulty=drawn.faulty, signatures=drawn.signatures) != drawn:
            command += "  (other fields set by hand: see the world above)"
        return command

    def describe(self) -> str:
        c = self.config
        faulty = " ".join(f"{r}={b}" for r, b in self.faulty) or "none"
        part = "none"
        if self.partition is not None:
            part = (
                f"replica {self.partition[0]} in [{self.partition[1]:.2f}, {self.partition[2]:.2f})"
            )
        return (
            f"  world{' (hard)' if self.hard else ''}:  n={c.n} f={c.f}"
            f" K={c.checkpoint_interval} window={c.window}"
            f" batch={c.batch_size} in-flight={c.max_in_flight} {self.clients} clients x"
            f" {self.requests} requests, {self.signatures} signatures\n"
            f"  faults: byzantine {faulty}; partition {part}; drop={self.drop}"
            f" duplicate={self.duplicate} delay<={self.delay_max} until GST={self.gst:.2f}"
        )


def draw(seed: int) -> Scenario:
    """The world of one seed: sizes, faults and network, all from the seed."""
    rng = random.Random(f"strife-bft-scenario/{seed}")
    n = 7 if rng.random() < 0.15 else 4
    interval = rng.choice((2, 4, 8))
    config = Config(
        n=n,
        checkpoint_interval=interval,
        window=interval * rng.choice((2, 3)),
        batch_size=rng.choice((1, 2, 4, 8)),
        max_in_flight=rng.choice((1, 2, 4)),
        # Tiny chunks too: a snapshot of a few dozen bytes then travels in several.
        state_chunk_bytes=rng.choice((8, 32, 1 << 20)),
    )
    f = config.f
    byzantine = rng.randint(0, f)
    names = sorted(BEHAVIOURS)
    chosen = rng.sample(range(n), byzantine)
    if chosen and rng.random() < 0.5:
        chosen[0] = 0  # the first primary: equivocating, slow or silent where it hurts most
    faulty = tuple(sorted((r, rng.choice(names)) for r in set(chosen)))
    partition = None
    if len(faulty) < f + (0 if faulty else 1) and rng.random() < 0.3:
        honest = [r for r in range(n) if r not in dict(faulty)]
        start = rng.uniform(0.2, 2.0)
        partition = (rng.choice(honest), start, start + rng.uniform(0.5, 4.0))
    if partition is not None and len(faulty) + 1 > f:
        partition = None
    return Scenario(
        seed=seed,
        config=config,
        faulty=faulty,
        partition=partition,
        clients=rng.randint(1, 4),
        requests=rng.randint(2, 6),
        drop=rng.choice((0.0, 0.02, 0.1, 0.25)),
        duplicate=rng.choice((0.0, 0.05, 0.2)),
        delay_max=rng.choice((0.01, 0.1, 0.4)),
        gst=rng.uniform(0.0, 5.0),
        signatures="ed25519" if seed % 100 == 0 else "keyed-hash",
    )


def draw_hard(seed: int) -> Scenario:
    """A harsher world for the same seed: always f faulty replicas (f Byzantine, or
    f - 1 and an honest one cut off for a while), 30 to 40% of messages lost and
    delays up to 1.5 s until a GST of 5 to 10 s, seven replicas in two seeds of
    five, and more requests. `draw` spreads its seeds over easy worlds too; these
    are where liveness rules fail (a view change that never completes)."""
    base = draw(seed)
    rng = random.Random(f"strife-bft-hard/{seed}")
    n = 7 if rng.random() < 0.4 else 4
    interval = rng.choice((2, 4, 8))
    config = replace(
        base.config, n=n, checkpoint_interval=interval, window=interval * rng.choice((2, 3))
    )
    f = config.f
    byzantine = f if rng.random() < 0.7 else f - 1
    chosen = rng.sample(range(n), byzantine)
    if chosen and rng.random() < 0.6:
        chosen[0] = rng.choice((0, 1))  # the first primary, or the next one
    faulty = tuple(sorted((r, rng.choice(sorted(BEHAVIOURS))) for r in set(chosen)))
    partition = None
    if len(faulty) < f:
        honest = [r for r in range(n) if r not in dict(faulty)]
        start = rng.uniform(0.2, 3.0)
        partition = (rng.choice(honest), start, start + rng.uniform(0.5, 6.0))
    return replace(
        base,
        config=config,
        faulty=faulty,
        partition=partition,
        clients=rng.randint(2, 5),
        requests=rng.randint(4, 10),
        drop=round(rng.uniform(0.3, 0.4), 3),
        duplicate=rng.choice((0.0, 0.2)),
        delay_max=rng.choice((0.4, 1.0, 1.5)),
        gst=rng.uniform(5.0, 10.0),
        hard=True,
    )
