"""The balancer's registry: instances hold leases that heartbeats renew.

Pure: the clocks are injected, nothing here knows gRPC. A lease that is not
renewed within its TTL stops being healthy at once (`healthy` checks the
clock), whether or not the sweeper has run yet; the sweeper only frees the
memory and reports who left.

The state is soft: a heartbeat carries the whole registration, so a
restarted balancer that has never heard of an instance registers it from
its next heartbeat.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from strife.rpc.addresses import split_host_port

# The certificate name rule (strife.security.certs): an instance's name is the
# name in its certificate, so anything else could never pass the owner check.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_ADDRESS_CHARS = 255
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 256
# in_flight is an int32 on the wire; a report above this is a bug, not a load.
MAX_IN_FLIGHT = 1_000_000
MAX_LATENCY_MS = 3_600_000.0


class InvalidRegistration(ValueError):
    """A registration or load report that the registry refuses to store."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


INCARNATION = "incarnation"
"""Metadata key: a random id a process picks at start. Two live processes
registering one instance name under different incarnations (and addresses)
are a cloned deployment; the second is refused."""


class InstanceLive(Exception):
    """Another process holds a live lease on this instance name."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(
            f"{lease.service}/{lease.instance} is live at {lease.address} (another process)"
        )
        self.lease = lease


def _check_same_process(lease: Lease, address: str, metadata: Mapping[str, str]) -> None:
    """A restart at the same address is the same slot coming back; a different
    incarnation at another address while the lease lives is a second process."""
    theirs, ours = lease.metadata.get(INCARNATION), metadata.get(INCARNATION)
    if theirs and ours and theirs != ours and lease.address != address:
        raise InstanceLive(lease)


class RegistryFull(Exception):
    """A bound was hit (services, or instances of one service); nothing was stored."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class LeaseConfig:
    """Lease timing and registry bounds, with the defaults an operator gets.

    The TTL must cover at least two heartbeat intervals, so that one lost or
    late heartbeat does not evict a healthy instance; the default allows two.
    """

    heartbeat_interval_s: float = 1.0
    lease_ttl_s: float = 3.0
    max_services: int = 16
    max_instances_per_service: int = 256

    def __post_init__(self) -> None:
        if not self.heartbeat_interval_s > 0:
            raise ValueError("heartbeat interval must be positive")
        if not self.lease_ttl_s >= 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"lease TTL ({self.lease_ttl_s} s) must be at least two heartbeat "
                f"intervals ({2 * self.heartbeat_interval_s} s)"
            )
        if self.max_services < 1 or self.max_instances_per_service < 1:
            raise ValueError("registry bounds must be at least 1")


@dataclass(frozen=True, slots=True)
class Load:
    in_flight: int = 0
    latency_ms_ewma: float = 0.0
    cpu_percent: float = 0.0


@dataclass(slots=True)
class Lease:
    service: str
    instance: str
    address: str
    metadata: dict[str, str]
    registered_at_unix_ms: int
    last_heartbeat_unix_ms: int
    # On the injected monotonic clock: wall time may jump, leases must not.
    expires_at_s: float
    load: Load = field(default_factory=Load)
    # Callers sent here since the last report: the report cannot show them
    # yet, and without them every caller between two heartbeats would be
    # sent to the same instance.
    sent_since_report: int = 0

    @property
    def in_flight(self) -> int:
        """The balancer's estimate: the last report plus the callers sent since."""
        return self.load.in_flight + self.sent_since_report

    def note_sent(self) -> None:
        """Count one answer that sends a caller here, until the next report."""
        self.sent_since_report += 1

    @property
    def latency_ms_ewma(self) -> float:
        return self.load.latency_ms_ewma


@dataclass(frozen=True, slots=True)
class Renewal:
    lease: Lease
    # The registry had no live lease: the heartbeat registered the instance.
    reregistered: bool


