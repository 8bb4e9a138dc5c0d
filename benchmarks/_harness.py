"""Small shared pieces for benchmarks: child processes, a closed-loop driver, percentiles.

Kept free of any one service's API so that each `bench_*.py` says what it
measures and this file only says how.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from strife.rpc.addresses import free_port as free_port

BIN = Path(sys.executable).parent
_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Child:
    """A console script from this venv, its stderr in a file; stop() is idempotent."""

    def __init__(self, script: str, args: Sequence[str], log_path: Path) -> None:
        self.script = script
        self.args = list(args)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / self.script), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_listening(self, port: int, timeout_s: float) -> None:
        """Until a TCP connect to 127.0.0.1:port succeeds; raise if the child died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.script} exited early:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=1.0
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError(f"{self.script} not listening after {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (a graceful stop), SIGKILL if it takes longer than `timeout_s`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the child so far (Linux /proc), else None."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # After the command name: state is field 3, utime 14 and stime 15 (1-based).
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def machine_busy_s() -> float | None:
    """CPU seconds all cores spent busy or stolen by the hypervisor (Linux), else None.

    Minus the server's and our own, this is what other tenants took during a
    run: the noise figure to read next to a throughput.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS_PER_S


@dataclass
class Run:
    """One closed-loop measurement: `ops` completed in `seconds`."""

    ops: int
    seconds: float
    latencies_ms: list[float]
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    other_cpu_s: float | None = None
    """CPU taken by everything but the server and this process (other tenants)."""

    @property
    def per_s(self) -> float:
        return self.ops / self.seconds


async def closed_loop(
    op: Callable[[int, int], Awaitable[object]],
    callers: int,
    duration_s: float,
    *,
    max_errors: int = 100,
    server: Child | None = None,
) -> Run:
    """`callers` tasks each running `op(caller, n)` back to back for `duration_s`.

    An op started before the deadline is finished and counted; the elapsed
    time includes that tail. Failed ops are counted by status and not timed;
    more than `max_errors` of them ends the run with an error, so a dead
    server cannot turn into a silent hot loop.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    stop_at = time.perf_counter() + duration_s

    async def caller(index: int) -> None:
        n = 0
        while (started := time.perf_counter()) < stop_at:
            try:
                await op(index, n)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                if sum(errors.values()) > max_errors:
                    raise RuntimeError(f"too many failed calls: {dict(errors)}") from exc
            else:
                latencies.append((time.perf_counter() - started) * 1000)
            n += 1

    server_cpu = server.cpu_s() if server is not None else None
    client_cpu = own_cpu_s()
    machine = machine_busy_s()
    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    run = Run(len(latencies), time.perf_counter() - began, latencies, errors)
    run.client_cpu_s = own_cpu_s() - client_cpu
    if server is not None and server_cpu is not None:
        after = server.cpu_s()
        run.server_cpu_s = None if after is None else after - server_cpu
    machine_after = machine_busy_s()
    if machine is not None and machine_after is not None and run.server_cpu_s is not None:
        others = machine_after - machine - run.server_cpu_s - run.client_cpu_s
        run.other_cpu_s = max(0.0, others)
    return run


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def stopping(children: Sequence[Child]) -> Iterator[None]:
    """Stop every child afterwards; on a failure, show each child's log tail first."""
    try:
        yield
    except BaseException:
        for child in children:
            child.stop()
            if tail := child.log_tail().strip():
                print(f"--- {child.log_path.name} ---\n{tail}", file=sys.stderr)
        raise
    finally:
        for child in children:
            child.stop()
