"""Real Strife processes for integration tests: start on an ephemeral port, always stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 20.0


class ServiceProcess:
    """A console script run as a child; its JSON log goes to a file we can read.

    The bound address comes from the `server_started` log line, so tests can
    use `--listen 127.0.0.1:0` and never guess ports.
    """

    def __init__(
        self,
        script: str,
        args: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.script = script
        self.args = list(args)
        self.log_path = log_path
        self.env = {**os.environ, **env} if env else None
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self._drain: threading.Thread | None = None

    def start(self) -> ServiceProcess:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [str(BIN / self.script), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        log = self.log_path.open("a")
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            log.write(line)
            log.flush()
            event = _parse(line)
            if event.get("event") == "server_started":
                self.address = str(event["address"])
                break
            if time.monotonic() > deadline:
                break
        if not self.address:
            self.kill()
            log.close()
            raise RuntimeError(f"{self.script} did not start:\n{self.log_path.read_text()[-3000:]}")
        self._drain = threading.Thread(target=_copy, args=(self.proc.stderr, log), daemon=True)
        self._drain.start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._join()

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait for a graceful exit; SIGKILL if it does not come."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._join()
        return self.proc.returncode

    def _join(self) -> None:
        if self._drain is not None:
            self._drain.join(timeout=5)
            self._drain = None

    def log_events(self) -> list[dict[str, object]]:
        return [e for e in map(_parse, self.log_path.read_text().splitlines()) if e]


def _parse(line: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _copy(source: Iterable[str], sink: TextIO) -> None:
    try:
        for line in source:
            sink.write(line)
            sink.flush()
    except ValueError:
        pass
    finally:
        sink.close()
