"""Live progress on the terminal: elapsed, payments/s over the last seconds, errors.

Redrawn a few times a second from the engine's counters by one task, so the
display costs the load nothing per payment. Goes to stderr, leaving stdout
to the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from strife.loadgen.config import LoadConfig
from strife.loadgen.engine import Engine

TICK_S = 0.25
RATE_WINDOW_S = 2.0


@asynccontextmanager
async def live_progress(
    engine: Engine, config: LoadConfig, console: Console, enabled: bool = True
) -> AsyncIterator[None]:
    """Show a progress bar for the duration (or count) while the body runs."""
    if not enabled:
        yield
        return
    by_time = config.duration_s is not None
    total = float(config.duration_s) if config.duration_s is not None else float(config.count or 1)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]:>7.1f} payments/s"),
        TextColumn("answered {task.fields[answered]}"),
        TextColumn("in flight {task.fields[in_flight]}"),
        TextColumn("[red]errors {task.fields[errors]}"),
        console=console,
        refresh_per_second=1 / TICK_S,
    )
    task_id = progress.add_task("load", total=total, rate=0.0, answered=0, in_flight=0, errors=0)
    recent: deque[tuple[float, int]] = deque(maxlen=int(RATE_WINDOW_S / TICK_S) + 1)

    async def tick() -> None:
        while True:
            counters = engine.counters
            now = engine.elapsed_s()
            recent.append((now, counters.answered))
            first_t, first_n = recent[0]
            rate = (counters.answered - first_n) / (now - first_t) if now > first_t else 0.0
            progress.update(
                task_id,
                completed=min(total, now if by_time else float(counters.issued)),
                rate=rate,
                answered=counters.answered,
                in_flight=counters.in_flight,
                errors=counters.failed_sends + counters.skipped,
            )
            await asyncio.sleep(TICK_S)

    with progress:
        ticker = asyncio.create_task(tick(), name="progress")
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            progress.update(task_id, completed=total)
