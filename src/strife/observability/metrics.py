"""Prometheus metrics shared by every Strife process, and Strife's registry.

Roles add their own metrics beside these (payment outcomes, 2PC phase latency,
group-commit batch size, outbox depth), all in `REGISTRY`: Strife's own, not
prometheus_client's default. Importing the library must not put metrics into
the registry of the program that imports it; a Strife program exports them
when it serves /metrics, and a host exports them with `export()`.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from strife.rpc.addresses import split_host_port

REGISTRY = CollectorRegistry(auto_describe=True)

RPC_REQUESTS = Counter(
    "strife_rpc_requests",
    "RPCs served, by method and status code",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_LATENCY = Histogram(
    "strife_rpc_latency_seconds",
    "Server-side RPC latency",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
RPC_IN_FLIGHT = Gauge("strife_rpc_in_flight", "RPCs being served right now", registry=REGISTRY)


class InFlight:
    """The in-flight count as a plain int: cheap to change on every call, read
    by heartbeats, and by the gauge only when /metrics is scraped."""

    def __init__(self) -> None:
        self.value = 0

    def enter(self) -> None:
        self.value += 1

    def leave(self) -> None:
        self.value -= 1


IN_FLIGHT = InFlight()


class ServedTotals:
    """Seconds and count of RPCs served, health and reflection probes aside.

    What heartbeats report as latency; two plain numbers, so that reading
    them costs nothing (collecting the histogram did, once per beat).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0

    def add(self, method: str, seconds: float) -> None:
        if not method.startswith("/grpc."):
            self.seconds += seconds
            self.count += 1


SERVED = ServedTotals()
RPC_IN_FLIGHT.set_function(lambda: IN_FLIGHT.value)


_exported: set[int] = set()


def export(into: CollectorRegistry = prometheus_client.REGISTRY) -> None:
    """Add Strife's metrics to `into` (by default the process-wide registry); idempotent."""
    if id(into) not in _exported:
        into.register(REGISTRY)
        _exported.add(id(into))


def serve_metrics(listen: str) -> int:
    """Expose /metrics over HTTP on HOST:PORT, Strife's metrics and the
    process's own (memory, CPU, open files); returns the bound port."""
    export()
    host, port = split_host_port(listen)
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
