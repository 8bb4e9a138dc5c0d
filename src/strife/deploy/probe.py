"""`python -m strife.deploy.probe HOST:PORT [SERVICE]`: a container health check.

Asks a server's plaintext health port (`--health-listen`) whether it serves;
exit 0 when SERVING, 1 otherwise. Docker's HEALTHCHECK runs it; Kubernetes
uses its native gRPC probe on the same port instead.
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:7401"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    address = args[0] if args else DEFAULT_ADDRESS
    service = args[1] if len(args) > 1 else ""
    serving = check(address, service)
    print("SERVING" if serving else "NOT SERVING", address)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
