"""The original design's quick-start flags still work, as a reader would type them."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from .cluster_fixtures import free_port
from .processes import BIN, ServiceProcess

SEED = [
    {
        "bank": "ChaseBank",
        "customer_id": "c-john",
        "username": "john_doe",
        "display_name": "John Doe",
        "password": "pw-john",
        "account_id": "john-usd",
        "currency": "USD",
        "opening_balance": "100.00",
    }
]


def test_quickstart_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the defaults are relative: ./certs/<identity>, ./data/
    subprocess.run(
        [
            str(BIN / "strife-certs"),
            "dev",
            "--out",
            "certs",
            "--bank",
            "ChaseBank",
            "--gateway",
            "gw-1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (tmp_path / "seed.json").write_text(json.dumps(SEED))
    bank_port, gw_port = free_port(), free_port()
    with ExitStack() as stack:
        balancer = ServiceProcess(
            "strife-balancer", ["--policy=round_robin"], tmp_path / "balancer.log"
        ).start()
        stack.callback(balancer.stop)
        bank = ServiceProcess(
            "strife-bank",
            ["--bank-name=ChaseBank", f"--port={bank_port}", "--init", "--seed=seed.json"],
            tmp_path / "bank.log",
        ).start()
        stack.callback(bank.stop)
        assert bank.address == f"127.0.0.1:{bank_port}"
        assert (tmp_path / "data" / "bank-ChaseBank.db").exists()
        gateway = ServiceProcess(
            "strife-gateway",
            [
                f"--port={gw_port}",
                "--ssl-cert=certs/gateway-gw-1/tls.crt",
                "--ssl-key=certs/gateway-gw-1/tls.key",
                f"--bank=ChaseBank=127.0.0.1:{bank_port}",
            ],
            tmp_path / "gateway.log",
        ).start()
        stack.callback(gateway.stop)
        env = {**os.environ, "STRIFE_HOME": str(tmp_path / "home"), "STRIFE_PASSWORD": "pw-john"}
        login = subprocess.run(
            [
                str(BIN / "strife"),
                "--username=john_doe",
                f"--gateway-addr=localhost:{gw_port}",
                "login",
                "--bank",
                "ChaseBank",
                "--certs",
                "certs/client-default",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert login.returncode == 0, login.stderr
        assert json.loads(login.stdout.splitlines()[-1])["customer_id"] == "c-john"


@pytest.mark.parametrize("command", [[], ["login"], ["pay"], ["balance"], ["watch"]])
def test_help_spells_the_gateway_one_way(command: list[str]) -> None:
    from click.testing import CliRunner

    from strife.cli import main

    shown = CliRunner().invoke(main, [*command, "--help"]).output
    assert "--gateway " in shown and "--gateway-addr" not in shown


@pytest.mark.parametrize("spelling", ["--gateway", "--gateway-addr"])
def test_both_spellings_reach_the_command(spelling: str) -> None:
    from click.testing import CliRunner

    from strife.cli import main

    # Given a gateway, the command gets as far as looking for the client identity.
    before = CliRunner().invoke(main, [spelling, "127.0.0.1:1", "balance", "--certs", "none"])
    after = CliRunner().invoke(main, ["balance", spelling, "127.0.0.1:1", "--certs", "none"])
    for result in (before, after):
        assert result.exit_code == 2, result.output
        assert "no client identity folder at none" in result.output
