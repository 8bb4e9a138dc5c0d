"""Whether this process is a Strife program or a host that runs Strife code.

A console script (`strife-bank`, `strife`, ...) owns its process: SIGTERM and
SIGINT mean "stop gracefully", and its event loop is uvloop. Code that calls a
command in-process (a test through click's CliRunner, a notebook, another
program) does not: a server started there must not take over the host's
signals, or SIGTERM to the host would only stop the server and the host would
carry on; and a stdlib loop lets an exception raised by the host's own signal
handler (pytest-timeout's SIGALRM, Ctrl-C) end the run, where uvloop logs it
and keeps serving.

Each console script is a `launcher` (`strife.programs`): it claims the process
before importing the command's module, because gRPC reads its settings (fork
support) from the environment when it is first loaded, then runs the click
command through `entry`. A program that fails ends at once with its non-zero status:
threads still running (an unclosed SQLite connection's, an executor's) are
not daemons and would otherwise keep a process that no longer serves alive,
out of its supervisor's sight. An exception nothing else reported becomes
one `fatal` log line.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

_claimed = False


def entry(command: Callable[..., Any]) -> Callable[[], None]:
    """A console-script entry point that claims the process, then runs `command`."""

    def run_as_program() -> None:
        claim()
        try:
            command()
        except SystemExit as exc:
            code = _status(exc.code)
            if code:
                _exit_now(code)
            raise
        except Exception as exc:
            _fatal(exc)
            _exit_now(1)

    run_as_program.__doc__ = f"Run {getattr(command, 'name', 'the command')} as the program."
    return run_as_program


def launcher(target: str) -> Callable[[], None]:
    """A console-script entry point for the click command at `target` (`module:name`)."""

    def launch() -> None:
        claim()  # before the command's module loads gRPC
        module, _, name = target.partition(":")
        entry(getattr(importlib.import_module(module), name))()

    launch.__doc__ = f"Run {target} as the program."
    return launch


def claim() -> None:
    """This process is a Strife program: its servers handle SIGTERM/SIGINT themselves."""
    global _claimed
    _claimed = True
    # Strife programs start children only by fork+exec, never fork alone, so
    # gRPC's fork handlers have nothing to protect. Set here, for programs
    # only: a library must not change its host's environment.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def owns_signals() -> bool:
    """True only in a Strife program's main thread (where signal handlers can live)."""
    return _claimed and threading.current_thread() is threading.main_thread()


def _status(code: object) -> int:
    """The exit status `sys.exit(code)` gives: a message means 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _fatal(exc: Exception) -> None:
    from strife.observability.logging import get_logger

    get_logger("strife.program").error("fatal", error=f"{type(exc).__name__}: {exc}")


def _exit_now(code: int) -> None:
    """End the process with `code` now, whatever threads are still running."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
