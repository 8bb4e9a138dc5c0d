"""Balancer benchmark: GetBestServer calls/s per policy, and why power of two exists.

Part 1 starts a real `strife-balancer` process (mTLS, JSON logging, as in
production), keeps N fake bank instances registered with real `Heartbeat`s
reporting random loads, and has a few concurrent callers hammer
GetBestServer for a fixed time per policy. A grpc.health Check, the cheapest
call the same server answers, is measured in the same rounds as the baseline:
the machine is shared and noisy, so figures are medians over rounds and
ratios against that baseline.

Part 2 is a simulation with no network: N single-queue servers, Poisson
arrivals at 80% utilisation, and a balancer whose load reports are refreshed
only once per heartbeat interval (what a look-aside balancer really sees).
It reports queue lengths and sojourn times per policy and staleness: the
herd effect of least_load on stale reports is the case for power of two.

Part 3 times one choice of each policy in-process, without the RPC.

    .venv/bin/python benchmarks/bench_balancer.py            # all parts, ~1 min
    .venv/bin/python benchmarks/bench_balancer.py --offline  # parts 2 and 3 only, ~15 s

Prints tables and writes JSON to benchmarks/results/balancer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from asyncio.subprocess import Process
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from strife.balancer.policies import Chooser, PolicyName
from strife.observability.logging import configure_logging
from strife.rpc.channels import ChannelPool, health_stub
from strife.rpc.discovery import Heartbeat, LoadSample
from strife.security import certs
from strife.v1 import balancer_pb2, balancer_pb2_grpc

RESULTS = Path(__file__).parent / "results" / "balancer.json"
POLICIES: dict[PolicyName, balancer_pb2.Policy.ValueType] = {
    "pick_first": balancer_pb2.POLICY_PICK_FIRST,
    "round_robin": balancer_pb2.POLICY_ROUND_ROBIN,
    "least_load": balancer_pb2.POLICY_LEAST_LOAD,
    "power_of_two": balancer_pb2.POLICY_POWER_OF_TWO,
}
CALL_TIMEOUT_S = 5.0
START_TIMEOUT_S = 20.0


# --- part 1: calls per second against a real balancer process ----------------


def identity(root: Path, ca: certs.Authority, role: str, name: str) -> Path:
    folder = root / f"{role}-{name}"
    certs.write_identity(folder, ca.cert, certs.issue(ca, role=role, name=name))
    return folder


async def start_balancer(root: Path, ca: certs.Authority) -> tuple[Process, str]:
    """A real `strife-balancer` on an ephemeral port; its address from `server_started`."""
    log = root / "balancer.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(sys.executable).parent / "strife-balancer"),
            "--listen",
            "127.0.0.1:0",
            "--certs",
            str(identity(root, ca, "balancer", "lb-bench")),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"balancer exited with {proc.returncode}:\n{log.read_text()}")
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "server_started":
                return proc, str(json.loads(line)["address"])
        await asyncio.sleep(0.05)
    await stop_process(proc)
    raise RuntimeError("balancer did not start in time")


async def stop_process(proc: Process) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it takes more than 10 s."""
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@dataclass
class Run:
    calls: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.calls / self.seconds


