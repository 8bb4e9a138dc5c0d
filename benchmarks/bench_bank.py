"""Bank benchmark: two-phase-commit legs per second against real `strife-bank` processes.

Three banks run side by side, each a real `strife-bank` over mTLS with
`--synchronous FULL` and `--log-level warning`, called as gateway `gw-1`:

- `group`: a fresh database and the default group-commit cap;
- `batch1`: a fresh database and `--max-batch 1` (one COMMIT, one fsync, per request);
- `big`: the default cap on a database pre-populated with `--entries` ledger
  entries (1M; written directly with sqlite3 while that bank is stopped).

In every round each bank gets, back to back: grpc.health Check calls (the
cheapest call the same server answers, through the same interceptors: the
baseline), then Prepare+Commit pairs, each pair a fresh transfer id,
debits and credits alternating over a handful of accounts whose balances are
large enough that nothing is refused. Both are closed loops of `--concurrency`
callers on one long-lived channel, as the gateway's ChannelPool keeps. The
machine is shared and noisy, so runs that are compared sit next to each other
in time (a bank's health next to its pairs, `group`'s pairs next to `big`'s),
every other round runs backwards, ratios are taken per round, and figures are
medians over rounds. The CPU other processes took during each run is reported
as the noise figure. One GetTransactionHistory page is also timed (single
caller, no other load) on `group` and `big`.

After the banks are stopped, each database is checked: every account's
balance equals the sum of its entries, nothing is left held or PREPARED, and
the COMMITTED transfers are exactly the pairs the client saw succeed.

    .venv/bin/python benchmarks/bench_bank.py                 # ~4 min
    .venv/bin/python benchmarks/bench_bank.py --quick         # smoke run, ~15 s

Prints a table and writes JSON to benchmarks/results/bank.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from _harness import Child, Run, closed_loop, free_port, percentile, stopping
from grpc_health.v1 import health_pb2

from strife.observability.logging import configure_logging
from strife.rpc.channels import ChannelPool, health_stub
from strife.rpc.server import run
from strife.security import certs
from strife.v1 import bank_pb2, bank_pb2_grpc, money_pb2

RESULTS = Path(__file__).parent / "results" / "bank.json"
BANK = "alpha"
GATEWAY = "gw-1"  # the coordinator field must be the caller certificate's name
CURRENCY = "USD"
# Four customers with two accounts each; 10^9 dollars apiece so no debit is refused.
ACCOUNTS = tuple(f"bench-{n}" for n in range(8))
OPENING_BALANCE = "1000000000.00"
FINGERPRINT = bytes(range(32))  # a request digest is 32 bytes (SHA-256)
COUNTERPARTY = "beta/bench-remote"
CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
MAX_START_ATTEMPTS = 3
HISTORY_PAGE_SIZE = 50
# One round's measurements, in order (reversed every other round).
ROUND = (
    ("group", "health"),
    ("group", "pairs"),
    ("big", "pairs"),
    ("big", "health"),
    ("batch1", "health"),
    ("batch1", "pairs"),
)
BULK_TRANSFERS_PER_TXN = 50_000
BATCH_METRIC = "strife_bank_group_commit_batch_size"
RATIO_TARGET = 0.6
NOISY_OTHER_CORES = 0.25
BIG_FRESH_TOLERANCE = 0.10


def default_max_batch() -> int:
    """The bank's own default group-commit cap, read from its CLI definition."""
    from strife.bank.main import main as bank_main

    for param in bank_main.params:
        if param.name == "max_batch" and isinstance(param.default, int):
            return param.default
    raise RuntimeError("strife-bank has no --max-batch default")


# --- setting up --------------------------------------------------------------


def make_identities(root: Path) -> tuple[Path, Path]:
    """The bank's and gateway gw-1's identity folders, under one fresh CA."""
    ca = certs.create_ca()
    folders = []
    for role, name in (("bank", BANK), ("gateway", GATEWAY)):
        folder = root / f"{role}-{name}"
        certs.write_identity(folder, ca.cert, certs.issue(ca, role=role, name=name))
        folders.append(folder)
    return folders[0], folders[1]


