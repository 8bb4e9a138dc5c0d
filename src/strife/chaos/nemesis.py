"""The nemesis: faults on a schedule, each logged with its start and end.

Kinds: `kill` (SIGKILL, then a restart), `pause` (SIGSTOP, then SIGCONT),
`partition` (the process's link cut, then healed; namespaces only),
`deadline` (direct calls with deadlines shorter than the payment path) and
`cancel` (direct calls cancelled in flight) and `disk` (a bank's tmpfs
filled up, then given back; a bank that stopped on it is started again).
Targets are any bank, gateway or the balancer; a process is the target of
one fault at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

from strife.chaos.history import History
from strife.chaos.nodes import Nodes
from strife.chaos.workload import Customers

PROCESS_KINDS = ("kill", "pause", "partition", "disk")
CALL_KINDS = ("deadline", "cancel")
ALL_KINDS = (*PROCESS_KINDS, *CALL_KINDS)
DIRECT_CALLS = 8


@dataclass
class Nemesis:
    nodes: Nodes
    customers: Customers
    history: History
    rng: random.Random
    kinds: tuple[str, ...]
    interval_s: float
    max_faults: int
    faults: list[dict[str, Any]] = field(default_factory=list)
    _busy: set[str] = field(default_factory=set)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        order: list[str] = []
        while len(self.faults) < self.max_faults and not stop.is_set():
            if not order:
                order = list(self.kinds)
                self.rng.shuffle(order)
            kind = order.pop()
            targets = [n for n in self.nodes.names() if n not in self._busy]
            if kind == "disk":
                targets = [n for n in targets if n in self.nodes.disks]
            if kind in PROCESS_KINDS and not targets:
                kind = self.rng.choice(CALL_KINDS)
            fault: dict[str, Any] = {
                "id": len(self.faults) + 1,
                "kind": kind,
                "start_s": self.history.now(),
            }
            if kind in PROCESS_KINDS:
                fault["target"] = self.rng.choice(targets)
                self._busy.add(fault["target"])
            self.faults.append(fault)
            self._tasks.append(asyncio.create_task(self._inject(fault)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s * self.rng.uniform(0.5, 1.5))

    async def settle(self) -> None:
        """Wait for every fault to end (each heals what it broke)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _inject(self, fault: dict[str, Any]) -> None:
        kind, target = fault["kind"], fault.get("target", "")
        try:
            if kind == "kill":
                await self.nodes.kill(target)
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                fault["healing_s"] = self.history.now()
                await self.nodes.restart(target)
            elif kind == "pause":
                self.nodes.pause(target)
                await asyncio.sleep(self.rng.uniform(0.5, 3.0))
                self.nodes.resume(target)
            elif kind == "partition":
                assert self.nodes.network is not None
                self.nodes.network.cut(target)
                await asyncio.sleep(self.rng.uniform(1.0, 4.0))
                self.nodes.network.heal(target)
            elif kind == "disk":
                fault["filled_bytes"] = self.nodes.fill_disk(target)
                await asyncio.sleep(self.rng.uniform(1.0, 3.0))
                self.nodes.free_disk(target)
                fault["healing_s"] = self.history.now()
                if not self.nodes.alive(target):
                    fault["exited"] = self.nodes.children[target].proc.returncode  # type: ignore[union-attr]
                    await self.nodes.restart(target)
            else:
                gateways = list(self.nodes.gateway_addresses().values())
                fault["calls"] = await self.customers.direct(kind, gateways, DIRECT_CALLS)
        except Exception as exc:  # recorded; the runner heals everything before checking
            fault["error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            fault["end_s"] = self.history.now()
            self._busy.discard(target)
