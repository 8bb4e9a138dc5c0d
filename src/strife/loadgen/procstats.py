"""Memory and CPU of the cluster's processes through a run (Linux /proc).

RSS is sampled (VmRSS of /proc/<pid>/status) because a peak between two
reads of the final state would otherwise go unseen; CPU is the difference of
utime+stime between the first and the last sample of each pid, so a child
restarted mid-run adds its new pid's share. Where /proc is missing the
figures are simply absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MAX_PROCESSES = 256


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_busy_s() -> float | None:
    """CPU seconds all cores spent busy, or stolen by the hypervisor, since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / _TICKS_PER_S


def cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class _Track:
    name: str
    rss_kb_max: int = 0
    rss_kb_last: int = 0
    samples: int = 0
    cpu_first: dict[int, float] | None = None
    cpu_last: dict[int, float] | None = None


class ProcessSampler:
    """Samples `pids()` (name -> pid, re-read every time: restarts change pids)."""

    def __init__(self, pids: Callable[[], Mapping[str, int]], interval_s: float = 0.5) -> None:
        self._pids = pids
        self._interval_s = interval_s
        self._tracks: dict[str, _Track] = {}
        self._task: asyncio.Task[None] | None = None
        self._busy: list[float] = []

    def sample(self) -> None:
        for name, pid in list(self._pids().items())[:MAX_PROCESSES]:
            if pid <= 0:
                continue
            track = self._tracks.setdefault(name, _Track(name, cpu_first={}, cpu_last={}))
            rss = rss_kb(pid)
            if rss is not None:
                track.rss_kb_max = max(track.rss_kb_max, rss)
                track.rss_kb_last = rss
                track.samples += 1
            cpu = cpu_s(pid)
            if cpu is not None and track.cpu_first is not None and track.cpu_last is not None:
                track.cpu_first.setdefault(pid, cpu)
                track.cpu_last[pid] = cpu

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        busy = machine_busy_s()
        if busy is not None:
            self._busy = [busy]
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="process-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sample()
        busy = machine_busy_s()
        if busy is not None and self._busy:
            self._busy.append(busy)

    def machine(self) -> dict[str, Any]:
        """The whole machine's busy CPU over the sampling, and what our processes don't explain.

        `other_cpu_s` is CPU used by processes not sampled (other tenants,
        profilers, the kernel on their behalf): the noise figure to read next
        to a throughput on a shared machine.
        """
        if len(self._busy) < 2:
            return {}
        busy_s = self._busy[-1] - self._busy[0]
        ours_s = sum(r["cpu_s"] for r in self.result().values())
        return {
            "cpus": os.cpu_count(),
            "busy_cpu_s": round(busy_s, 2),
            "other_cpu_s": round(max(0.0, busy_s - ours_s), 2),
        }

    def result(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, track in sorted(self._tracks.items()):
            first, last = track.cpu_first or {}, track.cpu_last or {}
            cpu = sum(last[pid] - first[pid] for pid in last if pid in first)
            out[name] = {
                "rss_mb_max": round(track.rss_kb_max / 1024, 1),
                "rss_mb_last": round(track.rss_kb_last / 1024, 1),
                "cpu_s": round(cpu, 2),
                "samples": track.samples,
            }
        return out
