"""Failpoints: the configuration syntax, delays, keys, counts, the re-read file,
and the bank's places (a slow prepare, one transfer's refused commit)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from strife.faults import EXIT_STATUS, Failpoint, parse
from strife.rpc.channels import ChannelPool

from .bank_fixtures import BankClient, new_id, write_seed
from .conftest import Pki
from .processes import ServiceProcess


def test_parse_names_actions_keys_and_counts() -> None:
    assert parse(" a.b , c=delay:0.25@tid-1*2\nd=error*1 e=exit@k ") == [
        Failpoint("a.b"),
        Failpoint("c", "delay", 0.25, "tid-1", 2),
        Failpoint("d", "error", 0.0, None, 1),
        Failpoint("e", "exit", 0.0, "k", None),
    ]
    assert parse("") == []
    for bad in ("a=sleep", "a=delay:", "a*x", "=exit"):
        with pytest.raises(ValueError):
            parse(bad)


def test_an_entry_fires_for_its_key_and_at_most_count_times() -> None:
    [keyed] = parse("x=error@t1*2")
    assert not keyed.take("x", ("t2",))
    assert not keyed.take("y", ("t1",))
    assert keyed.take("x", ("t0", "t1"))  # a batch naming it
    assert keyed.take("x", ("t1",))
    assert not keyed.take("x", ("t1",))  # used up
    [anyone] = parse("x=delay:1")
    assert all(anyone.take("x", ()) for _ in range(5))


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_delay_key_count_and_exit_in_a_process() -> None:
    script = """
        import asyncio, time
        from strife.faults import failpoint, failpoint_async

        async def main():
            started = time.monotonic()
            await failpoint_async("slow", "t1")
            first = time.monotonic() - started
            started = time.monotonic()
            await failpoint_async("slow", "t1")
            failpoint("slow")  # a delay is for coroutines only
            second = time.monotonic() - started
            print(round(first, 2) >= 0.3, second < 0.2, flush=True)
            failpoint("die", "other")
            print("alive", flush=True)
            failpoint("die", "t9")
            print("not reached", flush=True)

        asyncio.run(main())
    """
    done = _run(script, {"STRIFE_FAILPOINTS": "slow=delay:0.3*1,die@t9"})
    assert done.returncode == EXIT_STATUS, done.stderr
    assert done.stdout.split("\n")[:2] == ["True True", "alive"]
    assert '"failpoint"' in done.stderr or "failpoint" in done.stderr


def test_a_plain_name_still_exits_at_once() -> None:
    done = _run(
        "from strife.faults import failpoint\nfailpoint('boom')\nprint('survived')",
        {"STRIFE_FAILPOINTS": "boom"},
    )
    assert (done.returncode, done.stdout) == (EXIT_STATUS, "")


def test_the_file_is_read_again_on_every_call(tmp_path: Path) -> None:
    armed = tmp_path / "failpoints"
    script = f"""
        from pathlib import Path
        from strife.faults import FailpointError, failpoint

        def refused(key):
            try:
                failpoint("bank.before_commit", key)
            except FailpointError:
                return True
            return False

        path = Path({str(armed)!r})
        print(refused("t1"), flush=True)  # no file yet: nothing armed
        path.write_text("bank.before_commit=error@t1*1")
        print(refused("t2"), refused("t1"), refused("t1"), flush=True)
        path.write_text("bank.before_commit=error@t1*1\\n")  # changed: counts afresh
        print(refused("t1"), flush=True)
        path.write_text("")
        print(refused("t1"), flush=True)
    """
    done = _run(script, {"STRIFE_FAILPOINTS_FILE": str(armed)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "False", "True", "False"]


@contextmanager
def bank(pki: Pki, tmp: Path, env: dict[str, str]) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "strife-bank",
        [
            "--name",
            "alpha",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp / "alpha.db"),
            "--init",
            "--seed",
            str(write_seed(tmp / "seed.json")),
            "--certs",
            str(pki.identity("bank", "alpha")),
            "--grace",
            "1",
        ],
        tmp / "alpha.log",
        env=env,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


async def test_a_bank_delays_its_first_prepare_and_refuses_one_transfer(
    pki: Pki, tmp_path: Path
) -> None:
    armed = tmp_path / "failpoints"
    env = {
        "STRIFE_FAILPOINTS": "bank.before_prepare=delay:1.0*1",
        "STRIFE_FAILPOINTS_FILE": str(armed),
    }
    with bank(pki, tmp_path, env) as process:
        async with ChannelPool(pki.identity("gateway", "gw-1")) as pool:
            client = BankClient(pool, process.address)
            slow, fast, refused = new_id(), new_id(), new_id()
            started = time.monotonic()
            await client.prepare(slow, "ada-usd", 100)
            assert time.monotonic() - started >= 1.0
            started = time.monotonic()
            await client.prepare(fast, "ada-usd", 100)
            await client.prepare(refused, "ada-usd", 100)
            assert time.monotonic() - started < 1.0
            armed.write_text(f"bank.before_commit=error@{refused}")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.commit(refused)
            assert caught.value.code() is grpc.StatusCode.INTERNAL
            await client.commit(slow)
            await client.abort(fast)
            assert await client.balance("ada-usd") == (100_000 - 100, 100, 100_000 - 200)
            armed.write_text("")
            await client.commit(refused)
            assert await client.balance("ada-usd") == (100_000 - 200, 0, 100_000 - 200)
    fired = [e for e in process.log_events() if e.get("event") == "failpoint"]
    assert [(e["failpoint"], e["action"]) for e in fired] == [
        ("bank.before_prepare", "delay"),
        ("bank.before_commit", "error"),
    ]
