"""`strife top`: rates between two scrapes, the screens it draws, and a real cluster."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from strife.client import StrifeClient
from strife.cluster.seeds import account_of, password_of
from strife.top.cli import top
from strife.top.registry import list_registered
from strife.top.render import as_rich, as_text
from strife.top.scrape import Scrape, parse
from strife.top.snapshot import quantile, snapshot
from strife.top.targets import NoTargets, Target, from_cluster_state, from_options

from .test_dashboard_metrics import cluster_up

PAY = "/strife.v1.PaymentGateway/ProcessPayment"


def gateway_text(served: float, committed: float, le_10ms: float, count: float) -> str:
    return f"""\
# HELP strife_rpc_requests_total RPCs
# TYPE strife_rpc_requests_total counter
strife_rpc_requests_total{{method="{PAY}",code="OK"}} {served}
strife_rpc_requests_total{{method="/grpc.health.v1.Health/Check",code="OK"}} {served * 10}
# HELP strife_rpc_latency_seconds latency
# TYPE strife_rpc_latency_seconds histogram
strife_rpc_latency_seconds_bucket{{method="{PAY}",le="0.005"}} 0
strife_rpc_latency_seconds_bucket{{method="{PAY}",le="0.01"}} {le_10ms}
strife_rpc_latency_seconds_bucket{{method="{PAY}",le="+Inf"}} {count}
strife_rpc_latency_seconds_count{{method="{PAY}"}} {count}
strife_rpc_latency_seconds_sum{{method="{PAY}"}} 1.0
# HELP strife_rpc_in_flight in flight
# TYPE strife_rpc_in_flight gauge
strife_rpc_in_flight 3
# HELP strife_payment_outcomes_total outcomes
# TYPE strife_payment_outcomes_total counter
strife_payment_outcomes_total{{state="COMMITTED",reason=""}} {committed}
# HELP strife_gateway_payments_in_flight in flight
# TYPE strife_gateway_payments_in_flight gauge
strife_gateway_payments_in_flight 2
# HELP strife_gateway_payments_unsettled unsettled
# TYPE strife_gateway_payments_unsettled gauge
strife_gateway_payments_unsettled 1
# HELP strife_storage_commit_seconds commit
# TYPE strife_storage_commit_seconds histogram
strife_storage_commit_seconds_count {count}
strife_storage_commit_seconds_sum {count * 0.002}
# HELP process_resident_memory_bytes rss
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 52428800
"""


def balancer_text(gw1: float, gw2: float) -> str:
    return f"""\
