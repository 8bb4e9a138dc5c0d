"""Whether this process is a Strife program or a host that runs Strife code.

A console script (`strife-bank`, `strife`, ...) owns its process: SIGTERM and
SIGINT mean "stop gracefully", and its event loop is uvloop. Code that calls a
command in-process (a test through click's CliRunner, a notebook, another
program) does not: a server started there must not take over the host's
signals, or SIGTERM to the host would only stop the server and the host would
carry on; and a stdlib loop lets an exception raised by the host's own signal
handler (pytest-timeout's SIGALRM, Ctrl-C) end the run, where uvloop logs it
and keeps serving.

Each console script is `entry(command)`: it claims the process, then runs the
click command.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_claimed = False


def entry(command: Callable[..., Any]) -> Callable[[], None]:
    """A console-script entry point that claims the process, then runs `command`."""

    def run_as_program() -> None:
        claim()
        command()

    run_as_program.__doc__ = f"Run {getattr(command, 'name', 'the command')} as the program."
    return run_as_program


def claim() -> None:
    """This process is a Strife program: its servers handle SIGTERM/SIGINT themselves."""
    global _claimed
    _claimed = True


def owns_signals() -> bool:
    """True only in a Strife program's main thread (where signal handlers can live)."""
    return _claimed and threading.current_thread() is threading.main_thread()
