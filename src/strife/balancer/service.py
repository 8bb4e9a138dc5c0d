"""The balancer's gRPC face: a thin adapter over `Registry` and `Chooser`.

What the adapter adds is who may do what. Registry writes come only from
service certificates (the authz table), and an instance acts only for itself:
the verified certificate's role must be the service and its name the
instance, so a compromised bank can neither evict nor impersonate another.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import grpc
from prometheus_client import Counter

from strife.balancer.policies import POLICY_NAMES, Chooser, PolicyName
from strife.balancer.registry import (
    NAME_RE,
    InstanceLive,
    InvalidRegistration,
    Lease,
    LeaseConfig,
    Load,
    Registry,
    RegistryFull,
    validate_load,
    validate_registration,
)
from strife.errors import AnyContext, Reason, abort
from strife.observability import context as request_context
from strife.observability.logging import get_logger
from strife.observability.metrics import REGISTRY as METRICS
from strife.rpc.authz import ANY_ROLE, AuthzTable, service_methods
from strife.rpc.server import ServerConfig, StrifeServer
from strife.security.certs import SERVICE_ROLES
from strife.v1 import balancer_pb2, balancer_pb2_grpc

SERVICE = "strife.v1.LoadBalancer"

_log = get_logger("strife.balancer")

# How the policy spreads callers: a skew here is a skew in load downstream.
# Its label is `picked`, not `instance`: Prometheus gives every target an
# `instance` label of its own, which would rename ours.
PICKS = Counter(
    "strife_balancer_picks",
    "Instances chosen by GetBestServer's policy",
    ["service", "picked"],
    registry=METRICS,
)

POLICY_BY_ENUM: dict[int, PolicyName] = {
    balancer_pb2.POLICY_PICK_FIRST: "pick_first",
    balancer_pb2.POLICY_ROUND_ROBIN: "round_robin",
    balancer_pb2.POLICY_LEAST_LOAD: "least_load",
    balancer_pb2.POLICY_POWER_OF_TWO: "power_of_two",
}
assert set(POLICY_BY_ENUM.values()) == set(POLICY_NAMES)


def authz_table() -> AuthzTable:
    """Writes: service certificates only. Reads: anyone with a certificate of ours."""
    table = AuthzTable()
    for method in service_methods(SERVICE, ("Register", "Deregister", "ReportServerLoad")):
        table.allow(method, SERVICE_ROLES)
    for method in service_methods(SERVICE, ("GetBestServer", "ListServers")):
        table.allow(method, ANY_ROLE)
    return table


@dataclass(frozen=True)
class BalancerSettings:
    policy: PolicyName = "round_robin"
    leases: LeaseConfig = field(default_factory=LeaseConfig)

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {self.policy!r}")


def to_proto(lease: Lease) -> balancer_pb2.ServerInstance:
    return balancer_pb2.ServerInstance(
        service=lease.service,
        instance=lease.instance,
        address=lease.address,
        metadata=lease.metadata,
        # The report as the instance sent it, not the balancer's estimate.
        load=balancer_pb2.ServerLoad(
            in_flight=lease.load.in_flight,
            latency_ms_ewma=lease.load.latency_ms_ewma,
            cpu_percent=lease.load.cpu_percent,
        ),
        registered_at_unix_ms=lease.registered_at_unix_ms,
        last_heartbeat_unix_ms=lease.last_heartbeat_unix_ms,
    )


async def _live(context: AnyContext, exc: InstanceLive) -> NoReturn:
    _log.warning(
        "instance_live",
        service=exc.lease.service,
        instance=exc.lease.instance,
        address=exc.lease.address,
    )
    await abort(
        context,
        grpc.StatusCode.ALREADY_EXISTS,
        Reason.INSTANCE_LIVE,
        str(exc),
        {"address": exc.lease.address},
    )


async def _invalid(context: AnyContext, exc: InvalidRegistration) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_REQUEST,
        str(exc),
        {"field": exc.field},
    )


class LoadBalancerService(balancer_pb2_grpc.LoadBalancerServicer):
    def __init__(self, registry: Registry, chooser: Chooser, *, insecure: bool = False) -> None:
        self._registry = registry
        self._chooser = chooser
        # --insecure has no certificates, hence no owners; it is for debugging only.
        self._insecure = insecure

    @property
    def _lease_reply(self) -> dict[str, int]:
        config = self._registry.config
        return {
            "lease_ttl_ms": round(config.lease_ttl_s * 1000),
            "heartbeat_interval_ms": round(config.heartbeat_interval_s * 1000),
        }

    async def _require_owner(self, context: AnyContext, service: str, instance: str) -> None:
        """The caller's certificate must name this very instance of this service."""
        if self._insecure:
            return
        info = request_context.current()
        role, name, peer = (info.role, info.peer_name, info.peer) if info else ("", "", "")
        if role != service or name != instance:
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                Reason.NOT_INSTANCE_OWNER,
                f"{peer or 'this peer'} may act only for its own instance, "
                f"not for {service}/{instance}",
                {"service": service, "instance": instance, "peer": peer},
            )

    async def _validate(self, context: AnyContext, check: Callable[[], None]) -> None:
        try:
            check()
        except InvalidRegistration as exc:
            await _invalid(context, exc)

    def _forget_if_empty(self, service: str) -> None:
        if not self._registry.healthy(service):
            self._chooser.forget(service)

    async def Register(
        self,
        request: balancer_pb2.RegisterRequest,
        context: grpc.aio.ServicerContext[
            balancer_pb2.RegisterRequest, balancer_pb2.RegisterResponse
        ],
    ) -> balancer_pb2.RegisterResponse:
        metadata = dict(request.metadata)
        await self._validate(
            context,
            lambda: validate_registration(
                request.service, request.instance, request.address, metadata
            ),
        )
        await self._require_owner(context, request.service, request.instance)
        try:
            lease = self._registry.register(
                request.service, request.instance, request.address, metadata
            )
        except RegistryFull as exc:
            await _full(context, exc)
        except InstanceLive as exc:
            await _live(context, exc)
        _log.info(
            "instance_registered",
            service=lease.service,
            instance=lease.instance,
            address=lease.address,
            via="register",
        )
        return balancer_pb2.RegisterResponse(**self._lease_reply)

    async def ReportServerLoad(
        self,
        request: balancer_pb2.ReportServerLoadRequest,
        context: grpc.aio.ServicerContext[
            balancer_pb2.ReportServerLoadRequest, balancer_pb2.ReportServerLoadResponse
        ],
    ) -> balancer_pb2.ReportServerLoadResponse:
        metadata = dict(request.metadata)
        load = Load(
            in_flight=request.load.in_flight,
            latency_ms_ewma=request.load.latency_ms_ewma,
            cpu_percent=request.load.cpu_percent,
        )

        def check() -> None:
            validate_registration(request.service, request.instance, request.address, metadata)
            validate_load(load)

        await self._validate(context, check)
        await self._require_owner(context, request.service, request.instance)
        try:
            renewal = self._registry.renew(
                request.service, request.instance, request.address, metadata, load
            )
        except RegistryFull as exc:
            await _full(context, exc)
        except InstanceLive as exc:
            await _live(context, exc)
        if renewal.reregistered:
            # After a balancer restart, this is how the registry refills.
            _log.info(
                "instance_registered",
                service=request.service,
                instance=request.instance,
                address=request.address,
                via="heartbeat",
            )
        return balancer_pb2.ReportServerLoadResponse(
            reregistered=renewal.reregistered, **self._lease_reply
        )

    async def Deregister(
        self,
        request: balancer_pb2.DeregisterRequest,
        context: grpc.aio.ServicerContext[
            balancer_pb2.DeregisterRequest, balancer_pb2.DeregisterResponse
        ],
    ) -> balancer_pb2.DeregisterResponse:
        await self._validate(context, lambda: _check_names(request.service, request.instance))
        await self._require_owner(context, request.service, request.instance)
        removed = self._registry.deregister(request.service, request.instance)
        self._forget_if_empty(request.service)
        _log.info(
            "instance_deregistered",
            service=request.service,
            instance=request.instance,
            removed=removed,
        )
        return balancer_pb2.DeregisterResponse(removed=removed)

    async def GetBestServer(
        self,
        request: balancer_pb2.GetBestServerRequest,
        context: grpc.aio.ServicerContext[
            balancer_pb2.GetBestServerRequest, balancer_pb2.GetBestServerResponse
        ],
    ) -> balancer_pb2.GetBestServerResponse:
        service = request.service
        if request.instance:
            await self._validate(context, lambda: _check_names(service, request.instance))
            lease = self._registry.find(service, request.instance)
            if lease is None:
                await self._no_instance(context, service, request.instance)
            return balancer_pb2.GetBestServerResponse(server=to_proto(lease))

        await self._validate(context, lambda: _check_names(service))
        policy: PolicyName | None = None
        if request.policy != balancer_pb2.POLICY_UNSPECIFIED:
            policy = POLICY_BY_ENUM.get(request.policy)
            if policy is None:
                await _invalid(
                    context, InvalidRegistration("policy", f"unknown policy {request.policy}")
                )
        limit = self._registry.config.max_instances_per_service
        if len(request.exclude) > limit:
            await _invalid(context, InvalidRegistration("exclude", f"at most {limit} names"))
        candidates = self._registry.healthy(service)
        if not candidates:
            await self._no_instance(context, service, "")
        chosen = self._chooser.choose(service, candidates, policy, frozenset(request.exclude))
        chosen.note_sent()
        PICKS.labels(service, chosen.instance).inc()
        request_context.note(
            service=service, policy=policy or self._chooser.default, chosen=chosen.instance
        )
        return balancer_pb2.GetBestServerResponse(server=to_proto(chosen))

    async def ListServers(
        self,
        request: balancer_pb2.ListServersRequest,
        context: grpc.aio.ServicerContext[
            balancer_pb2.ListServersRequest, balancer_pb2.ListServersResponse
        ],
    ) -> balancer_pb2.ListServersResponse:
        await self._validate(context, lambda: _check_names(request.service))
        leases = self._registry.healthy(request.service)
        return balancer_pb2.ListServersResponse(servers=[to_proto(lease) for lease in leases])

    async def _no_instance(self, context: AnyContext, service: str, instance: str) -> NoReturn:
        """UNAVAILABLE, retryable: after a balancer restart the pool refills within
        one heartbeat interval, which is the retry delay suggested."""
        what = f"{service}/{instance}" if instance else f"any instance of {service!r}"
        # An instance that registered once and is away now (its lease lapsed)
        # is INSTANCE_DOWN: callers must not take it for a name that never was.
        away = bool(instance) and self._registry.known(service, instance)
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            Reason.INSTANCE_DOWN if away else Reason.NO_INSTANCE,
            f"no healthy {what}",
            {"service": service, **({"instance": instance} if instance else {})},
            retry_delay_s=self._registry.config.heartbeat_interval_s,
        )


