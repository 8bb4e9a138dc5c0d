"""Outbox benchmark: how fast a client drains N queued payments through a real gateway.

Two real `strife-bank` processes (alpha, beta) and one `strife-gateway`, all
over mTLS with `--synchronous FULL` and `--log-level warning`, and a
`StrifeClient` in this process with its outbox at `synchronous=FULL`:

1. enqueue: `pay(..., wait_s=0)` N times with no drainer running, so every
   payment is on disk in the outbox first (one transaction, one fsync, each);
2. drain: `drain()` passes until nothing is queued; every payment is a
   cross-bank two-phase commit (ada at alpha pays cy at beta one cent), sent
   `window` at a time in creation order, each window marked IN_FLIGHT and
   recorded in one outbox transaction apiece.

Each window size gets a fresh outbox. Afterwards every entry must be
COMMITTED with a distinct transfer id, and the banks' balances must have
moved by exactly N cents per run (exactly once, nothing lost).

    .venv/bin/python benchmarks/bench_outbox.py                  # 10,000 payments, windows 16
    .venv/bin/python benchmarks/bench_outbox.py --count 2000 --windows 1,16,64

Prints a table and writes JSON to benchmarks/results/outbox.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from _harness import Child, free_port, own_cpu_s, stopping

from strife.client import ClientConfig, EntryState, StrifeClient
from strife.observability.logging import configure_logging
from strife.security import certs

RESULTS = Path(__file__).parent / "results" / "outbox.json"
START_TIMEOUT_S = 30.0
OPENING_BALANCE = "1000000000.00"
MAX_COUNT = 200_000


def write_seed(path: Path) -> None:
    rows = [
        ("alpha", "c-ada", "ada", "Ada", "pw-ada", "ada-usd"),
        ("beta", "c-cy", "cy", "Cy", "pw-cy", "cy-usd"),
    ]
    path.write_text(
        json.dumps(
            [
                {
                    "bank": bank,
                    "customer_id": customer,
                    "username": user,
                    "display_name": name,
                    "password": password,
                    "account_id": account,
                    "currency": "USD",
                    "opening_balance": OPENING_BALANCE,
                }
                for bank, customer, user, name, password, account in rows
            ]
        )
    )


def identities(root: Path) -> dict[str, Path]:
    ca = certs.create_ca()
    folders = {}
    for role, name in (
        ("bank", "alpha"),
        ("bank", "beta"),
        ("gateway", "gw-1"),
        ("client", "bench"),
    ):
        folder = root / f"{role}-{name}"
        certs.write_identity(folder, ca.cert, certs.issue(ca, role=role, name=name))
        folders[name] = folder
    return folders


async def start_cluster(root: Path, children: list[Child]) -> tuple[str, Child]:
    ids = identities(root)
    seed = root / "seed.json"
    write_seed(seed)
    ports = {name: free_port() for name in ("alpha", "beta", "gw-1")}
    common = ["--log-level", "warning", "--grace", "2", "--synchronous", "FULL"]
    for bank in ("alpha", "beta"):
        child = Child(
            "strife-bank",
            [
                "--name",
                bank,
                "--listen",
                f"127.0.0.1:{ports[bank]}",
                "--db",
                str(root / f"{bank}.db"),
                "--init",
                "--seed",
                str(seed),
                "--certs",
                str(ids[bank]),
                f"--coordinator=gw-1=127.0.0.1:{ports['gw-1']}",
                *common,
            ],
            root / f"{bank}.log",
        ).start()
        children.append(child)
    gateway = Child(
        "strife-gateway",
        [
            "--name",
            "gw-1",
            "--listen",
            f"127.0.0.1:{ports['gw-1']}",
            "--db",
            str(root / "gw-1.db"),
            "--certs",
            str(ids["gw-1"]),
            "--token-key",
            str(root / "token.key"),
            f"--bank=alpha=127.0.0.1:{ports['alpha']}",
            f"--bank=beta=127.0.0.1:{ports['beta']}",
            *common,
        ],
        root / "gw-1.log",
    ).start()
    children.append(gateway)
    for child, port in zip(children, ports.values(), strict=True):
        await child.wait_listening(port, START_TIMEOUT_S)
    return f"127.0.0.1:{ports['gw-1']}", gateway


async def one_run(
    root: Path, gateway: str, gateway_child: Child, count: int, window: int
) -> dict[str, Any]:
    config = ClientConfig(
        window=window,
        max_unsettled=count,
        max_settled_kept=count,
        drain_timeout_s=3600.0,
        synchronous="FULL",
    )
    async with StrifeClient(
        certs=root / "client-bench",
        gateways=[gateway],
        outbox=root / f"outbox-w{window}.db",
        config=config,
        background=False,
    ) as client:
        await client.login("ada", "pw-ada", "alpha")
        before = await client.balance("alpha/ada-usd")

        began = time.perf_counter()
        for _ in range(count):
            await client.pay("beta/cy-usd", amount_minor=1, currency="USD", wait_s=0)
        enqueue_s = time.perf_counter() - began

        cpu_client, cpu_gateway = own_cpu_s(), gateway_child.cpu_s()
        began = time.perf_counter()
        passes, settled = 0, 0
        while True:
            passes += 1
            result = await client.drain()
            settled += len(result.settled)
            if result.waiting == 0:
                break
            if passes > 1000:
                raise RuntimeError(f"still {result.waiting} queued: {result.problem}")
        drain_s = time.perf_counter() - began
        cpu_client = own_cpu_s() - cpu_client
        after_cpu = gateway_child.cpu_s()
        cpu_gateway = None if after_cpu is None or cpu_gateway is None else after_cpu - cpu_gateway

        entries = await client.outbox_entries(limit=min(count, 10_000))
        # Every state's count, beyond the 10,000 entries one listing returns.
        states = {str(s): n for s, n in (await client._outbox.counts()).items() if n}
        committed = states.get(str(EntryState.COMMITTED), 0)
        after = await client.balance("alpha/ada-usd")
        moved = before.balance_minor - after.balance_minor
        transfer_ids = {e.transfer_id for e in entries}
        if committed != count or moved != count or len(transfer_ids) != len(entries):
            raise AssertionError(
                f"window {window}: {states}, ada moved {moved} cents for {count} payments,"
                f" {len(transfer_ids)} distinct transfer ids in {len(entries)} entries"
            )
        resent = sum(e.sends - 1 for e in entries)  # retries seen in the entries listed
    return {
        "window": window,
        "count": count,
        "enqueue_s": round(enqueue_s, 3),
        "enqueue_per_s": round(count / enqueue_s, 1),
        "drain_s": round(drain_s, 3),
        "drain_per_s": round(count / drain_s, 1),
        "passes": passes,
        "settled_reported": settled,
        "states": states,
        "resends": resent,
        "client_cpu_s": round(cpu_client, 2),
        "gateway_cpu_s": None if cpu_gateway is None else round(cpu_gateway, 2),
        "exactly_once": True,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000, help="queued payments per run")
    parser.add_argument(
        "--windows",
        default=str(ClientConfig().window),
        help="comma-separated drain windows (concurrent sends); default: the client's default",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, help="keep databases and logs here (a new folder)")
    args = parser.parse_args()
    if not 1 <= args.count <= MAX_COUNT:
        parser.error(f"--count must be in 1-{MAX_COUNT}")
    try:
        args.windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        parser.error("--windows takes integers, e.g. 1,16,64")
    if not all(1 <= w <= 256 for w in args.windows):
        parser.error("windows must be in 1-256")
    return args


def main() -> None:
    args = parse_args()
    configure_logging("console", "warning")
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
        },
        "caveat": (
            f"client, gateway and both banks share this machine's {os.cpu_count()} cores;"
            " every payment is a cross-bank 2PC with fsyncs at the outbox, the gateway and"
            " both banks, so this is the end-to-end delivery rate, not the outbox alone"
        ),
        "params": {"count": args.count, "windows": args.windows},
        "runs": [],
    }
    children: list[Child] = []
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="strife-outbox-")))
        else:
            root = args.workdir
            root.mkdir(parents=True, exist_ok=False)

        async def body() -> None:
            gateway, gateway_child = await start_cluster(root, children)
            for window in args.windows:
                run = await one_run(root, gateway, gateway_child, args.count, window)
                report["runs"].append(run)
                print(
                    f"window {window:>3}: enqueued {args.count} in {run['enqueue_s']:.2f} s"
                    f" ({run['enqueue_per_s']:.0f}/s); drained in {run['drain_s']:.2f} s"
                    f" = {run['drain_per_s']:.0f} payments/s ({run['passes']} passes)",
                    flush=True,
                )

        with stopping(children):
            asyncio.run(body())
    report["wall_s"] = round(time.monotonic() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"caveat: {report['caveat']}")
    print(f"wrote {args.out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
