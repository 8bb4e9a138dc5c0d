"""The nemesis: crashes, restarts, partitions and slow disks at random moments.

Faults arrive as a Poisson process whose rate per kind is the fault mix's;
each crashed process comes back after a random downtime, each partition and
slow disk heals after a random while. `calm()` stops it all: nothing new
happens, and everything down or cut off is brought back at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from strife.simulation.disk import Disk
from strife.simulation.faults import FaultMix
from strife.simulation.network import Network
from strife.simulation.trace import Trace


class Process(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def up(self) -> bool: ...

    def start(self) -> None: ...

    def crash(self) -> None: ...


class Nemesis:
    def __init__(
        self,
        rng: random.Random,
        mix: FaultMix,
        network: Network,
        trace: Trace,
        *,
        gateways: Sequence[Process],
        banks: Sequence[Process],
        clients: Sequence[str],
        disks: Sequence[Disk],
    ) -> None:
        self._rng = rng
        self._mix = mix
        self._network = network
        self._trace = trace
        self._gateways = gateways
        self._banks = banks
        self._clients = clients
        self._disks = disks
        self._later: list[asyncio.TimerHandle] = []

    async def run(self) -> None:
        mix = self._mix
        kinds: list[tuple[float, Callable[[], None]]] = [
            (mix.gateway_crash, lambda: self._crash(self._gateways)),
            (mix.bank_crash, lambda: self._crash(self._banks)),
            (mix.partition, self._partition),
            (mix.slow_disk, self._slow_disk),
        ]
        kinds = [(rate, act) for rate, act in kinds if rate > 0]
        total = sum(rate for rate, _ in kinds)
        if not total:
            return
        while True:
            await asyncio.sleep(self._rng.expovariate(total))
            pick = self._rng.uniform(0, total)
            chosen = kinds[-1][1]
            for rate, act in kinds:
                pick -= rate
                if pick <= 0:
                    chosen = act
                    break
            chosen()

    def _after(self, delay: float, then: Callable[[], None]) -> None:
        self._later.append(asyncio.get_running_loop().call_later(delay, then))

    def _crash(self, processes: Sequence[Process]) -> None:
        up = [p for p in processes if p.up]
        if not up:
            return
        victim = self._rng.choice(up)
        victim.crash()
        self._after(self._rng.uniform(0.05, 3.0), lambda: self._restart(victim))

    def _restart(self, process: Process) -> None:
        if not process.up:
            process.start()

    def _partition(self) -> None:
        gateway = self._rng.choice(self._gateways).name
        other = self._rng.choice([*(b.name for b in self._banks), *self._clients])
        now = asyncio.get_running_loop().time()
        self._network.cut(gateway, other, now + self._rng.uniform(0.1, 3.0))

    def _slow_disk(self) -> None:
        disk = self._rng.choice(self._disks)
        now = asyncio.get_running_loop().time()
        disk.slow_until = now + self._rng.uniform(0.2, 3.0)
        self._trace("nemesis", f"slow disk {disk.name} until {disk.slow_until:.3f}")

    def calm(self) -> None:
        """No more faults: restart whatever is down, heal every partition and disk."""
        for handle in self._later:
            handle.cancel()
        self._later.clear()
        self._network.heal()
        for disk in self._disks:
            disk.slow_until = 0.0
        for process in [*self._gateways, *self._banks]:
            self._restart(process)