# HELP strife_balancer_picks_total picks
# TYPE strife_balancer_picks_total counter
strife_balancer_picks_total{{service="gateway",picked="gw-1"}} {gw1}
strife_balancer_picks_total{{service="gateway",picked="gw-2"}} {gw2}
strife_balancer_picks_total{{service="bank",picked="alpha"}} 500
"""


def scraped(target: Target, at: float, text: str | None) -> Scrape:
    return Scrape(target, at, parse(text) if text is not None else None, error="refused")


GW = Target("gw", "127.0.0.1:1")  # no role given: recognised from what it exports
LB = Target("lb", "127.0.0.1:2")
BANK = Target("bank-alpha", "127.0.0.1:3", role="bank", restarts=2)


def test_rates_gauges_and_picks_from_two_scrapes() -> None:
    before = [
        scraped(GW, 10.0, gateway_text(served=100, committed=90, le_10ms=50, count=100)),
        scraped(LB, 10.0, balancer_text(gw1=10, gw2=10)),
    ]
    after = [
        scraped(GW, 12.0, gateway_text(served=300, committed=250, le_10ms=150, count=300)),
        scraped(LB, 12.0, balancer_text(gw1=16, gw2=12)),
        scraped(BANK, 12.0, None),
    ]
    snap = snapshot(before, after)
    assert snap.interval_s == 2.0
    gw, lb, bank = snap.rows
    assert (gw.role, lb.role) == ("gateway", "balancer")
    assert gw.rpc_per_s == 100.0  # health checks are not counted
    assert (gw.rpc_in_flight, gw.open_2pc, gw.in_doubt, gw.unsettled) == (3, 2, None, 1)
    assert gw.commit_ms == pytest.approx(2.0)
    assert gw.rss_bytes == 50 * 2**20
    assert not bank.up and bank.error == "refused" and bank.restarts == 2
    assert snap.payments_per_s == {"COMMITTED": 80.0}
    # 200 payments in the interval: 100 under 10 ms, none under 5 ms.
    p50, p99 = snap.latency_ms
    assert p50 == pytest.approx(10.0)
    assert p99 == pytest.approx(10.0)  # above the last finite bound: that bound
    assert [(p.instance, p.total, p.per_s) for p in snap.picks] == [
        ("gw-1", 16, 3.0),
        ("gw-2", 12, 1.0),
    ]
    assert [p.share for p in snap.picks] == pytest.approx([16 / 28, 12 / 28])


def test_a_restarted_process_counts_from_zero() -> None:
    before = [scraped(GW, 0.0, gateway_text(served=1000, committed=900, le_10ms=0, count=1000))]
    after = [scraped(GW, 1.0, gateway_text(served=40, committed=30, le_10ms=0, count=40))]
    snap = snapshot(before, after)
    assert snap.rows[0].rpc_per_s == 40.0
    assert snap.payments_per_s == {"COMMITTED": 30.0}


def test_first_screen_has_gauges_but_no_rates() -> None:
    after = [scraped(GW, 1.0, gateway_text(served=5, committed=5, le_10ms=5, count=5))]
    (row,) = snapshot([], after).rows
    assert row.rpc_per_s is None and row.commit_ms is None
    assert row.open_2pc == 2


def test_quantile_interpolates_within_a_bucket() -> None:
    buckets = [(0.1, 10.0), (0.2, 30.0), (float("inf"), 30.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.1 * (15 - 10) / 20)
    assert quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


def test_the_text_and_rich_screens_show_every_process() -> None:
    before = [scraped(LB, 0.0, balancer_text(gw1=0, gw2=0))]
    after = [
        scraped(GW, 2.0, gateway_text(served=10, committed=10, le_10ms=10, count=10)),
        scraped(LB, 2.0, balancer_text(gw1=3, gw2=1)),
        scraped(BANK, 2.0, None),
    ]
    snap = snapshot(before, after)
    text = as_text(snap)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("process"))
    for column in ("rpc/s", "in flight", "2pc open", "in doubt", "unsettled", "commit ms"):
        assert column in header
    assert any(line.startswith("bank-alpha") and "DOWN" in line for line in lines)
    assert any(line.startswith("gw ") and "50.0" in line for line in lines)  # RSS MiB
    assert any("gw-1" in line and "75%" in line for line in lines)
    console = Console(record=True, width=140)
    console.print(as_rich(snap, "strife top"))
    drawn = console.export_text()
    assert "bank-alpha" in drawn and "DOWN" in drawn and "gw-2" in drawn and "25%" in drawn
    assert "MiB" in drawn and "settled" in drawn  # two-line headings


def test_targets_from_a_cluster_state_and_from_options(tmp_path: Path) -> None:
    with pytest.raises(NoTargets):
        from_cluster_state(tmp_path)
    (tmp_path / "cluster.json").write_text(
        json.dumps(
            {
                "children": [
                    {"name": "balancer", "pid": 7, "metrics": "127.0.0.1:9000", "restarts": 0},
                    {"name": "gateway-gw-1", "pid": 8, "metrics": "127.0.0.1:9001", "restarts": 1},
                    {"name": "bank-alpha", "pid": 9, "metrics": "", "restarts": 0},
                ]
            }
        )
    )
    found = from_cluster_state(tmp_path)
    assert [(t.name, t.role, t.pid, t.restarts) for t in found] == [
        ("balancer", "balancer", 7, 0),
        ("gateway-gw-1", "gateway", 8, 1),
    ]
    assert found[1].url == "http://127.0.0.1:9001/metrics"
    given = from_options(["bank-east=10.0.0.5:9100", "10.0.0.6:9100"])
    assert [(t.name, t.role, t.metrics) for t in given] == [
        ("bank-east", "bank", "10.0.0.5:9100"),
        ("10.0.0.6:9100", "", "10.0.0.6:9100"),
    ]
    with pytest.raises(ValueError):
        from_options(["gw-1=nowhere"])


def test_top_without_a_cluster_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(top, ["--data-dir", str(tmp_path), "--once"])
    assert result.exit_code == 1
    assert "no cluster running" in result.output


def test_top_asks_a_balancer_only_with_an_identity() -> None:
    result = CliRunner().invoke(top, ["--balancer", "127.0.0.1:7400", "--once"])
    assert result.exit_code == 2
    assert "--balancer needs --certs" in result.output


def test_top_marks_a_process_that_does_not_answer(tmp_path: Path) -> None:
    from strife.rpc.addresses import free_port

    result = CliRunner().invoke(
        top, ["--target", f"gateway-gw-9=127.0.0.1:{free_port()}", "--once", "--interval", "0.2"]
    )
    assert result.exit_code == 0, result.output
    assert any(
        line.startswith("gateway-gw-9") and "DOWN" in line for line in result.output.splitlines()
    )


def test_the_live_view_draws_until_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    from strife.rpc.addresses import free_port

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("strife.top.cli.time.sleep", interrupt)
    result = CliRunner().invoke(top, ["--target", f"gateway-gw-9=127.0.0.1:{free_port()}"])
    assert result.exit_code == 0, result.output
    assert "strife top · 1 processes" in result.output
    assert "gateway-gw-9" in result.output and "DOWN" in result.output


async def _pay_until(state: dict[str, Any], outbox: Path, done: subprocess.Popen[str]) -> int:
    """Pay alpha-1 -> beta-1 until `done` exits (bounded); how many committed."""
    certs = Path(state["root"]) / "certs" / "client-default"
    committed = 0
    deadline = time.monotonic() + 30
    async with StrifeClient(certs=certs, balancer=state["balancer"], outbox=outbox) as client:
        await client.login("alpha-1", password_of("alpha-1"), "alpha")
        while done.poll() is None and time.monotonic() < deadline:
            paid = await client.pay(f"beta/{account_of('beta-1')}", 1, "USD", wait_s=10)
            committed += paid.state.name == "COMMITTED"
    return committed


def test_top_once_against_a_running_cluster(tmp_path: Path) -> None:
    with cluster_up(tmp_path) as state:
        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "strife.top",
                "--data-dir",
                state["root"],
                "--once",
                "--interval",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            committed = asyncio.run(_pay_until(state, tmp_path / "outbox.db", watch))
            out, err = watch.communicate(timeout=30)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        assert watch.returncode == 0, err
        assert committed > 0
        certs = Path(state["root"]) / "certs" / "client-default"
        registered = asyncio.run(list_registered(state["balancer"], certs, 7402))
        given = [f"{c['name']}={c['metrics']}" for c in state["children"]]
        again = subprocess.run(
            [
                sys.executable,
                "-m",
                "strife.top",
                "--once",
                "--interval",
                "0.5",
                *(arg for target in given for arg in ("--target", target)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = out.splitlines()
    assert lines[0].startswith("payments/s: COMMITTED"), out
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("bank", "gate"))}
    rows["balancer"] = next(line.split() for line in lines if line.startswith("balancer "))
    assert set(rows) == {"balancer", "bank-alpha", "bank-beta", "gateway-gw-1", "gateway-gw-2"}
    for name, cells in rows.items():
        assert cells[2] == "up", out
        assert float(cells[9]) > 10, f"{name}: RSS {cells[9]} MiB"  # rss MiB
    assert sum(float(rows[g][3]) for g in ("gateway-gw-1", "gateway-gw-2")) > 0, out  # rpc/s
    assert any(line.strip().startswith("gw-") and "%" in line for line in lines), out
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" up ") == 5, again.stdout
    # The registry names every bank and gateway; /metrics is on the agreed port of its host.
    assert [(t.name, t.role, t.metrics) for t in registered] == [
        ("balancer", "balancer", "127.0.0.1:7402"),
        ("bank-alpha", "bank", "127.0.0.1:7402"),
        ("bank-beta", "bank", "127.0.0.1:7402"),
        ("gateway-gw-1", "gateway", "127.0.0.1:7402"),
        ("gateway-gw-2", "gateway", "127.0.0.1:7402"),
    ]
