"""`deploy/bft.toml` as a local cluster: plain banks and a replicated one side by
side, paid through by a customer and by the load generator."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from strife.bft.cluster import auditor_clients
from strife.cluster.seeds import account_of, password_of
from strife.cluster.supervisor import Supervisor
from strife.cluster.topology import parse_topology
from strife.rpc.addresses import free_port
from strife.rpc.channels import ChannelPool
from strife.v1 import bank_pb2, gateway_pb2

from ..cluster_fixtures import Customer
from ..support import until

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_the_bft_topology_pays_into_its_replicated_bank_despite_a_liar(
    tmp_path: Path,
) -> None:
    raw = tomllib.loads((REPO / "deploy" / "bft.toml").read_text())
    raw["data_dir"] = "cluster"
    raw["balancer"]["listen"] = f"127.0.0.1:{free_port()}"
    raw["replicated_banks"][0]["byzantine"] = {"1": "wrong-results"}
    topology = parse_topology(raw, base=tmp_path)
    supervisor = Supervisor(topology, say=lambda _: None)
    await supervisor.up()
    try:
        root = topology.data_dir.resolve()
        async with (
            ChannelPool(root / "certs" / "client-default") as customers,
            ChannelPool(root / "certs" / "admin") as admin,
        ):
            payer = Customer(customers, supervisor.child("gateway-gw-1").address)
            login = await payer.stub.Login(
                gateway_pb2.LoginRequest(
                    username="alpha-1", password=password_of("alpha-1"), bank="alpha"
                ),
                timeout=5,
            )
            payer.token = login.access_token
            paid = await payer.pay(
                str(uuid.uuid4()), ("alpha", account_of("alpha-1")),
                ("vault", account_of("vault-1")), 2_500,
            )  # fmt: skip
            assert paid.payment.status == gateway_pb2.PAYMENT_STATUS_COMMITTED
            vault = auditor_clients(root, ["vault"], admin)["vault"]

            async def credited() -> bool:
                reply = await vault.GetAccountBalance(
                    bank_pb2.GetAccountBalanceRequest(account_id=account_of("vault-1")),
                    timeout=10,
                )
                # The 1,000.00 opening balance and the payment (its decision is
                # delivered right after the gateway answered).
                return reply.balance.balance.amount_minor == 102_500

            await until(credited, "the payment to reach the replicated bank")
    finally:
        await supervisor.down()


@pytest.mark.slow
def test_the_load_generator_pays_through_and_audits_a_replicated_bank(tmp_path: Path) -> None:
    """Customers of every bank pay each other across banks; the auditor reads the
    replicated bank's books through its f + 1 client, and the money checks out."""
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "strife-loadgen"),
            "--topology", str(REPO / "deploy" / "bft.toml"), "--start",
            "--data-dir", str(tmp_path / "cluster"), "--clients", "9", "--count", "60",
            "--concurrency", "6", "--no-plots", "--no-progress", "--json",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    audit = result["audit"]
    assert audit["ok"] and audit["conserved"], audit
    assert audit["committed_checked"] == 60
    assert audit["accounts"] == 15  # five customers at each of alpha, beta and vault