async def hammer(call: Callable[[], Awaitable[Any]], callers: int, duration_s: float) -> Run:
    """`callers` tasks calling back to back for `duration_s`."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def caller() -> None:
        while (started := time.perf_counter()) < stop_at:
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return Run(len(latencies), time.perf_counter() - began, latencies)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="strife-bench-") as tmp:
        root = Path(tmp)
        ca = certs.create_ca()
        proc, address = await start_balancer(root, ca)
        try:
            async with AsyncExitStack() as stack:
                for n in range(args.instances):
                    name = f"bench-{n}"
                    pool = await stack.enter_async_context(
                        ChannelPool(identity(root, ca, "bank", name))
                    )
                    heartbeat = Heartbeat(
                        pool,
                        address,
                        service="bank",
                        instance=name,
                        address=f"127.0.0.1:{20000 + n}",
                        load=lambda: LoadSample(rng.randint(0, 20), rng.uniform(1.0, 20.0)),
                    )
                    await stack.enter_async_context(heartbeat)
                    if not await heartbeat.wait_registered(START_TIMEOUT_S):
                        raise RuntimeError(f"{name} could not register")
                pool = await stack.enter_async_context(
                    ChannelPool(identity(root, ca, "client", "bench"))
                )
                channel = pool.get(address)
                stub = balancer_pb2_grpc.LoadBalancerStub(channel)
                health = health_stub(channel)
                probe = health_pb2.HealthCheckRequest(service="")

                def best(policy: balancer_pb2.Policy.ValueType) -> Callable[[], Awaitable[Any]]:
                    request = balancer_pb2.GetBestServerRequest(service="bank", policy=policy)
                    return lambda: stub.GetBestServer(request, timeout=CALL_TIMEOUT_S)

                calls: dict[str, Callable[[], Awaitable[Any]]] = {
                    "health_check (baseline)": lambda: health.Check(probe, timeout=CALL_TIMEOUT_S)
                }
                calls |= {name: best(value) for name, value in POLICIES.items()}
                await hammer(calls["round_robin"], args.callers, 0.5)  # warm-up
                runs: dict[str, list[Run]] = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, call in calls.items():
                        runs[name].append(await hammer(call, args.callers, args.duration))
        finally:
            await stop_process(proc)

    baseline = statistics.median(r.per_s for r in runs["health_check (baseline)"])
    table: dict[str, Any] = {}
    for name, measured in runs.items():
        latencies = [ms for r in measured for ms in r.latencies_ms]
        per_s = statistics.median(r.per_s for r in measured)
        table[name] = {
            "calls_per_s_median": round(per_s),
            "calls_per_s_rounds": [round(r.per_s) for r in measured],
            "latency_ms_p50": round(percentile(latencies, 0.50), 3),
            "latency_ms_p99": round(percentile(latencies, 0.99), 3),
            "ratio_to_baseline": round(per_s / baseline, 3),
        }
    return table


def print_throughput(table: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nGetBestServer over mTLS: {args.instances} instances, {args.callers} concurrent "
        f"callers, {args.rounds} rounds x {args.duration:g} s (median)"
    )
    print(f"{'call':<26}{'calls/s':>9}{'rounds':>22}{'p50 ms':>9}{'p99 ms':>9}{'vs base':>9}")
    for name, row in table.items():
        rounds = "/".join(str(v) for v in row["calls_per_s_rounds"])
        print(
            f"{name:<26}{row['calls_per_s_median']:>9}{rounds:>22}"
            f"{row['latency_ms_p50']:>9.2f}{row['latency_ms_p99']:>9.2f}"
            f"{row['ratio_to_baseline']:>9.2f}"
        )


# --- part 2: the herd effect of stale load reports ---------------------------


@dataclass(frozen=True)
class Report:
    """A server's load as the balancer last heard it."""

    instance: str
    in_flight: int
    latency_ms_ewma: float


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small per-tick means used here."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def simulate(
    policy: PolicyName,
    *,
    service_ms: list[float],
    utilisation: float,
    report_every_ms: int,
    duration_ms: int,
    seed: int,
    count_sent: bool = False,
) -> dict[str, float]:
    """1 ms ticks; each server serves its queue in FIFO order, geometric service times.

    The balancer picks with the reports of the last refresh, as it does
    between heartbeats: it never sees the calls it has just sent. A report
    carries the queue length as in-flight and the server's mean service time
    as its latency EWMA (what the EWMA converges to).

    `count_sent` is a variant the balancer does not implement (yet): it adds
    the calls it has sent each server since that server's last report to the
    reported in-flight count.
    """
    rng = random.Random(seed)
    chooser = Chooser(policy, random.Random(seed + 1))
    servers = len(service_ms)
    finish_p = [1.0 / ms for ms in service_ms]
    arrivals_per_ms = utilisation * sum(finish_p)
    queues: list[deque[int]] = [deque() for _ in range(servers)]
    names = [f"s{n}" for n in range(servers)]
    index = {name: n for n, name in enumerate(names)}
    reports: list[Report] = []
    warmup_ms = duration_ms // 10
    sojourns: list[int] = []
    queue_sum = 0
    queue_max = 0
    samples = 0
    for tick in range(duration_ms):
        if tick % report_every_ms == 0:
            reports = [Report(names[n], len(q), service_ms[n]) for n, q in enumerate(queues)]
        for _ in range(poisson(rng, arrivals_per_ms)):
            chosen = chooser.choose("sim", reports)
            n = index[chosen.instance]
            queues[n].append(tick)
            if count_sent:
                reports[n] = Report(chosen.instance, chosen.in_flight + 1, chosen.latency_ms_ewma)
        for queue, p in zip(queues, finish_p, strict=True):
            if queue and rng.random() < p:
                arrived = queue.popleft()
                if arrived >= warmup_ms:
                    sojourns.append(tick - arrived + 1)
        if tick >= warmup_ms:
            lengths = [len(q) for q in queues]
            queue_sum += sum(lengths)
            queue_max = max(queue_max, *lengths)
            samples += 1
    return {
        "queue_mean": round(queue_sum / samples / servers, 2),
        "queue_max": queue_max,
        "sojourn_ms_mean": round(statistics.fmean(sojourns), 1),
        "sojourn_ms_p99": percentile([float(s) for s in sojourns], 0.99),
    }


# (label, policy, count_sent)
SIM_POLICIES: tuple[tuple[str, PolicyName, bool], ...] = (
    ("round_robin", "round_robin", False),
    ("least_load", "least_load", False),
    ("power_of_two", "power_of_two", False),
    ("least_load+sent", "least_load", True),
    ("power_of_two+sent", "power_of_two", True),
)


