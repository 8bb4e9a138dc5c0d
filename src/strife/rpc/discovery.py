"""The balancer's client side: stay registered (`Heartbeat`), find others (`BalancerClient`).

Banks and gateways run a `Heartbeat`; gateways and clients ask a
`BalancerClient` where to go. Both must keep their host working while the
balancer is away: a heartbeat never raises into its host, and the client
answers from what it already knows.

This module depends only on the shared plumbing and the generated API, never
on the balancer server's own modules, so other roles may import it.
"""

from __future__ import annotations

import asyncio
import builtins
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from strife.backoff import Backoff, Jitter
from strife.errors import Reason, StrifeError, Unavailable, from_rpc_error
from strife.observability.logging import get_logger
from strife.observability.metrics import IN_FLIGHT, SERVED
from strife.rpc.cancellation import cancelled_itself
from strife.rpc.channels import ANY_BALANCER, ChannelPool
from strife.v1 import balancer_pb2, balancer_pb2_grpc

_log = get_logger("strife.discovery")

POLICIES: dict[str, balancer_pb2.Policy.ValueType] = {
    "pick_first": balancer_pb2.POLICY_PICK_FIRST,
    "round_robin": balancer_pb2.POLICY_ROUND_ROBIN,
    "least_load": balancer_pb2.POLICY_LEAST_LOAD,
    "power_of_two": balancer_pb2.POLICY_POWER_OF_TWO,
}

# Codes that mean "the balancer did not get or answer the call": retry soon,
# and redial, because gRPC's own reconnect backoff (1 s growing to 120 s)
# would otherwise keep a restarted balancer unreachable long after it is up.
_UNREACHABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class LoadSample:
    in_flight: int
    latency_ms_ewma: float = 0.0
    cpu_percent: float = 0.0


def _served_latency_totals() -> tuple[float, float]:
    """Seconds and count of RPCs this process has served, health and reflection aside."""
    return SERVED.seconds, float(SERVED.count)


IDLE_DECAY = 0.75


