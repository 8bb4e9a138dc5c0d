"""What a replicated bank's checkpoint costs as its ledger grows.

A replica takes a checkpoint every `checkpoint_interval` sequence numbers: it
asks its state machine for the state digest and the snapshot, and when the
checkpoint becomes stable its journal writes it. This runs the bank's state
machine (`BankMachine`) in-process, grows its ledger in stages to `--sizes`
transfers (one-phase payments between seeded accounts, each posting two
entries), and at each size times, over `--rounds` checkpoints, one interval of
operations followed by the checkpoint's digest and snapshot, and the journal
write of that checkpoint (synchronous=FULL, as a replica runs). Figures are
medians; the ratio to the interval's execution time says how much of a
replica's work checkpoints are. It also counts what a replica one checkpoint
behind would fetch by state transfer: the chunks of the new snapshot that its
own state, cut the same way, does not have.

    .venv/bin/python benchmarks/bench_bft_checkpoint.py            # ~1 min
    .venv/bin/python benchmarks/bench_bft_checkpoint.py --quick    # smoke run

Prints a table and writes JSON to benchmarks/results/bft_checkpoint.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from strife.bank.seed import SeedRow
from strife.bft.bank_machine import BankMachine, operation
from strife.bft.config import Config
from strife.bft.journal import Journal, Saved
from strife.bft.pages import split

INTERVAL = 64
"""Operations between checkpoints (the local cluster's `checkpoint_interval`)."""
ACCOUNTS = 20


def _seed() -> list[SeedRow]:
    return [
        SeedRow("vault", f"c-{i}", f"user{i}", f"User {i}", "pw", f"acct-{i}", "USD", 10**12)
        for i in range(ACCOUNTS)
    ]


class Grower:
    def __init__(self) -> None:
        self.machine = BankMachine.from_seed(_seed())
        self.done = 0

    def run(self, count: int) -> None:
        for _ in range(count):
            n = self.done
            self.done += 1
            payer, payee = n % ACCOUNTS, (n + 1) % ACCOUNTS
            result = self.machine.execute(
                operation(
                    "process", transfer_id=f"t-{n}", coordinator="gw-1",
                    from_account=f"acct-{payer}", to_account=f"acct-{payee}", amount_minor=1,
                    currency="USD", fingerprint="00", customer_id=f"c-{payer}",
                )
            )  # fmt: skip
            assert b'"error"' not in result, result


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def measure(sizes: list[int], rounds: int, folder: Path) -> list[dict[str, Any]]:
    grower = Grower()
    journal = Journal(folder / "journal.db", synchronous="FULL")
    rows = []
    for size in sizes:
        grower.run(size - grower.done)
        chunk_bytes = Config().state_chunk_bytes
        held = {_sha(c) for c in split(grower.machine.snapshot(), chunk_bytes)}
        execute, checkpoint, write, snapshot_bytes = [], [], [], 0
        fetched: tuple[int, int, int] | None = None
        for _ in range(rounds):
            started = time.perf_counter()
            grower.run(INTERVAL)
            ran = time.perf_counter()
            digest = grower.machine.digest()
            snapshot = grower.machine.snapshot()
            taken = time.perf_counter()
            journal.write([], Saved(grower.done, digest, (), snapshot, (), ()))
            written = time.perf_counter()
            execute.append(ran - started)
            checkpoint.append(taken - ran)
            write.append(written - taken)
            snapshot_bytes = len(snapshot)
            if fetched is None:  # a replica one checkpoint behind: what it must fetch
                chunks = split(snapshot, chunk_bytes)
                lacking = [c for c in chunks if _sha(c) not in held]
                fetched = (len(lacking), len(chunks), sum(map(len, lacking)))
        assert fetched is not None
        row = {
            "transfers": grower.done,
            "execute_interval_ms": statistics.median(execute) * 1e3,
            "checkpoint_ms": statistics.median(checkpoint) * 1e3,
            "journal_write_ms": statistics.median(write) * 1e3,
            "snapshot_mb": snapshot_bytes / 1e6,
            "behind_one_checkpoint_fetches_chunks": fetched[0],
            "chunks": fetched[1],
            "behind_one_checkpoint_fetches_mb": fetched[2] / 1e6,
        }
        row["checkpoint_over_execute"] = (row["checkpoint_ms"] + row["journal_write_ms"]) / row[
            "execute_interval_ms"
        ]
        rows.append(row)
        print(
            f"{row['transfers']:>9,} transfers:"
            f" {INTERVAL} ops {row['execute_interval_ms']:7.1f} ms,"
            f" digest+snapshot {row['checkpoint_ms']:7.1f} ms,"
            f" journal {row['journal_write_ms']:7.1f} ms,"
            f" snapshot {row['snapshot_mb']:6.1f} MB,"
            f" checkpoint/execute {row['checkpoint_over_execute']:5.2f};"
            f" one checkpoint behind: {fetched[0]} of {fetched[1]} chunks"
            f" ({fetched[2] / 1e6:.1f} MB)",
            flush=True,
        )
    journal.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000,200000")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="2,000 and 10,000; 3 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    sizes = [2000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(sizes, rounds, Path(folder))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"interval": INTERVAL, "accounts": ACCOUNTS, "rounds": rounds, "rows": rows}
    (args.out / "bft_checkpoint.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
