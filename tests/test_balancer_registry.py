"""Leases on a fake clock: registration, renewal, expiry, bounds, validation."""

from __future__ import annotations

import pytest

from strife.balancer.registry import (
    INCARNATION,
    MAX_METADATA_ENTRIES,
    InstanceLive,
    InvalidRegistration,
    LeaseConfig,
    Load,
    Registry,
    RegistryFull,
)

TTL_S = 3.0


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    config = LeaseConfig(heartbeat_interval_s=1.0, lease_ttl_s=TTL_S, max_instances_per_service=3)
    return Registry(config, clock=clock, wall_clock=lambda: 1_700_000_000.0 + clock.now_s)


def names(registry: Registry, service: str = "bank") -> list[str]:
    return [lease.instance for lease in registry.healthy(service)]


def register(registry: Registry, *instances: str, service: str = "bank") -> None:
    for n, instance in enumerate(instances):
        registry.register(service, instance, f"127.0.0.1:{5000 + n}", {"zone": "a"})


def beat(registry: Registry, instance: str, in_flight: int = 0, port: int = 5000) -> bool:
    renewal = registry.renew(
        "bank", instance, f"127.0.0.1:{port}", {}, Load(in_flight=in_flight, latency_ms_ewma=2.5)
    )
    return renewal.reregistered


def test_instances_are_kept_in_registration_order(registry: Registry) -> None:
    register(registry, "beta", "alpha", "gamma")
    assert names(registry) == ["beta", "alpha", "gamma"]
    assert registry.services() == ["bank"]
    assert len(registry) == 3


def test_register_again_keeps_the_place_and_resets_the_load(registry: Registry) -> None:
    register(registry, "alpha", "beta")
    beat(registry, "alpha", in_flight=7)
    lease = registry.register("bank", "alpha", "127.0.0.1:6000", {"v": "2"})
    assert names(registry) == ["alpha", "beta"]
    assert lease.address == "127.0.0.1:6000"
    assert lease.metadata == {"v": "2"}
    assert lease.load == Load()


def test_renew_records_load_and_extends_the_lease(registry: Registry, clock: FakeClock) -> None:
    register(registry, "alpha")
    clock.advance(TTL_S - 0.5)
    assert beat(registry, "alpha", in_flight=4) is False
    clock.advance(TTL_S - 0.5)
    lease = registry.find("bank", "alpha")
    assert lease is not None
    assert lease.in_flight == 4 and lease.latency_ms_ewma == 2.5
    assert lease.last_heartbeat_unix_ms > lease.registered_at_unix_ms


def test_answers_sent_count_as_in_flight_until_the_next_report(registry: Registry) -> None:
    register(registry, "alpha")
    beat(registry, "alpha", in_flight=4)
    lease = registry.find("bank", "alpha")
    assert lease is not None
    lease.note_sent()
    lease.note_sent()
    assert lease.in_flight == 6
    assert lease.load.in_flight == 4  # the report itself, as ListServers shows it
    beat(registry, "alpha", in_flight=5)
    assert lease.in_flight == 5
    lease.note_sent()
    registry.register("bank", "alpha", "127.0.0.1:5000", {})
    assert lease.in_flight == 0


def test_renew_of_an_unknown_instance_registers_it_and_says_so(registry: Registry) -> None:
    """What a restarted balancer sees: heartbeats from instances it never met."""
    assert beat(registry, "alpha", in_flight=2, port=7001) is True
    lease = registry.find("bank", "alpha")
    assert lease is not None
    assert lease.address == "127.0.0.1:7001"
    assert lease.in_flight == 2
    assert beat(registry, "alpha") is False


def test_heartbeat_updates_the_address(registry: Registry) -> None:
    register(registry, "alpha")
    beat(registry, "alpha", port=7002)
    lease = registry.find("bank", "alpha")
    assert lease is not None and lease.address == "127.0.0.1:7002"