def write_seed(path: Path) -> Path:
    rows = [
        {
            "bank": BANK,
            "customer_id": f"c-bench-{n // 2}",
            "username": f"bench{n // 2}",
            "display_name": f"Bench {n // 2}",
            "password": f"pw-bench-{n // 2}",
            "account_id": account,
            "currency": CURRENCY,
            "opening_balance": OPENING_BALANCE,
        }
        for n, account in enumerate(ACCOUNTS)
    ]
    path.write_text(json.dumps(rows))
    return path


@dataclass
class Bank:
    """One `strife-bank` process under test; restarted on a new port if need be."""

    key: str
    label: str
    db: Path
    extra_args: list[str]
    certs_dir: Path
    seed: Path
    root: Path
    child: Child | None = None
    port: int = 0
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        return [
            "--name",
            BANK,
            "--db",
            str(self.db),
            # Creates the database on the first start; a no-op on a restart.
            "--init",
            "--seed",
            str(self.seed),
            "--certs",
            str(self.certs_dir),
            "--listen",
            self.address,
            "--synchronous",
            "FULL",
            "--log-level",
            "warning",
            "--grace",
            "2",
            # For the group-commit batch-size histogram; idle unless scraped.
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            *self.extra_args,
        ]

    async def start(self, children: list[Child]) -> None:
        """Start and wait until it listens; a lost race for the port is retried."""
        for attempt in range(1, MAX_START_ATTEMPTS + 1):
            self.port, self.metrics_port = free_port(), free_port()
            self.child = Child("strife-bank", self._args(), self.root / f"{self.key}.log").start()
            children.append(self.child)
            try:
                await self.child.wait_listening(self.port, START_TIMEOUT_S)
                return
            except RuntimeError:
                self.child.stop()
                if attempt == MAX_START_ATTEMPTS:
                    raise

    def stop(self) -> None:
        if self.child is not None:
            code = self.child.stop()
            if code not in (0, None):
                print(f"warning: {self.key} bank exited with {code}:\n{self.child.log_tail()}")

    async def commits(self) -> tuple[float, float]:
        """(SQLite commits, operations committed) so far, from the bank's own histogram."""

        def scrape() -> str:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=CALL_TIMEOUT_S) as reply:
                return str(reply.read().decode())

        count = total = 0.0
        for line in (await asyncio.to_thread(scrape)).splitlines():
            if line.startswith(f"{BATCH_METRIC}_count"):
                count = float(line.split()[-1])
            elif line.startswith(f"{BATCH_METRIC}_sum"):
                total = float(line.split()[-1])
        return count, total

    def max_entry_seq(self) -> int:
        """How many ledger entries the bank holds (entries are never deleted)."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()
        return int(row[0])


def populate(db: Path, entries: int) -> dict[str, Any]:
    """Append `entries` ledger entries and their COMMITTED transfers to a stopped bank's DB.

    Each transfer is a one-phase payment of 1 cent between two seeded accounts,
    so its entries sum to zero, and the next transfer pays it back, so every
    account's balance still equals the sum of its entries. Ids are random
    UUIDs like the gateway's, so index lookups by id are as scattered as in
    production. `synchronous=OFF` because this is a fixture, not the system
    under test.
    """
    transfers = entries // 4 * 2  # whole there-and-back pairs
    began = time.perf_counter()
    at_ms = time.time_ns() // 1_000_000
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # KiB: keep the indexes in memory
        for start in range(0, transfers, BULK_TRANSFERS_PER_TXN):
            transfer_rows: list[tuple[Any, ...]] = []
            entry_rows: list[tuple[Any, ...]] = []
            for k in range(start, min(start + BULK_TRANSFERS_PER_TXN, transfers)):
                there = ACCOUNTS[(k // 2) % len(ACCOUNTS)]
                back = ACCOUNTS[(k // 2 + 1) % len(ACCOUNTS)]
                payer, payee = (there, back) if k % 2 == 0 else (back, there)
                transfer_id = uuid.uuid4().hex
                # The store's postings format: [account, leg, amount_minor, currency, counterparty].
                postings = json.dumps(
                    [[payer, "DEBIT", 1, CURRENCY, payee], [payee, "CREDIT", 1, CURRENCY, payer]]
                )
                transfer_rows.append(
                    (transfer_id, FINGERPRINT, "COMMITTED", GATEWAY, 1, "", postings, at_ms)
                )
                entry_rows.append((transfer_id, payer, -1, CURRENCY, payee, at_ms))
                entry_rows.append((transfer_id, payee, 1, CURRENCY, payer, at_ms))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO transfers (transfer_id, fingerprint, state, coordinator, one_phase,"
                " abort_reason, postings, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                transfer_rows,
            )
            conn.executemany(
                "INSERT INTO entries (transfer_seq, transfer_id, account_id, amount_minor,"
                " currency, counterparty, posted_at_ms) VALUES"
                " ((SELECT seq FROM transfers WHERE transfer_id = ?1), ?1, ?2, ?3, ?4, ?5, ?6)",
                entry_rows,
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sample = conn.execute("SELECT transfer_id FROM transfers WHERE one_phase = 1").fetchone()
    finally:
        conn.close()
    return {
        "entries": transfers * 2,
        "transfers": transfers,
        "seconds": round(time.perf_counter() - began, 1),
        "sample_transfer_id": sample[0],
    }


def verify(db: Path, pairs_ok: int) -> dict[str, Any]:
    """The stopped bank's books: balances = sums of entries, nothing held, no lost pair."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT a.account_id, a.balance_minor, a.held_minor, a.pending_credit_minor,"
            " (SELECT COALESCE(SUM(e.amount_minor), 0) FROM entries e"
            "  WHERE e.account_id = a.account_id) FROM accounts a"
        ).fetchall()
        prepared = conn.execute(
            "SELECT COUNT(*) FROM transfers WHERE state = 'PREPARED'"
        ).fetchone()
        committed = conn.execute(
            "SELECT COUNT(*) FROM transfers WHERE state = 'COMMITTED' AND one_phase = 0"
        ).fetchone()
        entries = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
    problems = [
        f"{account}: balance {balance} != entries {total}, held {held}, pending {pending}"
        for account, balance, held, pending, total in rows
        if balance != total or held or pending
    ]
    if prepared[0]:
        problems.append(f"{prepared[0]} transfers left PREPARED")
    if committed[0] != pairs_ok:
        problems.append(f"{committed[0]} two-phase transfers COMMITTED, client saw {pairs_ok}")
    return {
        "ok": not problems,
        "accounts": len(rows),
        "entries": entries[0],
        "two_phase_committed": committed[0],
        "problems": problems,
    }


