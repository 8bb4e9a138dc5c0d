"""Replicated bank benchmark: a PBFT group of four against one plain bank, in one run.

Two banks run side by side on this machine: `plain`, one `strife-bank`
process, and `replicated`, four `strife-bank-replica` processes (f = 1) whose
calls go through the f + 1 client (`strife.bft.bank_client.ReplicatedBank`).
Both are over mTLS, both fsync (`--synchronous FULL`), both called as
gateway `gw-1`. The unit of work is what a bank does for one leg of a
payment: a Prepare and its Commit, a fresh transfer id each time, debits and
credits alternating over accounts large enough that nothing is refused.
Closed loops of `--concurrency` callers; rounds alternate which bank goes
first, ratios are per round, figures are medians over rounds.

`--byzantine NAME` makes replica 1 misbehave (e.g. `wrong-results`, or
`silent`) for the whole run, to see what one faulty replica costs.

    .venv/bin/python benchmarks/bench_bft.py                # ~2 min
    .venv/bin/python benchmarks/bench_bft.py --quick        # smoke run, ~30 s

Prints a table and writes JSON to benchmarks/results/bft.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _harness import Child, Run, closed_loop, free_port, percentile, stopping

from strife.bft.bank_client import connect
from strife.bft.cluster import plan_group
from strife.rpc.channels import ChannelPool, Peer
from strife.security import certs
from strife.v1 import bank_pb2, bank_pb2_grpc, money_pb2

RESULTS = Path(__file__).parent / "results" / "bft.json"
ACCOUNTS = 8
CALL_S = 10.0


def seed(bank: str) -> list[dict[str, str]]:
    return [
        {
            "bank": bank, "customer_id": f"c-{i}", "username": f"u{i}", "display_name": f"U{i}",
            "password": "pw", "account_id": f"acct-{i}", "currency": "USD",
            "opening_balance": "1000000000.00",
        }
        for i in range(ACCOUNTS)
    ]  # fmt: skip


def leg_pair(stub: Any, bank: str) -> Callable[[int, int], Awaitable[None]]:
    """One Prepare and its Commit, as a coordinator sends them for one leg."""

    async def op(caller: int, n: int) -> None:
        transfer_id = uuid.uuid4().hex
        debit = (caller + n) % 2 == 0
        await stub.Prepare(
            bank_pb2.PrepareRequest(
                bank=bank, transfer_id=transfer_id, coordinator="gw-1",
                leg=bank_pb2.LEG_DEBIT if debit else bank_pb2.LEG_CREDIT,
                account_id=f"acct-{(caller * 7 + n) % ACCOUNTS}",
                amount=money_pb2.Money(amount_minor=100, currency="USD"),
                fingerprint=transfer_id.encode(), counterparty="elsewhere",
            ),
            timeout=CALL_S,
        )  # fmt: skip
        await stub.Commit(
            bank_pb2.CommitRequest(bank=bank, transfer_id=transfer_id, coordinator="gw-1"),
            timeout=CALL_S,
        )

    return op


def summary(run: Run) -> dict[str, Any]:
    return {
        "legs_per_s": round(run.per_s, 1),
        "p50_ms": round(percentile(run.latencies_ms, 0.50), 2),
        "p99_ms": round(percentile(run.latencies_ms, 0.99), 2),
        "legs": run.ops,
        "errors": dict(run.errors),
    }


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ca = certs.create_ca()
    identities = {}
    for role, name in [("bank", "alpha"), ("gateway", "gw-1")] + [
        ("bank", f"vault-{i}") for i in range(4)
    ]:
        folder = work / "certs" / f"{role}-{name}"
        certs.write_identity(folder, ca.cert, certs.issue(ca, role=role, name=name))
        identities[name] = folder
    for bank in ("alpha", "vault"):
        (work / f"{bank}.json").write_text(json.dumps(seed(bank)))
    plan = plan_group(work / "bft", "vault", 4, ("gw-1",))
    quiet = ["--log-level", "warning", "--synchronous", "FULL"]
    port = free_port()
    plain = Child(
        "strife-bank",
        [
            "--name", "alpha", "--db", str(work / "alpha.db"), "--init",
            "--seed", str(work / "alpha.json"), "--certs", str(identities["alpha"]),
            "--listen", f"127.0.0.1:{port}", *quiet,
        ],
        work / "alpha.log",
    )  # fmt: skip
    replicas = [
        Child(
            "strife-bank-replica",
            [
                "--group",
                str(plan.group_file),
                "--replica",
                r.name,
                "--signing-key",
                str(plan.replica_keys[r.name]),
                "--db",
                str(work / f"{r.name}.db"),
                "--seed",
                str(work / "vault.json"),
                "--certs",
                str(identities[r.name]),
                *quiet,
                *(["--byzantine", args.byzantine] if args.byzantine and i == 1 else []),
            ],
            work / f"{r.name}.log",
        )
        for i, r in enumerate(plan.group.replicas)
    ]
    children = [plain, *replicas]
    with stopping(children):
        for child in children:
            child.start()
        await plain.wait_listening(port, 30)
        for child, entry in zip(replicas, plan.group.replicas, strict=True):
            await child.wait_listening(int(entry.address.rsplit(":", 1)[1]), 30)
        async with ChannelPool(identities["gw-1"]) as pool:
            stubs = {
                "plain": (
                    bank_pb2_grpc.BankServiceStub(
                        pool.get(f"127.0.0.1:{port}", Peer("bank", "alpha"))
                    ),
                    "alpha",
                ),
                "replicated": (
                    connect(
                        plan.group_file, "gateway/gw-1", plan.client_keys["gateway/gw-1"], pool
                    ),
                    "vault",
                ),
            }
            for stub, bank in stubs.values():  # warm-up: channels, the first batches
                await closed_loop(leg_pair(stub, bank), args.concurrency, 1.0)
            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                order = list(stubs) if r % 2 == 0 else list(reversed(stubs))
                runs = {}
                for name in order:
                    stub, bank = stubs[name]
                    runs[name] = await closed_loop(
                        leg_pair(stub, bank), args.concurrency, args.seconds
                    )
                rounds.append({name: summary(run) for name, run in runs.items()})
                ratio = runs["replicated"].per_s / runs["plain"].per_s
                rounds[-1]["ratio"] = round(ratio, 3)
                print(
                    f"round {r + 1}: plain {runs['plain'].per_s:7.1f} legs/s, replicated"
                    f" {runs['replicated'].per_s:7.1f} legs/s, ratio {ratio:.3f}",
                    file=sys.stderr,
                )
    return {"rounds": rounds}


def median(rounds: list[dict[str, Any]], name: str, key: str) -> float:
    return round(float(statistics.median(r[name][key] for r in rounds)), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--byzantine", default=None, help="replica 1 misbehaves this way")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 3, 3.0
    with tempfile.TemporaryDirectory(prefix="bench-bft-") as tmp:
        measured = asyncio.run(measure(args, Path(tmp)))
    rounds = measured["rounds"]
    result = {
        "benchmark": "bft",
        "unit": "payment legs (Prepare + Commit) per second",
        "concurrency": args.concurrency,
        "seconds_per_run": args.seconds,
        "rounds": rounds,
        "byzantine": args.byzantine,
        "plain": {k: median(rounds, "plain", k) for k in ("legs_per_s", "p50_ms", "p99_ms")},
        "replicated": {
            k: median(rounds, "replicated", k) for k in ("legs_per_s", "p50_ms", "p99_ms")
        },
        "ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"{'':12}{'legs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name in ("plain", "replicated"):
        row = result[name]
        print(f"{name:12}{row['legs_per_s']:>10}{row['p50_ms']:>10}{row['p99_ms']:>10}")
    print(f"replicated / plain: {result['ratio']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
