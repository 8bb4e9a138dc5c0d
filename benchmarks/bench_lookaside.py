"""What the look-aside balancer adds to a payment when the client caches its answer.

    .venv/bin/python benchmarks/bench_lookaside.py [--count 300] [--repeats 3]

One balancer, two banks and one gateway on loopback (mTLS, synchronous=FULL).
The same `strife.client` payments are timed with the gateway given directly
and found through the balancer; the client asks the balancer only when its
choice changes, so the difference is the look-aside cost per payment. Also
times one uncached GetBestServer RPC for scale. Target (issue): under 5% of
the payment latency. Writes `benchmarks/results/lookaside.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Child, free_port, percentile
from bench_payment import start_cluster

from strife.client import ClientConfig, Credentials, EntryState, StrifeClient
from strife.observability.logging import configure_logging
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient
from strife.security import certs

RESULTS = Path(__file__).resolve().parent / "results" / "lookaside.json"


async def _pay_times(client: StrifeClient, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        result = await client.pay("beta/payee-usd", 1, "USD")
        times.append((time.perf_counter() - started) * 1000)
        assert result.state == EntryState.COMMITTED, result
    return times


async def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    identities = certs.dev(root / "certs", banks=("alpha", "beta"), gateways=("gw-1",))
    balancer_port = free_port()
    balancer = Child(
        "strife-balancer",
        [
            "--listen",
            f"127.0.0.1:{balancer_port}",
            "--certs",
            str(identities["balancer"]),
            "--log-level",
            "warning",
        ],
        root / "balancer.log",
    ).start()
    children, gateway, client_certs = start_cluster(root, f"127.0.0.1:{balancer_port}")
    rounds: list[dict[str, float]] = []
    try:
        await balancer.wait_listening(balancer_port, 30)
        for child in children:
            await child.wait_listening(int(child.args[3].rsplit(":", 1)[1]), 30)
        async with ChannelPool(client_certs) as pool:
            registry = BalancerClient(pool, f"127.0.0.1:{balancer_port}", cache_ttl_s=0)
            deadline = time.monotonic() + 20
            while True:
                try:
                    await registry.best("gateway")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            rpc_ms = []
            for _ in range(300):
                started = time.perf_counter()
                await registry.best("gateway")
                rpc_ms.append((time.perf_counter() - started) * 1000)

        async def credentials() -> Credentials:
            return Credentials("payer", "pw-payer", "alpha")

        config = ClientConfig(pay_wait_s=10.0)
        for n in range(args.repeats):
            async with (
                StrifeClient(
                    certs=client_certs,
                    gateways=[gateway],
                    outbox=root / f"direct-{n}.db",
                    credentials=credentials,
                    config=config,
                ) as direct,
                StrifeClient(
                    certs=client_certs,
                    balancer=f"127.0.0.1:{balancer_port}",
                    outbox=root / f"balancer-{n}.db",
                    credentials=credentials,
                    config=config,
                ) as looked_up,
            ):
                for client in (direct, looked_up):
                    await client.login()
                    await _pay_times(client, 20)  # warm up
                # Interleaved one by one, so machine noise hits both sides alike.
                times: dict[str, list[float]] = {"direct": [], "balancer": []}
                for _ in range(args.count):
                    times["direct"] += await _pay_times(direct, 1)
                    times["balancer"] += await _pay_times(looked_up, 1)
            p50 = {label: percentile(values, 0.5) for label, values in times.items()}
            rounds.append(
                {
                    "direct_p50_ms": round(p50["direct"], 3),
                    "balancer_p50_ms": round(p50["balancer"], 3),
                    "extra_pct": round((p50["balancer"] / p50["direct"] - 1) * 100, 2),
                }
            )
            print(f"  round: {rounds[-1]}", flush=True)
    finally:
        for child in reversed(children):
            child.stop()
        balancer.stop()
    return {
        "rounds": rounds,
        "median_extra_pct": statistics.median(r["extra_pct"] for r in rounds),
        "median_direct_p50_ms": statistics.median(r["direct_p50_ms"] for r in rounds),
        "get_best_server_rpc_p50_ms": round(percentile(rpc_ms, 0.5), 3),
    }


def main() -> None:
    configure_logging("console", "warning")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="strife-bench-") as tmp:
        report = asyncio.run(measure(args, Path(tmp)))
    report["command"] = " ".join(sys.argv)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(
        f"look-aside: payments through the balancer take {report['median_extra_pct']:+.2f}% "
        f"vs a fixed gateway (p50 {report['median_direct_p50_ms']:.2f} ms; one uncached "
        f"GetBestServer RPC p50 {report['get_best_server_rpc_p50_ms']:.2f} ms); wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