def test_a_lease_is_unhealthy_the_moment_it_expires(registry: Registry, clock: FakeClock) -> None:
    register(registry, "alpha", "beta")
    clock.advance(TTL_S - 0.01)
    beat(registry, "beta")
    assert names(registry) == ["alpha", "beta"]
    clock.advance(0.01)
    # Before any sweep: healthy() already leaves alpha out.
    assert names(registry) == ["beta"]
    assert registry.find("bank", "alpha") is None
    assert len(registry) == 2


def test_sweep_returns_the_evicted_and_frees_them(registry: Registry, clock: FakeClock) -> None:
    register(registry, "alpha", "beta")
    register(registry, "gw-1", service="gateway")
    clock.advance(TTL_S - 1)
    beat(registry, "beta")
    assert registry.expire() == []
    clock.advance(1)
    evicted = registry.expire()
    assert sorted((lease.service, lease.instance) for lease in evicted) == [
        ("bank", "alpha"),
        ("gateway", "gw-1"),
    ]
    assert len(registry) == 1
    assert registry.services() == ["bank"]


def test_an_instance_back_from_expiry_rejoins_at_the_end(
    registry: Registry, clock: FakeClock
) -> None:
    register(registry, "alpha", "beta")
    clock.advance(TTL_S - 1)
    beat(registry, "beta")
    clock.advance(1)
    # Not swept yet: the expired lease must not keep alpha's old place.
    assert beat(registry, "alpha") is True
    assert names(registry) == ["beta", "alpha"]


def test_deregister_removes_at_once(registry: Registry) -> None:
    register(registry, "alpha", "beta")
    assert registry.deregister("bank", "alpha") is True
    assert names(registry) == ["beta"]
    assert registry.deregister("bank", "alpha") is False
    assert registry.deregister("nobody", "alpha") is False
    assert registry.deregister("bank", "beta") is True
    assert registry.services() == []


def test_instances_per_service_are_bounded(registry: Registry) -> None:
    register(registry, "a", "b", "c")
    with pytest.raises(RegistryFull) as caught:
        registry.register("bank", "d", "127.0.0.1:5009", {})
    assert caught.value.limit == 3
    with pytest.raises(RegistryFull):
        beat(registry, "d")
    assert names(registry) == ["a", "b", "c"]
    # Another service is not affected, and an existing instance still renews.
    register(registry, "gw-1", service="gateway")
    assert beat(registry, "a") is False


def test_a_full_service_makes_room_from_expired_leases(
    registry: Registry, clock: FakeClock
) -> None:
    register(registry, "a", "b", "c")
    clock.advance(TTL_S)
    registry.register("bank", "d", "127.0.0.1:5009", {})
    assert names(registry) == ["d"]


def test_services_are_bounded(clock: FakeClock) -> None:
    registry = Registry(LeaseConfig(max_services=2), clock=clock)
    register(registry, "a", service="bank")
    register(registry, "g", service="gateway")
    with pytest.raises(RegistryFull):
        register(registry, "b", service="balancer")
    clock.advance(LeaseConfig().lease_ttl_s)
    register(registry, "b", service="balancer")
    assert registry.services() == ["balancer"]


@pytest.mark.parametrize(
    ("service", "instance", "address", "metadata", "field"),
    [
        ("", "alpha", "127.0.0.1:1", {}, "service"),
        ("bank", "", "127.0.0.1:1", {}, "instance"),
        ("bank", "al/pha", "127.0.0.1:1", {}, "instance"),
        ("bank", "a" * 64, "127.0.0.1:1", {}, "instance"),
        ("bank", "alpha", "", {}, "address"),
        ("bank", "alpha", "localhost", {}, "address"),
        ("bank", "alpha", "127.0.0.1:0", {}, "address"),
        ("bank", "alpha", ":5000", {}, "address"),
        ("bank", "alpha", "0.0.0.0:5000", {}, "address"),
        ("bank", "alpha", "127.0.0.1:70000", {}, "address"),
        ("bank", "alpha", "127.0.0.1:1", {"": "x"}, "metadata"),
        ("bank", "alpha", "127.0.0.1:1", {"k": "v" * 257}, "metadata"),
        (
            "bank",
            "alpha",
            "127.0.0.1:1",
            {f"k{n}": "v" for n in range(MAX_METADATA_ENTRIES + 1)},
            "metadata",
        ),
    ],
)
def test_bad_registrations_are_refused(
    registry: Registry,
    service: str,
    instance: str,
    address: str,
    metadata: dict[str, str],
    field: str,
) -> None:
    with pytest.raises(InvalidRegistration) as caught:
        registry.register(service, instance, address, metadata)
    assert caught.value.field == field
    assert len(registry) == 0


