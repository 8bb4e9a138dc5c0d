"""Run one seed, or many, and say what failed and how to replay it.

Everything a run does follows from its seed: the world (`Scenario.draw`), the
fault mix (`FaultMix.draw`), and one random stream per component. The global
`random` module (which the real resolver's backoff uses) is seeded too, and
restored afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from strife.observability.logging import configure_logging
from strife.simulation.faults import FaultMix
from strife.simulation.invariants import Violation
from strife.simulation.loop import BoundExceeded, SimulatedLoop, Stuck
from strife.simulation.nodes import task_factory
from strife.simulation.scenario import Scenario
from strife.simulation.trace import SINK, Trace
from strife.simulation.world import World

MAX_TICKS = 3_000_000
MAX_VIRTUAL_S = 4_000.0
_TEARDOWN_TICKS = 200_000


@dataclass
class Result:
    seed: int
    scenario: Scenario
    mix: FaultMix
    violations: list[Violation]
    digest: str
    events: int
    virtual_s: float
    ticks: int
    wall_s: float
    last_events: list[str]
    leading_events: list[str]
    """The events up to (and including) the first violation."""
    full_trace: list[str] | None = None
    loop_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def invariants(self) -> list[str]:
        """The broken invariants, each once, in the order first seen."""
        return list(dict.fromkeys(v.invariant for v in self.violations))

    def report(self, last: int = 40) -> str:
        status = "ok" if self.ok else "FAILED: " + ", ".join(self.invariants)
        lines = [
            f"seed {self.seed} {status}",
            f"  world:  {self.scenario.describe()}",
            f"  faults: {self.mix.describe()}",
            f"  run:    {self.events} events, {self.virtual_s:.3f} virtual s,"
            f" {self.ticks} loop turns, {self.wall_s:.2f} s, trace {self.digest}",
        ]
        if self.loop_errors:
            lines.append(f"  unretrieved task errors: {len(self.loop_errors)}, first:")
            lines += [f"    {e}" for e in self.loop_errors[:3]]
        if not self.ok:
            lines.append("  violations:")
            lines += [f"    {v}" for v in self.violations[:10]]
            if len(self.violations) > 10:
                lines.append(f"    ... {len(self.violations) - 10} more")
            leading = self.leading_events[-last:] if last else []
            lines.append(f"  the {len(leading)} events up to the first violation:")
            lines += [f"    {e}" for e in leading]
            lines.append(f"  replay: python -m strife.simulation --seed {self.seed}")
        return "\n".join(lines)


def draw(seed: int) -> tuple[Scenario, FaultMix]:
    return (
        Scenario.draw(random.Random(f"{seed}/scenario")),
        FaultMix.draw(random.Random(f"{seed}/faults")),
    )


def run_seed(seed: int, *, keep: int = 200, full_trace: bool = False) -> Result:
    """One deterministic run; the same seed gives the same trace digest."""
    scenario, mix = draw(seed)
    started = time.perf_counter()
    loop = SimulatedLoop(max_ticks=MAX_TICKS, max_time=MAX_VIRTUAL_S)
    loop.set_task_factory(task_factory)
    loop_errors: list[str] = []

    def on_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    loop.set_exception_handler(on_loop_error)
    trace = Trace(loop.time, keep)
    if full_trace:
        trace.full = []
    saved_random = random.getstate()
    random.seed(seed)
    SINK.trace = trace
    world = World(seed, scenario, mix, trace)
    SINK.on_error = world.checker.logged_error
    try:
        try:
            loop.run_until_complete(world.main())
        except (BoundExceeded, Stuck) as exc:
            world.checker.violation("bounded-run", f"{type(exc).__name__}: {exc}")
        virtual_s, ticks = loop.time(), loop.ticks
        SINK.trace = SINK.on_error = None
        trace.stopped = True
        _teardown(loop, world)
    finally:
        SINK.trace = SINK.on_error = None
        random.setstate(saved_random)
        loop.close()
    return Result(
        seed=seed,
        scenario=scenario,
        mix=mix,
        violations=list(world.checker.violations),
        digest=trace.digest,
        events=trace.events,
        virtual_s=virtual_s,
        ticks=ticks,
        wall_s=time.perf_counter() - started,
        last_events=list(trace.last),
        leading_events=world.checker.leading,
        full_trace=trace.full,
        loop_errors=loop_errors,
    )


def _teardown(loop: SimulatedLoop, world: World) -> None:
    """Stop every process and let their tasks unwind (bounded), so nothing is
    left half-run when the loop closes."""
    world.stop()
    loop.max_ticks = loop.ticks + _TEARDOWN_TICKS
    loop.max_time = loop.time() + 10_000.0
    with contextlib.suppress(BoundExceeded, Stuck):
        for _ in range(3):
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


@contextlib.contextmanager
def capturing_logs() -> Iterator[None]:
    """The real code's warnings and errors go to the trace of the run in progress
    (JSON through `configure_logging`); default logging is restored afterwards."""
    configure_logging("json", "warning", stream=SINK)  # type: ignore[arg-type]
    try:
        yield
    finally:
        configure_logging("json")


@dataclass
class Summary:
    seeds: int
    failed: list[Result]
    wall_s: float
    events: int
    virtual_s: float
    faults: dict[str, int]

    @property
    def per_s(self) -> float:
        return self.seeds / self.wall_s if self.wall_s else 0.0


def run_range(
    first: int, count: int, *, progress: bool = False, stop_after: int | None = None
) -> Summary:
    """Seeds first .. first+count-1; `stop_after` failures end it early."""
    failed: list[Result] = []
    faults: dict[str, int] = {}
    events = 0
    virtual_s = 0.0
    started = time.perf_counter()
    ran = 0
    for seed in range(first, first + count):
        result = run_seed(seed, keep=60)
        ran += 1
        events += result.events
        virtual_s += result.virtual_s
        for kind in result.mix.enabled():
            faults[kind] = faults.get(kind, 0) + 1
        if not result.ok:
            failed.append(result)
            if progress:
                print(result.report(), flush=True)
            if stop_after is not None and len(failed) >= stop_after:
                break
        if progress and ran % 100 == 0:
            elapsed = time.perf_counter() - started
            print(f"  {ran} seeds, {len(failed)} failed, {ran / elapsed:.1f} seeds/s", flush=True)
    return Summary(ran, failed, time.perf_counter() - started, events, virtual_s, faults)
