"""PBFT simulator benchmark: seeds per second, and what a signature costs.

Each seed is a whole PBFT group in virtual time (docs/bft.md): 4 or 7 replicas
running the real `strife.bft.replica.Replica`, up to f of them Byzantine, a
lossy network until GST. One seed in 100 signs with Ed25519, the others with the
keyed-hash stand-in; this measures both, and the raw cost of each scheme's sign
and verify on a PREPARE-sized payload, which is why the split is what it is.

    .venv/bin/python benchmarks/bench_pbft_simulation.py               # seeds 1..1000
    .venv/bin/python benchmarks/bench_pbft_simulation.py --seeds 3000 --first 301

Writes JSON to benchmarks/results/pbft_simulation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

from strife.bft.messages import Prepare
from strife.bft.signing import Keys, ed25519_keys, keyed_hash_keys
from strife.bft.simulation import run_seed

RESULTS = Path(__file__).parent / "results" / "pbft_simulation.json"


def signature_costs(rounds: int = 2000) -> dict[str, dict[str, float]]:
    payload = Prepare(7, 1234, b"\x01" * 32, 2).payload
    schemes: dict[str, Keys] = {
        "ed25519": ed25519_keys(["replica-0"], seed=1),
        "keyed-hash": keyed_hash_keys(["replica-0"], seed=1),
    }
    costs = {}
    for name, keys in schemes.items():
        signer = keys.signer("replica-0")
        started = time.perf_counter()
        for _ in range(rounds):
            signature = signer.sign(payload)
        signed = time.perf_counter()
        for _ in range(rounds):
            assert keys.verifier.verify("replica-0", payload, signature)
        verified = time.perf_counter()
        costs[name] = {
            "sign_us": round((signed - started) / rounds * 1e6, 1),
            "verify_us": round((verified - signed) / rounds * 1e6, 1),
        }
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--first", type=int, default=1)
    args = parser.parse_args()

    costs = signature_costs()
    wall: dict[str, float] = {}
    seeds: Counter[str] = Counter()
    events = 0
    behaviours: Counter[str] = Counter()
    views = installs = partitions = 0
    slowest_after_settled = 0.0
    failed = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for seed in range(args.first, args.first + args.seeds):
        result = run_seed(seed)
        scheme = result.scenario.signatures
        wall[scheme] = wall.get(scheme, 0.0) + result.wall_s
        seeds[scheme] += 1
        events += result.events
        behaviours.update(name for _, name in result.scenario.faulty)
        views += result.views > 0
        installs += result.installs > 0
        partitions += result.scenario.partition is not None
        slowest_after_settled = max(slowest_after_settled, result.done_after_settled_s)
        if not result.ok:
            failed.append(seed)
            print(result.report(), file=sys.stderr)
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    figures = {
        "seeds": args.seeds,
        "first": args.first,
        "wall_s": round(total, 2),
        "seeds_per_s": round(args.seeds / total, 1),
        "cpu_s": round(cpu, 2),
        "seeds_per_cpu_s": round(args.seeds / cpu, 1),
        "events_per_s": round(events / total),
        "seeds_per_s_by_scheme": {
            k: round(seeds[k] / wall[k], 1) for k in sorted(seeds) if wall.get(k)
        },
        "seeds_by_scheme": dict(sorted(seeds.items())),
        "signature_costs": costs,
        "seeds_with_a_view_change": views,
        "seeds_with_a_state_transfer": installs,
        "seeds_with_a_partition": partitions,
        "slowest_finish_after_gst_virtual_s": round(slowest_after_settled, 2),
        "byzantine_replicas_by_behaviour": dict(sorted(behaviours.items())),
        "failed": failed,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
