"""Several banks in one process: the topology's `host`, the supervisor's plan, and money
that still lands exactly once when a payment's two banks share a process."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from strife.cluster.supervisor import Supervisor
from strife.cluster.topology import TopologyError, parse_topology
from strife.loadgen import LoadConfig, Outcome, own_cluster, run_load
from strife.loadgen.target import sized_topology
from strife.rpc.channels import ChannelPool
from strife.v1 import gateway_pb2

from .bank_fixtures import BankClient
from .cluster_fixtures import Cluster, Customer, cluster
from .conftest import Pki
from .support import until

HOSTED = {
    "data_dir": "cluster",
    "banks": [
        {"name": "alpha", "customers": 2, "host": "east"},
        {"name": "beta", "customers": 2, "host": "east"},
        {"name": "gamma", "customers": 2},
    ],
    "gateways": {"count": 1},
}


def test_banks_naming_a_host_share_one_process(tmp_path: Path) -> None:
    topology = parse_topology(HOSTED, base=tmp_path)
    assert topology.bank_processes() == {"east": ("alpha", "beta"), "gamma": ("gamma",)}

    plan = {child.name: child.args for child in Supervisor(topology)._plan()}
    assert set(plan) == {"balancer", "bank-east", "bank-gamma", "gateway-gw-1"}
    east = plan["bank-east"]
    assert east[east.index("--name") + 1] == "east"
    assert [east[i + 1] for i, a in enumerate(east) if a == "--bank"] == ["alpha", "beta"]
    assert [Path(east[i + 1]).name for i, a in enumerate(east) if a == "--seed"] == [
        "alpha.json",
        "beta.json",
    ]
    assert east[east.index("--certs") + 1].endswith("bank-east")
    gamma = plan["bank-gamma"]
    assert "--bank" not in gamma  # a bank of its own: as before
    assert gamma[gamma.index("--name") + 1] == "gamma"


def test_a_host_named_like_a_bank_is_refused(tmp_path: Path) -> None:
    clash = {**HOSTED, "banks": [{"name": "alpha", "host": "gamma"}, {"name": "gamma"}]}
    with pytest.raises(TopologyError, match="gamma"):
        parse_topology(clash, base=tmp_path)


def test_a_host_serving_one_bank_still_names_it(tmp_path: Path) -> None:
    topology = parse_topology(
        {"banks": [{"name": "alpha", "host": "east"}, {"name": "beta"}]}, base=tmp_path
    )
    east = {c.name: c.args for c in Supervisor(topology)._plan()}["bank-east"]
    assert [east[i + 1] for i, a in enumerate(east) if a == "--bank"] == ["alpha"]


async def test_payments_within_and_across_a_shared_process_land_exactly_once(
    tmp_path: Path,
) -> None:
    """alpha and beta share a process, gamma has its own. With `mix any` the
    load holds one-phase payments, two-phase ones between two banks of one
    process (both legs in one batch, one transfer id), and ones across
    processes; the load generator's audit checks every ledger line."""
    topology = sized_topology(parse_topology(HOSTED, base=tmp_path), 12, None, tmp_path / "c")
    quiet = Console(stderr=True, quiet=True)
    async with own_cluster(topology, say=lambda _line: None) as target:
        config = LoadConfig(clients=12, duration_s=3.0, seed=11, mix="any", payees="all")
        result = await run_load(config, target, out_dir=tmp_path / "out", console=quiet)

    audit = result.audit
    assert audit.ok, (audit.problems(), audit.examples)
    assert audit.conserved and audit.lost == audit.duplicated == 0
    committed = [p for p in result.payments if p.outcome is Outcome.COMMITTED]
    assert Counter(p.outcome for p in result.payments)[Outcome.UNKNOWN] == 0
    routes = Counter(frozenset((p.payer.bank, p.payee.bank)) for p in committed)
    assert routes[frozenset(("alpha", "beta"))] > 0  # both legs in the shared process
    assert routes[frozenset(("alpha", "gamma"))] + routes[frozenset(("beta", "gamma"))] > 0
    assert routes[frozenset(("alpha",))] + routes[frozenset(("beta",))] > 0  # one-phase


async def test_a_host_killed_after_both_yes_votes_learns_commit_for_both_banks(
    pki: Pki, tmp_path: Path
) -> None:
    """Both legs of one payment live in one process, which dies on the COMMIT
    (one DecideTransfers carrying both). After a restart each bank's own
    resolver, under its own identity, asks the coordinator and commits its leg;
    the settler waits a minute, so nothing else can finish the payment."""
    with cluster(
        pki,
        tmp_path,
        hosted=True,
        gateway_extra=["--settle-interval", "60"],
        bank_extra=["--in-doubt-timeout", "0.3"],
        bank_env={"east": {"STRIFE_FAILPOINTS": "bank.before_commit"}},
    ) as c:
        async with ChannelPool(pki.identity("client", "default")) as pool:
            ada = Customer(pool, c.gateways["gw-1"].address)
            await ada.login("ada")
            before = await _balances(pki, c)
            reply = await ada.pay(str(uuid.uuid4()), ("alpha", "ada-usd"), ("beta", "cy-usd"), 700)
            assert reply.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
            east = c.banks["alpha"]
            assert east.proc is not None and east.proc.wait(10) == 75  # died on the COMMIT
            restarted = c.restart_bank("alpha")
            assert c.banks["beta"] is restarted

            async def settled() -> bool:
                now = await _balances(pki, c)
                return now["ada"][:2] == (before["ada"][0] - 700, 0) and now["cy"][0] == (
                    before["cy"][0] + 700
                )

            await until(settled, "the host's banks to resolve the in-doubt transfer")
            resolved = [e for e in restarted.log_events() if e.get("event") == "in_doubt_resolved"]
            assert sorted(str(e["decision"]) for e in resolved) == ["COMMIT", "COMMIT"]
            asked = {
                str(e["peer"]).rsplit("/", 1)[-1]
                for e in c.gateways["gw-1"].log_events()
                if str(e.get("method", "")).endswith("/GetDecision")
            }
            assert asked == {"alpha", "beta"}  # each bank under its own name, not "east"


async def _balances(pki: Pki, c: Cluster) -> dict[str, tuple[int, int, int]]:
    """Both accounts read from the shared process, each asked of its own bank."""
    async with ChannelPool(pki.identity("admin", "admin")) as pool:
        address = c.banks["alpha"].address
        return {
            "ada": await BankClient(pool, address, bank="alpha").balance("ada-usd"),
            "cy": await BankClient(pool, address, bank="beta").balance("cy-usd"),
        }