def validate_registration(
    service: str, instance: str, address: str, metadata: Mapping[str, str]
) -> None:
    if not NAME_RE.fullmatch(service):
        raise InvalidRegistration("service", "1-63 characters from [A-Za-z0-9._-]")
    if not NAME_RE.fullmatch(instance):
        raise InvalidRegistration("instance", "1-63 characters from [A-Za-z0-9._-]")
    if len(address) > MAX_ADDRESS_CHARS:
        raise InvalidRegistration("address", "too long")
    try:
        _, port = split_host_port(address)
    except ValueError as exc:
        raise InvalidRegistration("address", str(exc)) from exc
    if port == 0 or address.rpartition(":")[0].strip("[]") in ("", "0.0.0.0", "::"):
        raise InvalidRegistration("address", f"{address!r} is not an address one can dial")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidRegistration("metadata", f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidRegistration("metadata", f"keys are 1-{MAX_METADATA_KEY_CHARS} chars")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidRegistration(
                "metadata", f"values are at most {MAX_METADATA_VALUE_CHARS} chars"
            )


def validate_load(load: Load) -> None:
    if not 0 <= load.in_flight <= MAX_IN_FLIGHT:
        raise InvalidRegistration("load.in_flight", f"must be within 0-{MAX_IN_FLIGHT}")
    if not (math.isfinite(load.latency_ms_ewma) and 0 <= load.latency_ms_ewma <= MAX_LATENCY_MS):
        raise InvalidRegistration("load.latency_ms_ewma", "must be a finite, non-negative number")
    if not (math.isfinite(load.cpu_percent) and load.cpu_percent >= 0):
        raise InvalidRegistration("load.cpu_percent", "must be a finite, non-negative number")


class Registry:
    """Leases by service, each service's instances kept in registration order.

    Registration order is what pick_first means by "first": an instance that
    re-registers after losing its lease joins at the end, behind the ones
    that stayed healthy.
    """

    def __init__(
        self,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._services: dict[str, dict[str, Lease]] = {}
        # Names whose lease has lapsed, per service (bounded like the pools): an
        # instance that is away is not the same answer as a name never seen.
        self._departed: dict[str, dict[str, None]] = {}

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _live(self, service: str, instance: str) -> Lease | None:
        lease = self._services.get(service, {}).get(instance)
        if lease is None or lease.expires_at_s <= self._clock():
            return None
        return lease

    def register(
        self, service: str, instance: str, address: str, metadata: Mapping[str, str]
    ) -> Lease:
        """Start (or restart) a lease; a live instance keeps its place in the order.

        The load is reset: a Register comes from a process that has just
        started, whose old report is meaningless.
        """
        validate_registration(service, instance, address, metadata)
        lease = self._live(service, instance)
        now_ms = self._now_ms()
        if lease is None:
            lease = self._insert(service, instance, address, metadata, now_ms)
        else:
            _check_same_process(lease, address, metadata)
            lease.address, lease.metadata = address, dict(metadata)
            lease.registered_at_unix_ms = lease.last_heartbeat_unix_ms = now_ms
            lease.load = Load()
            lease.sent_since_report = 0
            lease.expires_at_s = self._clock() + self.config.lease_ttl_s
        return lease

    def renew(
        self,
        service: str,
        instance: str,
        address: str,
        metadata: Mapping[str, str],
        load: Load,
    ) -> Renewal:
        """Extend the lease and record the load; an unknown instance is registered.

        The heartbeat is authoritative for the address and metadata: the
        caller has been checked to be the instance itself.
        """
        validate_registration(service, instance, address, metadata)
        validate_load(load)
        lease = self._live(service, instance)
        now_ms = self._now_ms()
        reregistered = lease is None
        if lease is None:
            lease = self._insert(service, instance, address, metadata, now_ms)
        else:
            _check_same_process(lease, address, metadata)
            lease.address, lease.metadata = address, dict(metadata)
        lease.load = load
        lease.sent_since_report = 0
        lease.last_heartbeat_unix_ms = now_ms
        lease.expires_at_s = self._clock() + self.config.lease_ttl_s
        return Renewal(lease, reregistered)

    def _insert(
        self,
        service: str,
        instance: str,
        address: str,
        metadata: Mapping[str, str],
        now_ms: int,
    ) -> Lease:
        pool = self._services.get(service)
        if pool is None:
            if len(self._services) >= self.config.max_services:
                self.expire()
            if len(self._services) >= self.config.max_services:
                raise RegistryFull(
                    f"the registry holds {self.config.max_services} services already",
                    self.config.max_services,
                )
            pool = self._services[service] = {}
        # An expired lease still waiting for the sweeper is dropped here, so
        # the instance re-enters at the end of the order.
        pool.pop(instance, None)
        if len(pool) >= self.config.max_instances_per_service:
            self.expire()
            pool = self._services.setdefault(service, {})
        if len(pool) >= self.config.max_instances_per_service:
            raise RegistryFull(
                f"service {service!r} has {self.config.max_instances_per_service} instances",
                self.config.max_instances_per_service,
            )
        lease = Lease(
            service=service,
            instance=instance,
            address=address,
            metadata=dict(metadata),
            registered_at_unix_ms=now_ms,
            last_heartbeat_unix_ms=now_ms,
            expires_at_s=self._clock() + self.config.lease_ttl_s,
        )
        pool[instance] = lease
        return lease

    def deregister(self, service: str, instance: str) -> bool:
        """Remove an instance at once (graceful shutdown); False if it was not live."""
        pool = self._services.get(service)
        if pool is None or instance not in pool:
            return False
        live = self._live(service, instance) is not None
        self._remember_departed(pool.pop(instance))
        if not pool:
            del self._services[service]
        return live

    def expire(self) -> list[Lease]:
        """Drop every lease past its TTL and return them, oldest service first."""
        now = self._clock()
        evicted: list[Lease] = []
        for service in list(self._services):
            pool = self._services[service]
            gone = [lease for lease in pool.values() if lease.expires_at_s <= now]
            for lease in gone:
                del pool[lease.instance]
                self._remember_departed(lease)
            evicted.extend(gone)
            if not pool:
                del self._services[service]
        return evicted

    def _remember_departed(self, lease: Lease) -> None:
        departed = self._departed.setdefault(lease.service, {})
        departed.pop(lease.instance, None)
        departed[lease.instance] = None
        while len(departed) > self.config.max_instances_per_service:
            del departed[next(iter(departed))]

    def known(self, service: str, instance: str) -> bool:
        """Registered now, or once in this balancer's life (its lease lapsed)."""
        return instance in self._services.get(service, {}) or instance in self._departed.get(
            service, {}
        )

    def healthy(self, service: str) -> list[Lease]:
        """Live leases of a service, in registration order."""
        now = self._clock()
        return [
            lease for lease in self._services.get(service, {}).values() if lease.expires_at_s > now
        ]

    def find(self, service: str, instance: str) -> Lease | None:
        """A live lease by name (a gateway looking for bank "alpha")."""
        return self._live(service, instance)

    def services(self) -> list[str]:
        return list(self._services)

    def __len__(self) -> int:
        return sum(len(pool) for pool in self._services.values())
