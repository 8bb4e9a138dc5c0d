"""`python -m strife.simulation --seed N` replays one run; `--seeds COUNT` runs many."""

from __future__ import annotations

import argparse
import sys

from strife.simulation.runner import capturing_logs, run_range, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strife.simulation",
        description="Deterministic simulation of Strife's payment path under faults.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run (replay) this one seed")
    which.add_argument("--seeds", type=int, default=100, help="run this many seeds")
    parser.add_argument("--first", type=int, default=1, help="first seed of --seeds")
    parser.add_argument("--trace", type=int, default=40, help="events to show for a failure")
    parser.add_argument("--full-trace", action="store_true", help="print every event (--seed)")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after N failures")
    args = parser.parse_args(argv)

    with capturing_logs():
        if args.seed is not None:
            result = run_seed(args.seed, keep=max(args.trace, 1), full_trace=args.full_trace)
            if args.full_trace and result.full_trace is not None:
                print("\n".join(result.full_trace))
            print(result.report(last=args.trace))
            return 0 if result.ok else 1
        summary = run_range(args.first, args.seeds, progress=True, stop_after=args.stop_after)
    print(
        f"{summary.seeds} seeds ({args.first}..{args.first + summary.seeds - 1}) in"
        f" {summary.wall_s:.1f} s: {summary.per_s:.1f} seeds/s,"
        f" {summary.events / max(summary.wall_s, 1e-9):,.0f} events/s,"
        f" {summary.virtual_s:,.0f} virtual s"
    )
    print("fault kinds on (seeds): " + ", ".join(f"{k}={v}" for k, v in summary.faults.items()))
    if summary.failed:
        print(f"{len(summary.failed)} failed: " + " ".join(str(r.seed) for r in summary.failed))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