def scenarios(args: argparse.Namespace) -> dict[str, list[float]]:
    """Equal servers, and the same pool with one degraded instance (3x slower:
    a noisy neighbour, a long GC, a cold cache) that a load-blind policy keeps
    feeding its full share."""
    equal = [args.sim_service_ms] * args.sim_servers
    return {"equal": equal, "one_slow": [args.sim_service_ms * 3, *equal[1:]]}


def simulation(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "servers": args.sim_servers,
        "utilisation": args.sim_utilisation,
        "service_ms_mean": args.sim_service_ms,
        "duration_ms": args.sim_duration_ms,
        "seeds": args.sim_seeds,
        "scenarios": {},
    }
    for scenario, service_ms in scenarios(args).items():
        by_interval: dict[str, Any] = {}
        for every in args.sim_report_every_ms:
            row: dict[str, Any] = {}
            for label, policy, count_sent in SIM_POLICIES:
                runs = [
                    simulate(
                        policy,
                        service_ms=service_ms,
                        utilisation=args.sim_utilisation,
                        report_every_ms=every,
                        duration_ms=args.sim_duration_ms,
                        seed=args.seed + s,
                        count_sent=count_sent,
                    )
                    for s in range(args.sim_seeds)
                ]
                row[label] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            by_interval[str(every)] = row
        results["scenarios"][scenario] = {
            "service_ms": service_ms,
            "by_report_interval_ms": by_interval,
        }
    return results


def print_simulation(results: dict[str, Any]) -> None:
    print(
        f"\nSimulation: {results['servers']} servers at {results['utilisation']:.0%} utilisation,"
        f" mean service {results['service_ms_mean']:g} ms, {results['duration_ms'] / 1000:g} s,"
        f" median of {results['seeds']} seeds; reports refreshed every R ms"
    )
    print(
        f"{'servers':<10}{'R ms':>6}  {'policy':<19}{'queue mean':>11}{'queue max':>10}"
        f"{'sojourn mean ms':>17}{'sojourn p99 ms':>16}"
    )
    for scenario, data in results["scenarios"].items():
        for every, row in data["by_report_interval_ms"].items():
            for policy, r in row.items():
                print(
                    f"{scenario:<10}{every:>6}  {policy:<19}{r['queue_mean']:>11.2f}"
                    f"{r['queue_max']:>10.0f}{r['sojourn_ms_mean']:>17.1f}"
                    f"{r['sojourn_ms_p99']:>16.0f}"
                )


# --- part 3: what a choice costs, without the RPC around it -------------------


def policy_cost(args: argparse.Namespace) -> dict[str, float]:
    """Microseconds per choice over `--instances` candidates, in this process."""
    rng = random.Random(args.seed)
    candidates = [
        Report(f"i{n}", rng.randint(0, 20), rng.uniform(1.0, 20.0)) for n in range(args.instances)
    ]
    choices = 50_000
    costs: dict[str, float] = {}
    for policy in POLICIES:
        chooser = Chooser(policy, random.Random(args.seed))
        rounds = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(choices):
                chooser.choose("bank", candidates, exclude=())
            rounds.append((time.perf_counter() - started) / choices * 1e6)
        costs[policy] = round(statistics.median(rounds), 2)
    return costs


def print_policy_cost(costs: dict[str, float], args: argparse.Namespace) -> None:
    print(f"\nOne choice over {args.instances} candidates, no RPC (median of 3 x 50k)")
    for policy, us in costs.items():
        print(f"{policy:<26}{us:>9.2f} us")


# --- main ----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--offline", action="store_true", help="skip part 1 (no server)")
    parser.add_argument("--sim-servers", type=int, default=10)
    parser.add_argument("--sim-utilisation", type=float, default=0.8)
    parser.add_argument("--sim-service-ms", type=float, default=10.0)
    parser.add_argument("--sim-duration-ms", type=int, default=20_000)
    parser.add_argument("--sim-seeds", type=int, default=3)
    parser.add_argument("--sim-report-every-ms", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (0 < args.duration <= 60 and 1 <= args.rounds <= 20 and 1 <= args.callers <= 256):
        parser.error("duration must be in (0, 60] s, rounds in 1-20, callers in 1-256")
    if not (2 <= args.sim_servers <= 1000 and 0 < args.sim_utilisation < 1):
        parser.error("the simulation needs 2-1000 servers and a utilisation in (0, 1)")
    if not (1000 <= args.sim_duration_ms <= 600_000):
        parser.error("--sim-duration-ms must be within 1000-600000")
    return args


def main() -> None:
    args = parse_args()
    # The heartbeats' own lines would bury the tables.
    configure_logging("console", "warning")
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
        },
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if not args.offline:
        from strife.rpc.server import run

        async def part_one() -> None:
            report["get_best_server"] = await throughput(args)

        run(part_one)
        print_throughput(report["get_best_server"], args)
    report["policy_cost_us"] = policy_cost(args)
    print_policy_cost(report["policy_cost_us"], args)
    report["simulation"] = simulation(args)
    print_simulation(report["simulation"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
