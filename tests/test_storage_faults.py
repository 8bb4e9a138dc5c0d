"""Storage and start-up faults as an operator meets them: each ends the process
with a non-zero status and one clear log line, so a supervisor sees it.

A full disk is a real 2 MB tmpfs the test mounts (root only; skipped
elsewhere); an immutable database is `chattr +i` (root only; skipped where it
cannot be set). Every mount and attribute is undone in `finally`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from strife.rpc.channels import ChannelPool
from strife.security import certs

from .bank_fixtures import BankClient, write_seed
from .conftest import Pki
from .processes import BIN, ServiceProcess

EXIT_TIMEOUT_S = 20.0  # a process that should stop, and has not by then, hangs


def _events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def _errors(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("level") in ("error", "critical")]


def run_to_exit(script: str, args: Sequence[str]) -> tuple[int, list[dict[str, Any]]]:
    """Run a server that must stop on its own; one still running after
    EXIT_TIMEOUT_S is killed and fails the test."""
    try:
        done = subprocess.run(
            [str(BIN / script), *args],
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"{script} was still running after {EXIT_TIMEOUT_S:.0f} s:\n{stderr[-2000:]}")
    return done.returncode, _events(done.stderr)


def bank_args(pki: Pki, db: Path, *extra: str, name: str = "alpha") -> list[str]:
    return [
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(db),
        "--certs",
        str(pki.identity("bank", name)),
        "--grace",
        "1",
        *extra,
    ]


def gateway_args(pki: Pki, db: Path, *extra: str) -> list[str]:
    return [
        "--name",
        "gw-1",
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(db),
        "--certs",
        str(pki.identity("gateway", "gw-1")),
        "--grace",
        "1",
        "--token-key",
        str(db.parent / "token.key"),
        *extra,
    ]


def init_bank(pki: Pki, db: Path, *, name: str = "alpha") -> None:
    """A bank's first start (--init, seeded), then a clean stop."""
    seed = write_seed(db.parent / "seed.json")
    process = ServiceProcess(
        "strife-bank",
        bank_args(pki, db, "--init", "--seed", str(seed), name=name),
        db.parent / f"{name}-init.log",
    )
    process.start()
    assert process.stop() == 0


def stopped(process: ServiceProcess) -> tuple[int, list[dict[str, Any]]]:
    """Wait (bounded) for a process that must stop on its own; its status and log."""
    assert process.proc is not None
    try:
        code = process.proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{process.script} still runs {EXIT_TIMEOUT_S:.0f} s after its fault")
    process.stop()  # collects the rest of its log
    return code, process.log_events()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode:
        pytest.skip("cannot set the immutable attribute here (needs root and ext4/tmpfs)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size: str = "2m") -> Iterator[Path]:
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr!r}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(folder: Path) -> None:
    """Take every free byte of the file system under `folder`."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    filler.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


# ------------------------------------------------------------ storage errors


async def test_a_bank_whose_disk_fills_up_exits_1(pki: Pki, tmp_path: Path) -> None:
    """Full disk: a real 2 MB tmpfs under the bank's database, filled while it
    serves. Its next commit fails; the bank stops serving and exits 1."""
    with small_tmpfs(tmp_path / "disk") as disk:
        seed = write_seed(tmp_path / "seed.json")
        process = ServiceProcess(
            "strife-bank",
            bank_args(pki, disk / "alpha.db", "--init", "--seed", str(seed)),
            tmp_path / "alpha.log",
        )
        process.start()
        try:
            fill(disk)
            async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
                client = BankClient(pool, process.address)
                with pytest.raises(grpc.aio.AioRpcError):
                    for _ in range(2000):  # each commit adds WAL frames: one fails
                        await client.prepare(uuid.uuid4().hex, "ada-usd", 1)
            code, events = stopped(process)
        finally:
            process.stop()
    assert code == 1
    assert _errors(events)[-1]["event"] == "storage_failed"
    assert "full" in str(_errors(events)[-1]["error"])


def test_an_immutable_bank_database_fails_at_start(pki: Pki, tmp_path: Path) -> None:
    """Immutable file: `chattr +i` on an initialised database. SQLite opens it
    read-only without a word; the bank must fail before it says it serves."""
    db = tmp_path / "alpha.db"
    init_bank(pki, db)
    with immutable(db):
        code, events = run_to_exit("strife-bank", bank_args(pki, db))
    assert code == 1
    assert not any(e.get("event") == "server_started" for e in events)
    [error] = _errors(events)
    assert error["event"] == "storage_failed"
    assert "cannot be written" in error["error"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_bank_database_stops_the_bank(pki: Pki, tmp_path: Path, damage: str) -> None:
    db = tmp_path / "alpha.db"
    init_bank(pki, db)
    if damage == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
    else:
        with db.open("r+b") as file:
            file.truncate(4096)  # the header page, and nothing it points to
    code, events = run_to_exit("strife-bank", bank_args(pki, db))
    assert code == 1
    [error] = _errors(events)
    assert error["event"] == "storage_failed"
    assert str(db) in error["error"]


@pytest.mark.parametrize("damage", ["garbage", "immutable"])
def test_a_gateway_whose_database_cannot_serve_fails_at_start(
    pki: Pki, tmp_path: Path, damage: str
) -> None:
    db = tmp_path / "gw-1.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
        code, events = run_to_exit("strife-gateway", gateway_args(pki, db))
    else:
        process = ServiceProcess("strife-gateway", gateway_args(pki, db), tmp_path / "gw.log")
        process.start()
        assert process.stop() == 0
        with immutable(db):
            code, events = run_to_exit("strife-gateway", gateway_args(pki, db))
    assert code == 1
    assert not any(e.get("event") == "server_started" for e in events)
    [error] = _errors(events)
    assert error["event"] == "storage_failed"


# --------------------------------------------------- a bank's own database


async def test_a_bank_starts_only_on_its_own_database(pki: Pki, tmp_path: Path) -> None:
    """Missing or empty: refused without --init (no fresh seeded books).
    --init on the bank's own database changes nothing."""
    db = tmp_path / "alpha.db"
    seed = write_seed(tmp_path / "seed.json")
    first = ServiceProcess(
        "strife-bank", bank_args(pki, db, "--init", "--seed", str(seed)), tmp_path / "a.log"
    )
    first.start()
    try:
        async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
            client = BankClient(pool, first.address)
            paid = uuid.uuid4().hex
            await client.prepare(paid, "ada-usd", 300_00)
            await client.commit(paid)
    finally:
        assert first.stop() == 0

    # Restarted with --init (as a script that always passes it would): a no-op.
    again = ServiceProcess(
        "strife-bank", bank_args(pki, db, "--init", "--seed", str(seed)), tmp_path / "b.log"
    )
    again.start()
    try:
        async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
            assert (await BankClient(pool, again.address).balance("ada-usd"))[0] == 700_00
    finally:
        assert again.stop() == 0

    saved = tmp_path / "saved.db"
    shutil.copy(db, saved)
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    code, events = run_to_exit("strife-bank", bank_args(pki, db, "--seed", str(seed)))
    assert code == 1
    [error] = _errors(events)
    assert "no database for bank 'alpha'" in error["error"] and "--init" in error["error"]
    assert not db.exists()

    for emptied in ("zero bytes", "no tables"):
        db.write_bytes(b"")
        if emptied == "no tables":
            sqlite3.connect(db).execute("VACUUM").connection.close()
        code, events = run_to_exit("strife-bank", bank_args(pki, db, "--seed", str(seed)))
        assert code == 1, emptied
        [error] = _errors(events)
        assert "--init" in error["error"], emptied

    # The restored file serves again, without --init, with the money moved.
    shutil.copy(saved, db)
    restored = ServiceProcess("strife-bank", bank_args(pki, db), tmp_path / "c.log")
    restored.start()
    try:
        async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
            assert (await BankClient(pool, restored.address).balance("ada-usd"))[0] == 700_00
    finally:
        assert restored.stop() == 0


