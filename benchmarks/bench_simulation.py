"""Simulation benchmark: how many seeds per second the deterministic simulator runs.

Each seed is a whole world in virtual time (docs/simulation.md): two or three
gateway replicas running the real coordinator, two to four banks running the
real ledger and resolver, clients retrying under the same key and paying again
under a new one after a transient abort, and a fault mix drawn for that seed.
Seeds are independent, so `--jobs` runs them in that many processes.

    .venv/bin/python benchmarks/bench_simulation.py                    # seeds 1..2000
    .venv/bin/python benchmarks/bench_simulation.py --seeds 10000 --jobs 2

Prints seeds per second, the fault mix and any failing seed (with how to
replay it), and writes JSON to benchmarks/results/simulation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from strife.simulation import capturing_logs, run_range
from strife.simulation.faults import SWARM, describe_swarm

RESULTS = Path(__file__).parent / "results" / "simulation.json"


@dataclass
class Chunk:
    seeds: int = 0
    wall_s: float = 0.0
    events: int = 0
    virtual_s: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    invariants: dict[str, int] = field(default_factory=dict)


def run_chunk(first: int, count: int) -> Chunk:
    with capturing_logs():
        summary = run_range(first, count)
    chunk = Chunk(summary.seeds, summary.wall_s, summary.events, summary.virtual_s)
    chunk.faults = dict(summary.faults)
    for result in summary.failed:
        chunk.failed.append(result.seed)
        chunk.reports.append(result.report(last=20))
        for invariant in result.invariants:
            chunk.invariants[invariant] = chunk.invariants.get(invariant, 0) + 1
    return chunk


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="processes (seeds are independent)")
    parser.add_argument("--chunk", type=int, default=250, help="seeds per unit of work")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1 or args.chunk < 1:
        parser.error("--seeds, --jobs and --chunk must be positive")
    return args


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    starts = list(range(args.first, args.first + args.seeds, args.chunk))
    counts = [min(args.chunk, args.first + args.seeds - s) for s in starts]
    total = Chunk()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for chunk in pool.map(run_chunk, starts, counts):
            total.seeds += chunk.seeds
            total.wall_s += chunk.wall_s
            total.events += chunk.events
            total.virtual_s += chunk.virtual_s
            total.failed += chunk.failed
            total.reports += chunk.reports
            for kind, n in chunk.faults.items():
                total.faults[kind] = total.faults.get(kind, 0) + n
            for invariant, n in chunk.invariants.items():
                total.invariants[invariant] = total.invariants.get(invariant, 0) + n
            elapsed = time.perf_counter() - began
            print(
                f"  {total.seeds} seeds, {len(total.failed)} failed,"
                f" {total.seeds / elapsed:.1f} seeds/s",
                flush=True,
            )
    wall_s = time.perf_counter() - began
    for failure in total.reports[:5]:
        print(failure, flush=True)
    per_s = total.seeds / wall_s
    print(
        f"{total.seeds} seeds ({args.first}..{args.first + total.seeds - 1}) in {wall_s:.1f} s"
        f" with {args.jobs} process(es): {per_s:.1f} seeds/s"
        f" ({total.seeds / total.wall_s:.1f} per process),"
        f" {total.events / total.wall_s:,.0f} trace events/s per process,"
        f" {total.virtual_s / total.wall_s:,.0f} virtual s per s"
    )
    print("fault mix (each seed draws its own):\n" + describe_swarm())
    print("seeds with each kind on: " + ", ".join(f"{k}={v}" for k, v in total.faults.items()))
    if total.failed:
        print(f"FAILED seeds: {' '.join(map(str, total.failed))}; broken: {total.invariants}")
    else:
        print("all passed")
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
        },
        "caveat": (
            "virtual time: a seed costs only the CPU of its events, so seeds/s measures"
            " the simulator and the real code it drives, not the network or disks;"
            f" this machine's {os.cpu_count()} cores are shared with other work"
        ),
        "params": {"seeds": args.seeds, "first": args.first, "jobs": args.jobs},
        "seeds": total.seeds,
        "wall_s": round(wall_s, 2),
        "seeds_per_s": round(per_s, 2),
        "seeds_per_s_per_process": round(total.seeds / total.wall_s, 2),
        "events": total.events,
        "virtual_s": round(total.virtual_s, 1),
        "swarm": {kind: list(knob) for kind, knob in SWARM.items()},
        "seeds_with_fault": total.faults,
        "failed": total.failed,
        "broken_invariants": total.invariants,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    sys.exit(1 if total.failed else 0)


if __name__ == "__main__":
    main()
