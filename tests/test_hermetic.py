"""Tests are hermetic, and a test that starts a server the wrong way still ends.

The wrong way: a command's click function called in-process, with identity
folders in the working directory it finds by default. Such a server must not
take over the test process's signals (SIGTERM to pytest ends pytest), and a
pytest-timeout must end the test rather than be logged by the server's loop.
Both run in a child pytest so that a regression shows up as a failed test, not
a hung suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from strife import program

ROOT = Path(__file__).resolve().parent.parent
END_WITHIN_S = 60.0

WRONG_WAY = textwrap.dedent(
    """
    from pathlib import Path

    from click.testing import CliRunner

    from strife.balancer.main import main as balancer_main
    from strife.rpc.addresses import free_port
    from strife.security import certs


    def test_balancer_started_in_process():
        ca = certs.create_ca()
        issued = certs.issue(ca, role="balancer", name="balancer")
        certs.write_identity(Path("certs") / "balancer", ca.cert, issued)  # found by default
        port = free_port()
        Path("port").write_text(str(port))
        CliRunner().invoke(balancer_main, ["--listen", f"127.0.0.1:{port}"])
        raise AssertionError("the balancer stopped by itself")
    """
)


def test_working_directory_and_environment_are_the_tests_own(tmp_path: Path) -> None:
    cwd = Path.cwd()
    assert cwd.is_relative_to(tmp_path) and not any(cwd.iterdir())
    assert not Path("certs").exists() and not Path("data").exists()
    assert not Path(".strife").exists()
    assert os.environ["STRIFE_HOME"].startswith(str(tmp_path))
    assert not {name for name in os.environ if name.startswith("STRIFE_")} - {"STRIFE_HOME"}


def test_tests_are_not_a_strife_program() -> None:
    assert not program.owns_signals()


def _child_pytest(folder: Path, *args: str) -> subprocess.Popen[str]:
    (folder / "test_wrong_way.py").write_text(WRONG_WAY)
    (folder / "pytest.ini").write_text("[pytest]\n")  # not the project's settings
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _listening(port_file: Path, child: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + END_WITHIN_S
    while time.monotonic() < deadline and child.poll() is None:
        if port_file.exists() and port_file.read_text():
            with socket.socket() as sock:
                sock.settimeout(1.0)
                if sock.connect_ex(("127.0.0.1", int(port_file.read_text()))) == 0:
                    return True
        time.sleep(0.05)
    return False


def _finish(child: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = child.communicate(timeout=END_WITHIN_S)
    except subprocess.TimeoutExpired:
        child.kill()
        out, _ = child.communicate()
        pytest.fail(f"the child pytest did not end within {END_WITHIN_S:.0f} s:\n{out[-3000:]}")
    return child.returncode, out


def test_a_server_started_in_a_test_does_not_outlive_its_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    child = _child_pytest(tmp_path, "--timeout", "3")
    try:
        code, out = _finish(child)
    finally:
        if child.poll() is None:
            child.kill()
    assert code == 1, out
    assert "Timeout (>3.0s) from pytest-timeout" in out
    assert time.monotonic() - started < END_WITHIN_S


def test_sigterm_ends_a_test_run_with_a_server_started_in_process(tmp_path: Path) -> None:
    child = _child_pytest(tmp_path, "--timeout", "600")
    try:
        assert _listening(tmp_path / "port", child), "the balancer never listened"
        child.send_signal(signal.SIGTERM)
        code, out = _finish(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert code == -signal.SIGTERM, out
