"""Server process objects: one lifecycle, and one way to run them to an exit status.

A process object (`BankProcess`, `GatewayProcess`) opens and starts in
`async with`, serves in `serve()` and says how it ended. What is fatal at
start-up (storage that will not open, a port in use) ends the program with
status 1 and one log line naming it, never a traceback and a process that
lingers.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self, TypeVar

from strife.observability.logging import get_logger
from strife.rpc.server import AddressInUseError, install_stop_signals, run
from strife.storage.sqlite import StorageError


class ServerProcess(ABC):
    """What every server process shares: `async with` starts all or nothing,
    and SIGTERM (in a Strife program) or `request_stop()` ends `serve()`.

    A subclass writes `_start` (open, start; may fail half-way) and `_close`
    (stop what started, in reverse order; must cope with a half-started
    process), and `serve`.
    """

    def __init__(self) -> None:
        self._requested = install_stop_signals()

    def request_stop(self) -> None:
        """What SIGTERM does in a Strife program; for a host running the process in-process."""
        self._requested.set()

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    @abstractmethod
    async def _start(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...


class Serving(Protocol):
    async def serve(self) -> int:
        """Serve until stopped; the exit status."""
        ...


P = TypeVar("P", bound=Serving)


def run_process(
    make: Callable[[], AbstractAsyncContextManager[P]], *, listen: str, logger: str
) -> None:
    """Build the process inside the event loop, serve it, exit with its status."""
    log = get_logger(logger)

    async def main() -> None:
        try:
            async with make() as process:
                code = await process.serve()
        except StorageError as exc:
            log.error("storage_failed", error=str(exc), detail="not starting")
            sys.exit(1)
        except AddressInUseError as exc:
            log.error("listen_failed", address=listen, error=str(exc))
            sys.exit(1)
        if code:
            sys.exit(code)

    run(main)
