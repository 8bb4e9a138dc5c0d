"""Nodes: which simulated process each task belongs to, so a crash can end them all.

Every task records the node that created it (a context variable, inherited by
the tasks it creates in turn). Crashing a node cancels all of its tasks at
once and marks it dead: a task it creates afterwards (in a `finally` block,
say) is cancelled at birth, and the fakes refuse I/O from a dead node
(`require_alive`), so nothing of a crashed process can touch the world after
the crash. A restart makes a new node of the same name: a new incarnation.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

NODE: contextvars.ContextVar[Node | None] = contextvars.ContextVar("strife_sim_node", default=None)


class Node:
    """One incarnation of a simulated process."""

    def __init__(self, name: str, incarnation: int = 1) -> None:
        self.name = name
        self.incarnation = incarnation
        self.alive = True
        self._tasks: dict[asyncio.Task[Any], None] = {}

    def __repr__(self) -> str:
        state = "" if self.alive else ", dead"
        return f"Node({self.name}#{self.incarnation}{state})"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task of this node, in a fresh context (no caller's state)."""
        context = contextvars.Context()
        context.run(NODE.set, self)
        return asyncio.get_running_loop().create_task(coro, context=context)

    def adopt(self, task: asyncio.Task[Any]) -> None:
        if not self.alive:
            task.cancel()
            return
        self._tasks[task] = None
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)

    def crash(self) -> None:
        """The process dies: every task it runs is cancelled, now and at birth."""
        self.alive = False
        for task in list(self._tasks):
            task.cancel()

    @property
    def tasks(self) -> int:
        return len(self._tasks)


def current_node() -> Node | None:
    return NODE.get()


def require_alive() -> None:
    """Refuse I/O from a task of a crashed node (one still unwinding)."""
    node = NODE.get()
    if node is not None and not node.alive:
        raise asyncio.CancelledError(f"{node.name} has crashed")


def task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
    *,
    context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    """The loop's task factory: every task joins its creator's node (or the
    node named in the context it is given)."""
    node = context.get(NODE) if context is not None else NODE.get()
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    if node is not None:
        node.adopt(task)
    return task