def test_dialable_addresses_are_accepted(registry: Registry) -> None:
    registry.register("bank", "a", "bank-a.internal:443", {})
    registry.register("bank", "b", "[::1]:5000", {})
    assert names(registry) == ["a", "b"]


@pytest.mark.parametrize(
    ("load", "field"),
    [
        (Load(in_flight=-1), "load.in_flight"),
        (Load(latency_ms_ewma=float("nan")), "load.latency_ms_ewma"),
        (Load(latency_ms_ewma=-1.0), "load.latency_ms_ewma"),
        (Load(cpu_percent=float("inf")), "load.cpu_percent"),
    ],
)
def test_bad_load_reports_are_refused(registry: Registry, load: Load, field: str) -> None:
    register(registry, "alpha")
    with pytest.raises(InvalidRegistration) as caught:
        registry.renew("bank", "alpha", "127.0.0.1:5000", {}, load)
    assert caught.value.field == field
    lease = registry.find("bank", "alpha")
    assert lease is not None and lease.load == Load()


@pytest.mark.parametrize(("interval_s", "ttl_s"), [(0.0, 1.0), (1.0, 1.5), (-1.0, 3.0), (1.0, 1.0)])
def test_a_lease_must_survive_one_lost_heartbeat(interval_s: float, ttl_s: float) -> None:
    with pytest.raises(ValueError):
        LeaseConfig(heartbeat_interval_s=interval_s, lease_ttl_s=ttl_s)


def test_a_second_process_under_a_live_name_is_refused(
    registry: Registry, clock: FakeClock
) -> None:
    """Two processes registering one gateway name (a cloned deployment) would
    both coordinate as it; the second is refused while the first's lease lives."""
    first = {INCARNATION: "a1"}
    registry.register("gateway", "gw-1", "127.0.0.1:7001", first)
    with pytest.raises(InstanceLive):
        registry.register("gateway", "gw-1", "127.0.0.1:7002", {INCARNATION: "b2"})
    with pytest.raises(InstanceLive):
        registry.renew("gateway", "gw-1", "127.0.0.1:7002", {INCARNATION: "b2"}, Load())
    found = registry.find("gateway", "gw-1")
    assert found is not None and found.address == "127.0.0.1:7001"
    # The same process renews; a restart at the same address is the same slot.
    registry.renew("gateway", "gw-1", "127.0.0.1:7001", first, Load())
    registry.register("gateway", "gw-1", "127.0.0.1:7001", {INCARNATION: "a2"})
    # Once the first lease has run out, a new process may take the name.
    clock.advance(TTL_S + 0.1)
    registry.register("gateway", "gw-1", "127.0.0.1:7002", {INCARNATION: "b2"})


def test_an_instance_whose_lease_lapsed_is_known_but_away(
    registry: Registry, clock: FakeClock
) -> None:
    """A bank that is down is not a bank that never was: callers answer a
    payment to it as 'wait', never as a final NOT_FOUND."""
    register(registry, "alpha")
    clock.advance(TTL_S + 0.1)
    registry.expire()
    assert names(registry) == []
    assert registry.known("bank", "alpha")
    assert not registry.known("bank", "betta")
    register(registry, "beta")
    registry.deregister("bank", "beta")
    assert registry.known("bank", "beta")