# --- load --------------------------------------------------------------------


Op = Callable[[int, int], Awaitable[object]]


def health_op(channel: grpc.aio.Channel) -> Op:
    stub = health_stub(channel)
    request = health_pb2.HealthCheckRequest(service="")

    async def op(_caller: int, _n: int) -> None:
        await stub.Check(request, timeout=CALL_TIMEOUT_S)

    return op


def pair_op(channel: grpc.aio.Channel) -> Op:
    """Prepare then Commit one fresh transfer id: the participant's share of a payment."""
    stub = bank_pb2_grpc.BankServiceStub(channel)

    async def op(caller: int, n: int) -> None:
        transfer_id = uuid.uuid4().hex
        prepared = await stub.Prepare(
            bank_pb2.PrepareRequest(
                bank=BANK,
                transfer_id=transfer_id,
                coordinator=GATEWAY,
                leg=bank_pb2.LEG_DEBIT if n % 2 == 0 else bank_pb2.LEG_CREDIT,
                account_id=ACCOUNTS[(caller + n) % len(ACCOUNTS)],
                amount=money_pb2.Money(amount_minor=1 + (n // 2) % 100, currency=CURRENCY),
                fingerprint=FINGERPRINT,
                counterparty=COUNTERPARTY,
            ),
            timeout=CALL_TIMEOUT_S,
        )
        if prepared.state != bank_pb2.TRANSFER_STATE_PREPARED or prepared.replayed:
            raise RuntimeError(f"prepare {transfer_id}: {prepared}")
        committed = await stub.Commit(
            bank_pb2.CommitRequest(bank=BANK, transfer_id=transfer_id, coordinator=GATEWAY),
            timeout=CALL_TIMEOUT_S,
        )
        if committed.state != bank_pb2.TRANSFER_STATE_COMMITTED or committed.replayed:
            raise RuntimeError(f"commit {transfer_id}: {committed}")

    return op


async def time_history(channel: grpc.aio.Channel, calls: int, db: Path) -> dict[str, Any]:
    """One page of history, newest first and from the middle, one call at a time."""
    stub = bank_pb2_grpc.BankServiceStub(channel)
    account = ACCOUNTS[0]

    async def page(token: str) -> tuple[float, Any]:
        started = time.perf_counter()
        reply = await stub.GetTransactionHistory(
            bank_pb2.BankHistoryRequest(
                bank=BANK, account_id=account, page_size=HISTORY_PAGE_SIZE, page_token=token
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return (time.perf_counter() - started) * 1000, reply

    from strife.bank.pages import seal_page_token
    from strife.bank.store import read_page_token_key

    _, first = await page("")
    middle = seal_page_token(
        read_page_token_key(db), BANK, account, max(1, first.entries[0].sequence // 2)
    )
    result: dict[str, Any] = {"account": account, "page_size": HISTORY_PAGE_SIZE}
    for name, token in (("newest", ""), ("middle", middle)):
        latencies = []
        for _ in range(calls):
            ms, reply = await page(token)
            latencies.append(ms)
        result[f"{name}_entries"] = len(reply.entries)
        result[f"{name}_ms_p50"] = round(percentile(latencies, 0.5), 3)
        result[f"{name}_ms_p99"] = round(percentile(latencies, 0.99), 3)
    return result


@dataclass
class Rounds:
    health: list[Run] = field(default_factory=list)
    pairs: list[Run] = field(default_factory=list)
    commits: list[tuple[float, float]] = field(default_factory=list)  # per pairs run
    entries_at_start: list[int] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    pairs_ok: int = 0  # every successful pair, warm-ups included, for `verify`


async def measure(args: argparse.Namespace, root: Path, children: list[Child]) -> dict[str, Any]:
    bank_certs, gateway_certs = make_identities(root)
    seed = write_seed(root / "seed.json")
    group_cap = default_max_batch()

    def bank(key: str, label: str, extra: list[str]) -> Bank:
        return Bank(key, label, root / f"{key}.db", extra, bank_certs, seed, root)

    banks = [
        bank("group", f"group commit (max-batch {group_cap})", []),
        bank("batch1", "max-batch 1", ["--max-batch", "1"]),
        bank("big", f"group commit, +{args.entries:,} entries", []),
    ]
    report: dict[str, Any] = {"group_commit_max_batch": group_cap}
    await asyncio.gather(*(b.start(children) for b in banks))
    big = banks[2]
    big.stop()  # it has made its schema and seeded its accounts: now grow its ledger
    print(f"writing {args.entries:,} entries into {big.db.name} ...", flush=True)
    report["populate"] = await asyncio.to_thread(populate, big.db, args.entries)
    print(f"  done in {report['populate']['seconds']} s", flush=True)
    await big.start(children)

    rounds = {b.key: Rounds() for b in banks}
    async with ChannelPool(gateway_certs) as pool:
        channels = {b.key: pool.get(b.address) for b in banks}
        # The bank must read a pre-populated transfer back as its own record.
        replay = await bank_pb2_grpc.BankServiceStub(channels["big"]).Commit(
            bank_pb2.CommitRequest(
                bank=BANK,
                transfer_id=report["populate"]["sample_transfer_id"],
                coordinator=GATEWAY,
            ),
            timeout=CALL_TIMEOUT_S,
        )
        report["populate"]["sample_replayed_as_committed"] = (
            replay.state == bank_pb2.TRANSFER_STATE_COMMITTED and replay.replayed
        )
        for b in banks:
            await closed_loop(health_op(channels[b.key]), args.concurrency, args.warmup)
            warm = await closed_loop(pair_op(channels[b.key]), args.concurrency, args.warmup)
            rounds[b.key].pairs_ok += warm.ops
        by_key = {b.key: b for b in banks}

        async def step(key: str, kind: str) -> None:
            b, mine = by_key[key], rounds[key]
            assert b.child is not None
            if kind == "health":
                op = health_op(channels[key])
                mine.health.append(
                    await closed_loop(op, args.concurrency, args.duration, server=b.child)
                )
                return
            before = await b.commits()
            op = pair_op(channels[key])
            done = await closed_loop(op, args.concurrency, args.duration, server=b.child)
            after = await b.commits()
            mine.commits.append((after[0] - before[0], after[1] - before[1]))
            mine.pairs.append(done)
            mine.pairs_ok += done.ops

        for r in range(args.repeats):
            for b in banks:
                rounds[b.key].entries_at_start.append(b.max_entry_seq())
            # Each bank's health next to its pairs, and group's pairs next to big's;
            # every other round backwards, so a drift in machine load cancels out.
            for key, kind in ROUND if r % 2 == 0 else ROUND[::-1]:
                await step(key, kind)
            for key in ("group", "big"):
                db = next(b.db for b in banks if b.key == key)
                rounds[key].history.append(
                    await time_history(channels[key], args.history_calls, db)
                )
            print(
                f"  round {r + 1}/{args.repeats}: "
                + ", ".join(
                    f"{b.key} health {rounds[b.key].health[-1].per_s:.0f}/s"
                    f" pairs {rounds[b.key].pairs[-1].per_s:.0f}/s"
                    for b in banks
                ),
                flush=True,
            )
    for b in banks:
        b.stop()
    report["banks"] = {b.key: summarise(b, rounds[b.key]) for b in banks}
    group = report["banks"]["group"]
    # Per round, then the median: the two runs of a round are adjacent in time.
    report["big_over_fresh_pairs_rounds"] = [
        round(big.per_s / fresh.per_s, 3)
        for big, fresh in zip(rounds["big"].pairs, rounds["group"].pairs, strict=True)
    ]
    report["big_over_fresh_pairs"] = statistics.median(report["big_over_fresh_pairs_rounds"])
    report["targets"] = {
        "rpc_ratio_min": RATIO_TARGET,
        "rpc_ratio_met": group["rpc_ratio_to_health"] >= RATIO_TARGET,
        "big_over_fresh_within": BIG_FRESH_TOLERANCE,
        "big_over_fresh_met": abs(report["big_over_fresh_pairs"] - 1) <= BIG_FRESH_TOLERANCE,
    }
    return report


def summarise(bank: Bank, rounds: Rounds) -> dict[str, Any]:
    health = statistics.median(r.per_s for r in rounds.health)
    pairs = statistics.median(r.per_s for r in rounds.pairs)
    latencies = [ms for r in rounds.pairs for ms in r.latencies_ms]
    errors: Counter[str] = Counter()
    for r in (*rounds.health, *rounds.pairs):
        errors.update(r.errors)

    def cpu_us_per_call(runs: list[Run], calls_per_op: int) -> float | None:
        values = [r.server_cpu_s / (r.ops * calls_per_op) * 1e6 for r in runs if r.server_cpu_s]
        return round(statistics.median(values)) if values else None

    def cores(runs: list[Run], attr: str) -> float | None:
        values = [getattr(r, attr) / r.seconds for r in runs if getattr(r, attr) is not None]
        return round(statistics.median(values), 2) if values else None

    ops_per_commit = [total / count for count, total in rounds.commits if count]
    commits_per_s = [
        count / r.seconds for (count, _), r in zip(rounds.commits, rounds.pairs, strict=True)
    ]

    row: dict[str, Any] = {
        "label": bank.label,
        "args": bank.extra_args,
        "entries_at_start": rounds.entries_at_start,
        "health_per_s_median": round(health),
        "health_per_s_rounds": [round(r.per_s) for r in rounds.health],
        "pairs_per_s_median": round(pairs),
        "pairs_per_s_rounds": [round(r.per_s) for r in rounds.pairs],
        "rpcs_per_s_median": round(2 * pairs),
        "pair_latency_ms_p50": round(percentile(latencies, 0.50), 2),
        "pair_latency_ms_p99": round(percentile(latencies, 0.99), 2),
        # Per round (the two runs are adjacent in time), then the median.
        "rpc_ratio_to_health": statistics.median(
            round(2 * p.per_s / h.per_s, 3)
            for h, p in zip(rounds.health, rounds.pairs, strict=True)
        ),
        "bank_cpu_us_per_health_rpc": cpu_us_per_call(rounds.health, 1),
        "bank_cpu_us_per_2pc_rpc": cpu_us_per_call(rounds.pairs, 2),
        "bank_cores_busy_health": cores(rounds.health, "server_cpu_s"),
        "bank_cores_busy_pairs": cores(rounds.pairs, "server_cpu_s"),
        "client_cores_busy_health": cores(rounds.health, "client_cpu_s"),
        "client_cores_busy_pairs": cores(rounds.pairs, "client_cpu_s"),
        "other_cores_busy_health": cores(rounds.health, "other_cpu_s"),
        "other_cores_busy_pairs": cores(rounds.pairs, "other_cpu_s"),
        "sqlite_commits_per_s_median": round(statistics.median(commits_per_s)),
        "ops_per_commit_median": round(statistics.median(ops_per_commit), 1)
        if ops_per_commit
        else None,
        "rounds": [
            {
                "health_per_s": round(h.per_s),
                "pairs_per_s": round(p.per_s),
                "bank_cpu_us_per_2pc_rpc": round(p.server_cpu_s / (2 * p.ops) * 1e6)
                if p.server_cpu_s and p.ops
                else None,
                "other_cores_busy_pairs": None
                if p.other_cpu_s is None
                else round(p.other_cpu_s / p.seconds, 2),
            }
            for h, p in zip(rounds.health, rounds.pairs, strict=True)
        ],
        "errors": dict(errors),
        "books": verify(bank.db, rounds.pairs_ok),
    }
    if rounds.history:
        row["history"] = {
            key: statistics.median(h[key] for h in rounds.history)
            for key in rounds.history[0]
            if key.endswith(("_p50", "_p99"))
        }
    return row


# --- output ------------------------------------------------------------------


def caveat(cpus: int | None) -> str:
    return (
        f"client and bank share this machine's {cpus} cores: the load client (one process,"
        " uvloop) uses CPU the bank could otherwise use, so these are lower bounds for a bank"
        " on its own cores"
    )


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nstrife-bank over mTLS, --synchronous FULL, --log-level warning; {args.concurrency}"
        f" callers on one channel; median of {args.repeats} x {args.duration:g} s"
    )
    print(f"note: {report['caveat']}")
    print(
        f"{'bank':<34}{'entries':>10}{'health/s':>10}{'pairs/s':>9}{'RPCs/s':>8}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'RPC/hc':>8}"
    )
    for row in report["banks"].values():
        print(
            f"{row['label']:<34}{row['entries_at_start'][0]:>10,}{row['health_per_s_median']:>10}"
            f"{row['pairs_per_s_median']:>9}{row['rpcs_per_s_median']:>8}"
            f"{row['pair_latency_ms_p50']:>8.1f}{row['pair_latency_ms_p99']:>8.1f}"
            f"{row['rpc_ratio_to_health']:>8.2f}"
        )
    print(
        "  entries: ledger entries when the first round began; p50/p99: one Prepare+Commit"
        " pair; RPC/hc: Prepare+Commit RPCs/s ÷ health RPCs/s"
    )
    print(
        f"\n{'where the CPU went (cores busy)':<34}{'bank µs/RPC':>13}{'bank':>6}{'client':>8}"
        f"{'others':>8}{'commits/s':>11}{'ops/commit':>12}"
    )
    for key, row in report["banks"].items():
        for kind, us, suffix in (
            ("health", row["bank_cpu_us_per_health_rpc"], "health"),
            ("2PC", row["bank_cpu_us_per_2pc_rpc"], "pairs"),
        ):
            batches = (
                f"{row['sqlite_commits_per_s_median']:>11}{row['ops_per_commit_median']:>12}"
                if kind == "2PC"
                else ""
            )
            print(
                f"{key + ', ' + kind:<34}{us or 0:>13}"
                f"{row[f'bank_cores_busy_{suffix}'] or 0:>6.2f}"
                f"{row[f'client_cores_busy_{suffix}'] or 0:>8.2f}"
                f"{row[f'other_cores_busy_{suffix}'] or 0:>8.2f}{batches}"
            )
    print(
        "  group, batch1, big: the three banks above, in that order; others: CPU taken by"
        " other processes and the hypervisor during the runs (noise); ops/commit:"
        " Prepare/Commit operations per SQLite COMMIT (one fsync each)"
    )
    noise = [
        r[f"other_cores_busy_{kind}"]
        for r in report["banks"].values()
        for kind in ("health", "pairs")
        if r[f"other_cores_busy_{kind}"] is not None
    ]
    if noise and max(noise) > NOISY_OTHER_CORES:
        print(
            f"WARNING: other processes took up to {max(noise):.2f} of {report['machine']['cpus']}"
            " cores during the runs: these figures are depressed by noise; run again on a"
            " quiet machine"
        )
    banks, targets = report["banks"], report["targets"]
    met = {True: "met", False: "MISSED"}
    print(
        f"\nPrepare+Commit RPCs/s ÷ health RPCs/s (group commit): "
        f"{banks['group']['rpc_ratio_to_health']:.2f} "
        f"(target ≥ {RATIO_TARGET}: {met[targets['rpc_ratio_met']]})"
    )
    print(
        f"pairs/s with {report['populate']['entries']:,} more entries ÷ fresh: "
        f"{report['big_over_fresh_pairs']:.2f} (target within ±{BIG_FRESH_TOLERANCE:.0%}:"
        f" {met[targets['big_over_fresh_met']]})"
    )
    print(
        f"group commit ÷ max-batch 1 pairs/s: "
        f"{banks['group']['pairs_per_s_median'] / banks['batch1']['pairs_per_s_median']:.2f}"
    )
    for key in ("group", "big"):
        h = banks[key]["history"]
        print(
            f"history page ({HISTORY_PAGE_SIZE} entries) on {key:<5}: newest p50 "
            f"{h['newest_ms_p50']:.2f} ms (p99 {h['newest_ms_p99']:.2f}), middle p50 "
            f"{h['middle_ms_p50']:.2f} ms (p99 {h['middle_ms_p99']:.2f})"
        )
    for key, row in banks.items():
        books = row["books"]
        verdict = "ok" if books["ok"] else "; ".join(books["problems"])
        errors = f", failed calls {row['errors']}" if row["errors"] else ""
        print(f"books of {key:<6}: {verdict} ({books['entries']:,} entries){errors}")
    populate = report["populate"]
    print(
        f"pre-population: {populate['entries']:,} entries in {populate['seconds']} s; "
        f"read back by the bank: {populate['sample_replayed_as_committed']}"
    )


# --- main ----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, help="seconds per measurement (10; quick 0.5)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers")
    parser.add_argument("--repeats", type=int, help="rounds; medians are reported (3; quick 1)")
    parser.add_argument("--entries", type=int, help="pre-populated entries (1M; quick 100k)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per bank (1; quick 0.2)")
    parser.add_argument("--history-calls", type=int, help="history pages timed (200; quick 20)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep databases, certificates and bank logs here (a new folder)",
    )
    args = parser.parse_args()
    defaults = {
        "duration": (10.0, 0.5),
        "repeats": (3, 1),
        "entries": (1_000_000, 100_000),
        "warmup": (1.0, 0.2),
        "history_calls": (200, 20),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if not (0 < args.duration <= 120 and 0 < args.warmup <= 30):
        parser.error("--duration must be in (0, 120] s and --warmup in (0, 30] s")
    if not (1 <= args.repeats <= 20 and 1 <= args.concurrency <= 1024):
        parser.error("--repeats must be in 1-20 and --concurrency in 1-1024")
    if not (4 <= args.entries <= 20_000_000 and 1 <= args.history_calls <= 10_000):
        parser.error("--entries must be in 4-20M and --history-calls in 1-10000")
    return args


def main() -> None:
    args = parse_args()
    configure_logging("console", "warning")
    cpus = os.cpu_count()
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "cpus": cpus,
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
        },
        "caveat": caveat(cpus),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    bound_s = 3 * 2 * (args.repeats * args.duration + args.warmup)
    print(f"measuring for about {bound_s:.0f} s plus set-up; {report['caveat']}", flush=True)
    children: list[Child] = []
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="strife-bench-")))
        else:
            root = args.workdir
            root.mkdir(parents=True, exist_ok=False)
        with stopping(children):

            async def body() -> None:
                report.update(await measure(args, root, children))

            run(body)
    report["wall_s"] = round(time.monotonic() - began, 1)
    print_report(report, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