class ProcessLoad:
    """This process's load: in-flight RPCs, an EWMA of served latency, CPU use.

    Called once per heartbeat; the EWMA is over per-interval mean latencies.
    An idle interval lowers it by a quarter: the last busy moment says less
    and less about an instance nobody calls. Without that, an instance that once
    reported a high latency was never chosen again by a latency-led policy,
    so it could never report a lower one (measured: least_load sent every
    caller to one of two equal gateways for whole runs). The decay lets it
    be tried again within a few heartbeats; a still-slow one reports so and
    is left again. (Halving probed a slowed gateway twice as often, for no
    better spread.)
    """

    def __init__(
        self,
        alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self._alpha = alpha
        self._clock, self._cpu_clock = clock, cpu_clock
        self._latency_ms_ewma: float | None = None
        self._last_total_s, self._last_count = _served_latency_totals()
        self._last_wall_s, self._last_cpu_s = clock(), cpu_clock()

    def __call__(self) -> LoadSample:
        total_s, count = _served_latency_totals()
        served = count - self._last_count
        if served > 0:
            mean_ms = (total_s - self._last_total_s) / served * 1000
            previous = self._latency_ms_ewma
            self._latency_ms_ewma = (
                mean_ms if previous is None else previous + self._alpha * (mean_ms - previous)
            )
        elif self._latency_ms_ewma is not None:
            self._latency_ms_ewma *= IDLE_DECAY
        self._last_total_s, self._last_count = total_s, count
        wall_s, cpu_s = self._clock(), self._cpu_clock()
        elapsed_s = wall_s - self._last_wall_s
        cpu_percent = (cpu_s - self._last_cpu_s) / elapsed_s * 100 if elapsed_s > 0 else 0.0
        self._last_wall_s, self._last_cpu_s = wall_s, cpu_s
        return LoadSample(
            in_flight=max(IN_FLIGHT.value, 0),
            latency_ms_ewma=self._latency_ms_ewma or 0.0,
            cpu_percent=max(cpu_percent, 0.0),
        )


class Heartbeat:
    """Keep one instance registered: Register, then ReportServerLoad every interval.

    The balancer's answers set the interval (`interval_s` applies only until
    it first answers), so the operator tunes leases in one place. A balancer
    that restarted learns the instance again from the next heartbeat (the
    reply says `reregistered`), so nothing here has to notice the restart.

    While the balancer is unreachable the heartbeat retries every interval,
    with jitter: that is the load the balancer carries anyway, and waiting
    longer would break the promise that a restarted balancer is whole within
    one interval. A balancer that answers but refuses (wrong certificate,
    registry full) is asked again with exponential backoff up to
    `refused_backoff_cap_s`, since asking at once will not change its answer.
    Nothing here ever raises into the host process.
    """

    def __init__(
        self,
        pool: ChannelPool,
        balancer: str,
        *,
        service: str,
        instance: str,
        address: str,
        metadata: Mapping[str, str] | None = None,
        load: Callable[[], LoadSample] | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        refused_backoff_cap_s: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or refused_backoff_cap_s <= 0:
            raise ValueError("intervals and timeouts must be positive")
        self.service, self.instance, self.address = service, instance, address
        self.metadata = dict(metadata or {})
        self._pool = pool
        self._balancer = balancer
        self._load = load or ProcessLoad()
        self._interval_s = interval_s
        self._lease_ttl_s: float | None = None
        self._timeout_s = timeout_s
        self._refused_backoff_cap_s = refused_backoff_cap_s
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._registered = asyncio.Event()
        # Set when the balancer says another process holds this instance name:
        # the host must stop (see `strife.balancer.registry.InstanceLive`).
        self.conflict = asyncio.Event()
        self._sent_register = False
        self._task: asyncio.Task[None] | None = None
        self._last_sample = LoadSample(in_flight=0)

    @property
    def registered(self) -> bool:
        """True while the balancer accepted the latest heartbeat."""
        return self._registered.is_set()

    @property
    def interval_s(self) -> float:
        """The heartbeat interval in force (the balancer's, once it has answered)."""
        return self._interval_s

    async def start(self) -> None:
        """Start heartbeating in the background; returns at once, balancer or not."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"heartbeat-{self.service}-{self.instance}"
            )

    async def wait_registered(self, timeout_s: float) -> bool:
        """Wait until the balancer has accepted a heartbeat; False on timeout."""
        try:
            await asyncio.wait_for(self._registered.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def first_answer(self) -> bool:
        """Wait until the balancer accepted this instance (True) or said another
        process holds its name (False)."""
        accepted = asyncio.ensure_future(self._registered.wait())
        refused = asyncio.ensure_future(self.conflict.wait())
        try:
            await asyncio.wait({accepted, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            accepted.cancel()
            refused.cancel()
        return not self.conflict.is_set()

    async def stop(self, timeout_s: float = 1.0) -> None:
        """Stop heartbeating and deregister, so callers stop being sent here now.

        Bounded by `timeout_s`; if the balancer cannot be told, the lease
        simply runs out.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() rather than await: our own cancellation must still propagate.
            await asyncio.wait([task])
        self._registered.clear()
        stub = balancer_pb2_grpc.LoadBalancerStub(self._pool.get(self._balancer, ANY_BALANCER))
        try:
            reply = await stub.Deregister(
                balancer_pb2.DeregisterRequest(service=self.service, instance=self.instance),
                timeout=timeout_s,
            )
        except Exception as exc:  # never into the host: the lease runs out anyway
            _log.warning(
                "deregister_failed",
                service=self.service,
                instance=self.instance,
                code=exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else None,
                detail=exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc),
            )
        else:
            _log.info(
                "deregistered", service=self.service, instance=self.instance, removed=reply.removed
            )

    async def __aenter__(self) -> Heartbeat:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._beat()
            except grpc.aio.AioRpcError as exc:
                failures += 1
                delay_s = await self._after_failure(exc, failures)
            except asyncio.CancelledError:
                if cancelled_itself():
                    raise
                # The call was cancelled under us (its channel closed), not this
                # task: a failed beat like any other, never the end of the loop.
                failures += 1
                self._registered.clear()
                _log.warning("heartbeat_call_cancelled", instance=self.instance)
                delay_s = self._interval_s
            except Exception:
                # A bug (ours or the load callable's) must not evict the host.
                failures += 1
                self._registered.clear()
                _log.exception("heartbeat_failed", service=self.service, instance=self.instance)
                delay_s = self._refused_delay_s(failures)
            else:
                if failures:
                    _log.info(
                        "balancer_reachable",
                        balancer=self._balancer,
                        instance=self.instance,
                        failures=failures,
                    )
                failures = 0
                # Slightly early rather than late, and out of step with the
                # other instances that a restarted balancer hears at once.
                delay_s = self._interval_s * self._rng.uniform(0.9, 1.0)
            await self._sleep(delay_s)

    def _call_timeout_s(self) -> float:
        # An answer that arrives after the lease ran out is worth nothing.
        return min(self._timeout_s, self._lease_ttl_s or self._timeout_s)

    async def _beat(self) -> None:
        stub = balancer_pb2_grpc.LoadBalancerStub(self._pool.get(self._balancer, ANY_BALANCER))
        if not self._sent_register:
            registered = await stub.Register(
                balancer_pb2.RegisterRequest(
                    service=self.service,
                    instance=self.instance,
                    address=self.address,
                    metadata=self.metadata,
                ),
                timeout=self._call_timeout_s(),
            )
            self._sent_register = True
            _log.info(
                "registered", balancer=self._balancer, service=self.service, instance=self.instance
            )
            self._adopt(registered.heartbeat_interval_ms, registered.lease_ttl_ms)
        else:
            sample = self._sample()
            reply = await stub.ReportServerLoad(
                balancer_pb2.ReportServerLoadRequest(
                    service=self.service,
                    instance=self.instance,
                    address=self.address,
                    metadata=self.metadata,
                    load=balancer_pb2.ServerLoad(
                        in_flight=sample.in_flight,
                        latency_ms_ewma=sample.latency_ms_ewma,
                        cpu_percent=sample.cpu_percent,
                    ),
                ),
                timeout=self._call_timeout_s(),
            )
            if reply.reregistered:
                _log.info(
                    "reregistered",
                    balancer=self._balancer,
                    service=self.service,
                    instance=self.instance,
                    detail="the balancer had no live lease (restarted, or ours ran out)",
                )
            self._adopt(reply.heartbeat_interval_ms, reply.lease_ttl_ms)
        self._registered.set()

    def _sample(self) -> LoadSample:
        try:
            self._last_sample = self._load()
        except Exception:
            _log.exception("load_sample_failed", instance=self.instance)
        return self._last_sample

    def _adopt(self, interval_ms: int, lease_ttl_ms: int) -> None:
        if interval_ms > 0:
            # Clamped: a misconfigured balancer must not make us spin or go silent.
            self._interval_s = min(max(interval_ms / 1000, 0.01), 3600.0)
        if lease_ttl_ms > 0:
            self._lease_ttl_s = lease_ttl_ms / 1000

    async def _after_failure(self, exc: grpc.aio.AioRpcError, failures: int) -> float:
        self._registered.clear()
        code = exc.code()
        if from_rpc_error(exc).reason == Reason.INSTANCE_LIVE:
            _log.error(
                "instance_live",
                balancer=self._balancer,
                service=self.service,
                instance=self.instance,
                detail=exc.details(),
            )
            self.conflict.set()
        unreachable = code in _UNREACHABLE
        if failures == 1 or not unreachable:
            _log.warning(
                "balancer_unreachable" if unreachable else "heartbeat_refused",
                balancer=self._balancer,
                service=self.service,
                instance=self.instance,
                code=code.name,
                detail=exc.details(),
            )
        if not unreachable:
            return self._refused_delay_s(failures)
        if code is grpc.StatusCode.UNAVAILABLE:
            await self._pool.discard(self._balancer)
        return self._interval_s * self._rng.uniform(0.5, 1.0)

    def _refused_delay_s(self, failures: int) -> float:
        # Built per failure: the interval is the balancer's, and may have changed.
        policy = Backoff(2 * self._interval_s, self._refused_backoff_cap_s, jitter=Jitter.HALF)
        return policy.delay_s(failures, self._rng)


# --- finding instances ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerInfo:
    service: str
    instance: str
    address: str
    metadata: Mapping[str, str]
    load: LoadSample
    last_heartbeat_unix_ms: int

    @classmethod
    def from_proto(cls, server: balancer_pb2.ServerInstance) -> ServerInfo:
        return cls(
            service=server.service,
            instance=server.instance,
            address=server.address,
            metadata=dict(server.metadata),
            load=LoadSample(
                in_flight=server.load.in_flight,
                latency_ms_ewma=server.load.latency_ms_ewma,
                cpu_percent=server.load.cpu_percent,
            ),
            last_heartbeat_unix_ms=server.last_heartbeat_unix_ms,
        )


@dataclass(slots=True)
class _Known:
    info: ServerInfo
    learned_at_s: float


class BalancerClient:
    """Ask the balancer where to go, and remember the answers for its outages.

    `resolve` answers from the cache while an entry is younger than
    `cache_ttl_s` (bank addresses change only on restarts). `best` always
    asks, since its point is the current load; when the balancer cannot
    answer (down, restarting, or just restarted and still refilling) both
    fall back to what is known, up to `max_stale_s` old. After an
    unreachable balancer, callers are answered from the cache without asking
    for `probe_interval_s`, so an outage costs one connection attempt per
    probe interval, not one per call. The cache holds at most `max_cached`
    instances.
    """

    def __init__(
        self,
        pool: ChannelPool,
        balancer: str,
        *,
        timeout_s: float = 1.0,
        cache_ttl_s: float = 5.0,
        max_stale_s: float = 60.0,
        probe_interval_s: float = 1.0,
        max_cached: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(timeout_s, max_stale_s, probe_interval_s) <= 0 or cache_ttl_s < 0:
            raise ValueError("timeouts and intervals must be positive")
        if max_cached < 1:
            raise ValueError("max_cached must be at least 1")
        self._pool = pool
        self._balancer = balancer
        self._timeout_s = timeout_s
        self._cache_ttl_s = cache_ttl_s
        self._max_stale_s = max_stale_s
        self._probe_interval_s = probe_interval_s
        self._max_cached = max_cached
        self._clock = clock
        self._known: dict[tuple[str, str], _Known] = {}
        self._skip_until_s = float("-inf")
        self._turn = 0

    def _stub(self) -> balancer_pb2_grpc.LoadBalancerAsyncStub:
        return balancer_pb2_grpc.LoadBalancerStub(self._pool.get(self._balancer, ANY_BALANCER))

    async def best(
        self, service: str, policy: str | None = None, exclude: Collection[str] = ()
    ) -> str:
        """The address the balancer recommends now, skipping `exclude` if others exist."""
        if policy is not None and policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
        request = balancer_pb2.GetBestServerRequest(
            service=service,
            policy=POLICIES[policy] if policy else balancer_pb2.POLICY_UNSPECIFIED,
            exclude=list(exclude),
        )
        try:
            reply = await self._ask(
                lambda stub: stub.GetBestServer(request, timeout=self._timeout_s)
            )
        except StrifeError as error:
            fallback = self._pick_known(service, exclude)
            if fallback is None or not error.retryable:
                raise
            return fallback.address
        return self._remember(ServerInfo.from_proto(reply.server)).address

    async def resolve(self, service: str, instance: str, *, refresh: bool = False) -> str:
        """The address of one named instance (a gateway looking for bank "alpha").

        `refresh=True` skips a fresh cache entry, e.g. after the address failed.
        """
        known = self._known.get((service, instance))
        age_s = self._clock() - known.learned_at_s if known else float("inf")
        if known is not None and not refresh and age_s < self._cache_ttl_s:
            return known.info.address
        request = balancer_pb2.GetBestServerRequest(service=service, instance=instance)
        try:
            reply = await self._ask(
                lambda stub: stub.GetBestServer(request, timeout=self._timeout_s)
            )
        except StrifeError as error:
            if known is None or age_s > self._max_stale_s or not error.retryable:
                raise
            return known.info.address
        return self._remember(ServerInfo.from_proto(reply.server)).address

    async def list(self, service: str) -> list[ServerInfo]:
        """The healthy instances with their last load report (cached ones if unreachable)."""
        request = balancer_pb2.ListServersRequest(service=service)
        try:
            reply = await self._ask(lambda stub: stub.ListServers(request, timeout=self._timeout_s))
        except StrifeError as error:
            known = self._fresh_enough(service)
            if not known or not error.retryable:
                raise
            return known
        infos = [ServerInfo.from_proto(server) for server in reply.servers]
        for key in [k for k in self._known if k[0] == service]:
            del self._known[key]
        for info in infos:
            self._remember(info)
        return infos

    async def _ask(self, call: Callable[[balancer_pb2_grpc.LoadBalancerAsyncStub], Any]) -> Any:
        if self._clock() < self._skip_until_s:
            raise Unavailable(
                grpc.StatusCode.UNAVAILABLE,
                "",
                f"balancer {self._balancer} was unreachable moments ago; not asking again yet",
            )
        try:
            return await call(self._stub())
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if error.code in _UNREACHABLE and error.reason != Reason.NO_INSTANCE:
                self._skip_until_s = self._clock() + self._probe_interval_s
                if error.code is grpc.StatusCode.UNAVAILABLE:
                    await self._pool.discard(self._balancer)
            raise error from exc

    def _remember(self, info: ServerInfo) -> ServerInfo:
        key = (info.service, info.instance)
        self._known.pop(key, None)
        self._known[key] = _Known(info, self._clock())
        while len(self._known) > self._max_cached:
            del self._known[next(iter(self._known))]
        return info

    def _fresh_enough(self, service: str) -> builtins.list[ServerInfo]:
        oldest_s = self._clock() - self._max_stale_s
        return [
            known.info
            for (svc, _), known in self._known.items()
            if svc == service and known.learned_at_s >= oldest_s
        ]

    def _pick_known(self, service: str, exclude: Collection[str]) -> ServerInfo | None:
        known = self._fresh_enough(service)
        pool = [info for info in known if info.instance not in exclude] or known
        if not pool:
            return None
        self._turn = (self._turn + 1) % len(pool)
        return pool[self._turn]
