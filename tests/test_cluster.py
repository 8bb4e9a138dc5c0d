"""`strife cluster up`: healthy, serving, self-healing, and nothing left after `down`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from strife.cluster.seeds import account_of, password_of
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient
from strife.v1 import gateway_pb2

from .cluster_fixtures import Customer, free_port

UP_TIMEOUT_S = 60.0


def _cluster(*args: str) -> list[str]:
    return [sys.executable, "-m", "strife.cluster", *args]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_state(root: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not (root / "cluster.json").exists():
        assert proc.poll() is None, "cluster up exited early"
        assert time.monotonic() < deadline, "cluster never came up"
        time.sleep(0.1)
    state: dict[str, Any] = json.loads((root / "cluster.json").read_text())
    return state


async def _pay(root: Path, balancer: str, amount_minor: int) -> int:
    async with ChannelPool(root / "certs" / "client-default") as pool:
        payer = Customer(pool, await BalancerClient(pool, balancer).best("gateway"))
        reply = await payer.stub.Login(
            gateway_pb2.LoginRequest(
                username="alpha-1", password=password_of("alpha-1"), bank="alpha"
            ),
            timeout=5,
        )
        payer.token = reply.access_token
        # A bank that was just restarted may still be starting, or the gateway's
        # channel to it waiting out a reconnect backoff: that payment aborts as
        # transient, and a client tries again under a new key, as here (bounded).
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            paid = await payer.pay(
                str(uuid.uuid4()),
                ("alpha", account_of("alpha-1")),
                ("beta", account_of("beta-1")),
                amount_minor,
            )
            if not paid.payment.abort_transient or time.monotonic() > deadline:
                return int(paid.payment.status)
            await asyncio.sleep(0.2)


def test_cluster_up_serves_restarts_and_goes_down(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    topology = tmp_path / "topology.toml"
    topology.write_text(
        'data_dir = "cluster"\n'
        '[[banks]]\nname = "alpha"\ncustomers = 2\n[[banks]]\nname = "beta"\ncustomers = 1\n'
        "[gateways]\ncount = 1\n[timeouts]\nheartbeat_s = 0.2\nlease_ttl_s = 1.0\n"
    )
    port = free_port()
    up = subprocess.Popen(
        _cluster("up", "--config", str(topology), "--balancer-port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    pids: list[int] = []
    try:
        state = _wait_state(root, up)
        children = {c["name"]: c for c in state["children"]}
        pids = [int(c["pid"]) for c in children.values()]
        assert set(children) == {"balancer", "bank-alpha", "bank-beta", "gateway-gw-1"}
        assert state["balancer"] == children["balancer"]["address"] == f"127.0.0.1:{port}"

        committed = gateway_pb2.PAYMENT_STATUS_COMMITTED
        assert asyncio.run(_pay(root, str(state["balancer"]), 1500)) == committed

        # SIGKILL a bank: the supervisor brings it back on the same address.
        bank = children["bank-beta"]
        os.kill(int(bank["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            now = json.loads((root / "cluster.json").read_text())
            beta = next(c for c in now["children"] if c["name"] == "bank-beta")
            if beta["restarts"] == 1:
                break
            assert time.monotonic() < deadline, "bank-beta was not restarted"
            time.sleep(0.1)
        assert beta["address"] == bank["address"]
        pids.append(int(beta["pid"]))
        assert asyncio.run(_pay(root, str(state["balancer"]), 100)) == committed

        down = subprocess.run(
            _cluster("down", "--config", str(topology)), capture_output=True, text=True, timeout=60
        )
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0
        assert not [pid for pid in pids if _alive(pid)]
        assert not (root / "cluster.json").exists()
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=30)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_taken_balancer_port_is_reported_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = subprocess.run(
            _cluster("up", "--data-dir", str(tmp_path / "c"), "--balancer-port", str(port)),
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
        )
    assert up.returncode == 1
    assert f"balancer did not start; see {tmp_path / 'c' / 'logs' / 'balancer.log'}" in up.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in up.stderr  # the log's reason
    assert "--balancer-port" in up.stderr  # and what to do about it
    assert not (tmp_path / "c" / "cluster.json").exists()