def _check_names(service: str, instance: str | None = None) -> None:
    if not NAME_RE.fullmatch(service):
        raise InvalidRegistration("service", "1-63 characters from [A-Za-z0-9._-]")
    if instance is not None and not NAME_RE.fullmatch(instance):
        raise InvalidRegistration("instance", "1-63 characters from [A-Za-z0-9._-]")


async def _full(context: AnyContext, exc: RegistryFull) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.REGISTRY_FULL,
        str(exc),
        {"limit": str(exc.limit)},
    )


async def sweep_forever(registry: Registry, chooser: Chooser, interval_s: float) -> None:
    """Evict expired leases and say so; the health monitor must outlive any bug."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            now_ms = int(time.time() * 1000)
            for lease in registry.expire():
                _log.warning(
                    "instance_evicted",
                    service=lease.service,
                    instance=lease.instance,
                    address=lease.address,
                    silent_ms=now_ms - lease.last_heartbeat_unix_ms,
                )
                if not registry.healthy(lease.service):
                    chooser.forget(lease.service)
        except Exception:
            _log.exception("sweep_failed")


class BalancerServer:
    """The balancer process minus its command line: server, registry, sweeper.

    Build it inside the running event loop (grpc.aio binds to the loop).
    """

    def __init__(
        self,
        config: ServerConfig,
        settings: BalancerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.registry = Registry(settings.leases, clock)
        self.chooser = Chooser(settings.policy, rng)
        self.server = StrifeServer(config, authz_table())
        servicer = LoadBalancerService(self.registry, self.chooser, insecure=config.insecure)
        self.server.add_service(
            SERVICE, lambda s: balancer_pb2_grpc.add_LoadBalancerServicer_to_server(servicer, s)
        )
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.server.address

    async def start(self) -> int:
        port = await self.server.start()
        leases = self.settings.leases
        # Twice per interval: an eviction is logged within half an interval of the TTL.
        self._sweeper = asyncio.create_task(
            sweep_forever(self.registry, self.chooser, leases.heartbeat_interval_s / 2),
            name="balancer-sweeper",
        )
        _log.info(
            "balancer_ready",
            policy=self.settings.policy,
            heartbeat_interval_s=leases.heartbeat_interval_s,
            lease_ttl_s=leases.lease_ttl_s,
        )
        return port

    async def _stop_sweeper(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            # wait() rather than await: our own cancellation must still propagate.
            await asyncio.wait([sweeper])

    async def stop(self, grace_s: float | None = None) -> None:
        await self._stop_sweeper()
        await self.server.stop(grace_s)

    async def serve_until_signal(self, requested: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT, then stop gracefully (the registry is soft state)."""
        await self.server.wait_for_signal(requested)
        await self._stop_sweeper()
