"""Cross-bank payment latency through a real gateway and two real banks.

    .venv/bin/python benchmarks/bench_payment.py [--count 1000] [--repeats 3] [--clients 1]

Starts two `strife-bank` processes and one `strife-gateway` on loopback with
mTLS and `synchronous=FULL`, logs in one customer, and sends `--count`
cross-bank payments one after another (or from `--clients` concurrent
callers), each with a fresh idempotency key. Prints p50/p90/p99/max of the
ProcessPayment latency per repeat and their medians, and writes
`benchmarks/results/payment.json`. Target (issue): single-client p50 <= 4 ms.
Client and servers share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Child, closed_loop, free_port, percentile

from strife.rpc.channels import ChannelPool
from strife.security import certs
from strife.v1 import gateway_pb2, gateway_pb2_grpc, money_pb2

RESULTS = Path(__file__).resolve().parent / "results" / "payment.json"
SEED = [
    {
        "bank": "alpha",
        "customer_id": "c-payer",
        "username": "payer",
        "display_name": "Payer",
        "password": "pw-payer",
        "account_id": "payer-usd",
        "currency": "USD",
        "opening_balance": "100000000.00",
    },
    {
        "bank": "beta",
        "customer_id": "c-payee",
        "username": "payee",
        "display_name": "Payee",
        "password": "pw-payee",
        "account_id": "payee-usd",
        "currency": "USD",
        "opening_balance": "0",
    },
]


def start_cluster(root: Path, balancer: str | None = None) -> tuple[list[Child], str, Path]:
    """Two banks and one gateway; the gateway registers with `balancer` when given."""
    identities = certs.dev(root / "certs", banks=("alpha", "beta"), gateways=("gw-1",))
    seed = root / "seed.json"
    seed.write_text(json.dumps(SEED))
    gw_port = free_port()
    quiet = ["--log-level", "warning"]
    children: list[Child] = []
    bank_ports = {}
    for bank in ("alpha", "beta"):
        port = bank_ports[bank] = free_port()
        children.append(
            Child(
                "strife-bank",
                [
                    "--name",
                    bank,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--db",
                    str(root / f"{bank}.db"),
                    "--init",
                    "--seed",
                    str(seed),
                    "--certs",
                    str(identities[f"bank-{bank}"]),
                    f"--coordinator=gw-1=127.0.0.1:{gw_port}",
                    "--synchronous",
                    "FULL",
                    *quiet,
                ],
                root / f"{bank}.log",
            ).start()
        )
    children.append(
        Child(
            "strife-gateway",
            [
                "--name",
                "gw-1",
                "--listen",
                f"127.0.0.1:{gw_port}",
                "--db",
                str(root / "gw.db"),
                "--certs",
                str(identities["gateway-gw-1"]),
                "--synchronous",
                "FULL",
                *[f"--bank={b}=127.0.0.1:{p}" for b, p in bank_ports.items()],
                *(["--balancer", balancer] if balancer else []),
                *quiet,
            ],
            root / "gw.log",
        ).start()
    )
    return children, f"127.0.0.1:{gw_port}", identities["client-default"]


async def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    children, gateway, client_certs = start_cluster(root)
    try:
        for child, port in zip(children, [c.args[3] for c in children], strict=True):
            await child.wait_listening(int(port.rsplit(":", 1)[1]), 30)
        async with ChannelPool(client_certs) as pool:
            stub = gateway_pb2_grpc.PaymentGatewayStub(pool.get(gateway))
            login = await stub.Login(
                gateway_pb2.LoginRequest(username="payer", password="pw-payer", bank="alpha"),
                timeout=10,
            )
            auth = (("authorization", f"Bearer {login.access_token}"),)

            async def pay(_caller: int, _n: int) -> None:
                reply = await stub.ProcessPayment(
                    gateway_pb2.ProcessPaymentRequest(
                        idempotency_key=str(uuid.uuid4()),
                        from_account=money_pb2.AccountRef(bank="alpha", account_id="payer-usd"),
                        to_account=money_pb2.AccountRef(bank="beta", account_id="payee-usd"),
                        amount=money_pb2.Money(amount_minor=1, currency="USD"),
                    ),
                    timeout=10,
                    metadata=auth,
                )
                assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED, reply

            for _ in range(20):  # warm channels and caches
                await pay(0, 0)
            rounds = []
            for _ in range(args.repeats):
                latencies: list[float] = []
                if args.clients == 1:
                    began = time.perf_counter()
                    for n in range(args.count):
                        started = time.perf_counter()
                        await pay(0, n)
                        latencies.append((time.perf_counter() - started) * 1000)
                    per_s = args.count / (time.perf_counter() - began)
                else:
                    run = await closed_loop(pay, args.clients, args.duration)
                    latencies, per_s = run.latencies_ms, run.per_s
                rounds.append(
                    {
                        "payments": len(latencies),
                        "per_s": round(per_s, 1),
                        "p50_ms": round(percentile(latencies, 0.50), 3),
                        "p90_ms": round(percentile(latencies, 0.90), 3),
                        "p99_ms": round(percentile(latencies, 0.99), 3),
                        "max_ms": round(max(latencies), 3),
                    }
                )
                print(f"  round: {rounds[-1]}", flush=True)
    finally:
        for child in reversed(children):
            child.stop()
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "payments"}
    return {"clients": args.clients, "rounds": rounds, "median": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="payments per round (1 client)")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per round (>1 client)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="strife-bench-") as tmp:
        report = uvloop.run(measure(args, Path(tmp)))
    report["command"] = " ".join(sys.argv)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    m = report["median"]
    print(
        f"cross-bank payments, {args.clients} client(s), mTLS, synchronous=FULL: "
        f"p50 {m['p50_ms']:.2f} ms, p90 {m['p90_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, "
        f"{m['per_s']:.0f}/s (medians of {args.repeats}); wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