def test_a_bank_refuses_another_banks_or_clusters_database(pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "alpha.db"
    init_bank(pki, db)

    code, events = run_to_exit("strife-bank", bank_args(pki, db, "--init", name="beta"))
    assert code == 1
    [error] = _errors(events)
    assert "belongs to bank 'alpha', not to 'beta'" in error["error"]

    # Bank alpha of another cluster: same name, another CA.
    other_ca = certs.create_ca(common_name="Another cluster's CA")
    other = tmp_path / "other-bank-alpha"
    certs.write_identity(other, other_ca.cert, certs.issue(other_ca, role="bank", name="alpha"))
    args = bank_args(pki, db, "--init")
    args[args.index("--certs") + 1] = str(other)
    code, events = run_to_exit("strife-bank", args)
    assert code == 1
    [error] = _errors(events)
    assert "another cluster" in error["error"]


# ------------------------------------------------------------ a taken port


@pytest.mark.parametrize("server", ["strife-bank", "strife-gateway"])
def test_a_server_that_cannot_bind_its_port_exits_1(pki: Pki, tmp_path: Path, server: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if server == "strife-bank":
            seed = write_seed(tmp_path / "seed.json")
            args = bank_args(pki, tmp_path / "alpha.db", "--init", "--seed", str(seed))
        else:
            args = gateway_args(pki, tmp_path / "gw-1.db")
        args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
        code, events = run_to_exit(server, args)
    assert code == 1
    [error] = _errors(events)
    assert error["event"] == "listen_failed"
    assert f"127.0.0.1:{port}" in error["error"]


# ------------------------------------- a database deleted or replaced live


@pytest.mark.parametrize(
    ("server", "how"),
    [
        ("strife-bank", "deleted"),
        ("strife-bank", "replaced"),
        ("strife-gateway", "deleted"),
        ("strife-gateway", "replaced"),
    ],
)
def test_a_database_deleted_or_replaced_under_a_server_stops_it(
    pki: Pki, tmp_path: Path, server: str, how: str
) -> None:
    if server == "strife-bank":
        db = tmp_path / "alpha.db"
        seed = write_seed(tmp_path / "seed.json")
        args = bank_args(pki, db, "--init", "--seed", str(seed))
    else:
        db = tmp_path / "gw-1.db"
        args = gateway_args(pki, db)
    process = ServiceProcess(server, args, tmp_path / "server.log")
    process.start()
    try:
        if how == "deleted":
            db.unlink()
        else:  # e.g. a restore copied over it
            shutil.copy(db, tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", db)
        code, events = stopped(process)
    finally:
        process.stop()
    assert code == 1
    [error] = _errors(events)
    assert error["event"] == "database_lost"
    assert how in error["error"]
