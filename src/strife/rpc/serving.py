"""Running a server process object to its exit status, the same way for every role.

A process object (`BankProcess`, `GatewayProcess`) opens and starts in
`async with`, serves in `serve()` and says how it ended. What is fatal at
start-up (storage that will not open, a port in use) ends the program with
status 1 and one log line naming it, never a traceback and a process that
lingers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from strife.observability.logging import get_logger
from strife.rpc.server import AddressInUseError, run
from strife.storage.sqlite import StorageError


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
