"""The load generator: its money audit catches what it claims to, and a real load passes it.

The integration test starts a real cluster (3 banks, 2 gateways, mTLS,
synchronous=FULL) and drives 100 simulated customers through it, each with
its own login, then checks exactly-once delivery twice: with the load
generator's own audit, and with an independent read of the banks' ledgers
here in the test.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from strife.cluster.topology import default_topology
from strife.errors import StrifeError
from strife.loadgen import LoadConfig, Outcome, Payment, Target, own_cluster, run_load
from strife.loadgen._model import Customer
from strife.loadgen.audit import Book, Line, check
from strife.loadgen.config import ConfigError
from strife.loadgen.customers import (
    PayeePicker,
    choose_payers,
    from_topology,
    from_usernames,
    payee_pool,
)
from strife.loadgen.engine import Action, action_for
from strife.loadgen.stats import LatencySummary, percentile, throughput, time_series
from strife.loadgen.target import identities, sized_topology
from strife.rpc.channels import ChannelPool
from strife.rpc.discovery import BalancerClient
from strife.v1 import bank_pb2, bank_pb2_grpc

TIMEOUT_S = 5.0

A = Customer("alpha-1", "pw-alpha-1", "alpha", "alpha-1-usd")
B = Customer("beta-1", "pw-beta-1", "beta", "beta-1-usd")


def committed(tid: str, amount: int, payer: Customer = A, payee: Customer = B) -> Payment:
    return Payment(
        key=f"k-{tid}",
        payer=payer,
        payee=payee,
        amount_minor=amount,
        started_s=0.0,
        outcome=Outcome.COMMITTED,
        transfer_id=tid,
        latency_ms=1.0,
        finished_s=0.1,
    )


def books(a: int, b: int) -> dict[tuple[str, str], Book]:
    return {A.ref: Book(a, 0, 10), B.ref: Book(b, 0, 7)}


# --- the audit's verdicts, fed by hand ------------------------------------------


def test_audit_passes_a_clean_run() -> None:
    lines = {A.ref: [Line(A.ref, 11, "t1", -30)], B.ref: [Line(B.ref, 8, "t1", 30)]}
    aborted = committed("t2", 5)
    aborted.outcome, aborted.reason = Outcome.ABORTED, "INSUFFICIENT_FUNDS"
    report = check(books(100, 0), books(70, 30), lines, [committed("t1", 30), aborted], True, 0)
    assert report.ok, report.problems()
    assert (report.committed_checked, report.aborted_checked) == (1, 1)


def test_audit_catches_a_lost_payment() -> None:
    lines = {A.ref: [Line(A.ref, 11, "t1", -30)], B.ref: []}
    report = check(books(100, 0), books(70, 0), lines, [committed("t1", 30)], True, 0)
    assert not report.ok
    assert report.lost == 1 and not report.conserved
    assert any("lost" in p for p in report.problems())


def test_audit_catches_a_duplicated_payment() -> None:
    lines = {
        A.ref: [Line(A.ref, 11, "t1", -30), Line(A.ref, 12, "t1", -30)],
        B.ref: [Line(B.ref, 8, "t1", 30), Line(B.ref, 9, "t1", 30)],
    }
    report = check(books(100, 0), books(40, 60), lines, [committed("t1", 30)], True, 0)
    assert not report.ok and report.duplicated == 1


def test_audit_catches_an_aborted_payment_that_moved_money() -> None:
    payment = committed("t1", 30)
    payment.outcome = Outcome.ABORTED
    lines = {A.ref: [Line(A.ref, 11, "t1", -30)], B.ref: [Line(B.ref, 8, "t1", 30)]}
    report = check(books(100, 0), books(70, 30), lines, [payment], True, 0)
    assert not report.ok and report.aborted_but_moved == 1


def test_audit_catches_money_created_and_a_wrong_amount() -> None:
    lines = {A.ref: [Line(A.ref, 11, "t1", -30)], B.ref: [Line(B.ref, 8, "t1", 31)]}
    report = check(books(100, 0), books(70, 31), lines, [committed("t1", 30)], True, 0)
    assert not report.ok and not report.conserved and report.wrong_amount == 1
    assert "total money changed by +1 minor units" in report.problems()


def test_audit_catches_a_balance_that_moved_without_a_ledger_line() -> None:
    report = check(books(100, 0), books(90, 10), {A.ref: [], B.ref: []}, [], True, 0)
    assert not report.ok and report.ledger_mismatch_accounts == 2


def test_audit_accepts_balanced_strangers_but_not_unbalanced_ones() -> None:
    pair = {A.ref: [Line(A.ref, 11, "x", -5)], B.ref: [Line(B.ref, 8, "x", 5)]}
    assert check(books(100, 0), books(95, 5), pair, [], True, 0).ok
    half = {A.ref: [Line(A.ref, 11, "x", -5)], B.ref: []}
    report = check(books(100, 0), books(95, 0), half, [], True, 0)
    assert not report.ok and report.unbalanced_transfers == 1


def test_audit_fails_on_payments_left_without_an_answer() -> None:
    payment = committed("t1", 30)
    payment.outcome = Outcome.UNKNOWN
    report = check(books(100, 0), books(100, 0), {A.ref: [], B.ref: []}, [payment], True, 0)
    assert not report.ok and report.unknown_left == 1


# --- the pure pieces ------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )
    assert math.isnan(percentile([], 0.5))
    summary = LatencySummary.of([3.0, 1.0, math.nan, 2.0])
    assert (summary.count, summary.p50_ms, summary.max_ms) == (3, 2.0, 3.0)


def test_throughput_counts_from_the_warmup_to_the_last_answer() -> None:
    payments = [committed(f"t{i}", 1) for i in range(10)]
    for i, p in enumerate(payments):
        p.started_s, p.finished_s = 1.0 + i * 0.1, 1.0 + i * 0.1 + 0.05
    figures = throughput(payments, warmup_s=1.0)
    assert figures.window_s == pytest.approx(0.95)
    assert figures.committed_per_s == pytest.approx(10 / 0.95)
    series = time_series(payments, bin_s=1.0)
    assert [row["answered_per_s"] for row in series] == [0.0, 10.0]


def test_customers_interleave_banks_and_payees_are_elsewhere() -> None:
    topology = sized_topology(default_topology(Path("unused")), 10, None, Path("unused"))
    customers = from_topology(topology)
    assert len(customers) == 12  # 4 per bank, enough for 10 clients
    assert [c.bank for c in customers[:3]] == ["alpha", "beta", "gamma"]
    rng = random.Random(1)
    payers = choose_payers(customers, 10, rng)
    assert Counter(c.bank for c in payers) == {"alpha": 4, "beta": 3, "gamma": 3}
    assert choose_payers(customers, 10, random.Random(5)) == choose_payers(
        customers, 10, random.Random(5)
    )
    assert payee_pool(customers, payers, "cross", "auto") == payers  # money stays in the group
    assert payee_pool(customers, payers[:1], "cross", "auto") == customers  # one payer pays out
    assert payee_pool(customers, payers, "cross", "all") == customers
    picker = PayeePicker(customers, "cross")
    assert all(picker.pick(p, rng).bank != p.bank for p in payers for _ in range(20))
    anywhere = PayeePicker(customers, "any")
    assert all(anywhere.pick(p, rng) != p for p in payers for _ in range(20))
    with pytest.raises(ConfigError):
        choose_payers(customers, 13, rng)
    with pytest.raises(ConfigError):
        PayeePicker(from_usernames(["alpha-1", "alpha-2"]), "cross")
    assert from_usernames(["beta-2"]) == [Customer("beta-2", "pw-beta-2", "beta", "beta-2-usd")]


def test_config_refuses_unbounded_or_contradictory_runs() -> None:
    LoadConfig().validate()
    for bad in (
        LoadConfig(duration_s=None, count=None),
        LoadConfig(rate_per_s=10, concurrency=5),
        LoadConfig(clients=0),
        LoadConfig(policy="random"),
        LoadConfig(warmup_s=10, duration_s=10),
    ):
        with pytest.raises(ConfigError):
            bad.validate()


def test_retry_rules_follow_the_status_codes() -> None:
    def error(code: grpc.StatusCode, reason: str = "") -> StrifeError:
        return StrifeError(code, reason, "")

    assert action_for(error(grpc.StatusCode.INVALID_ARGUMENT)) is Action.FINAL
    assert action_for(error(grpc.StatusCode.UNAVAILABLE)) is Action.FAILOVER
    assert action_for(error(grpc.StatusCode.DEADLINE_EXCEEDED)) is Action.FAILOVER
    assert action_for(error(grpc.StatusCode.UNAVAILABLE, "BANK_UNAVAILABLE")) is Action.RETRY
    assert action_for(error(grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS")) is Action.RETRY
    assert action_for(error(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")) is Action.RELOGIN


def test_identities_need_an_admin_for_the_audit(tmp_path: Path) -> None:
    (tmp_path / "client-default").mkdir()
    (tmp_path / "client-default" / "ca.crt").write_text("x")
    with pytest.raises(ConfigError, match="admin"):
        identities(tmp_path, None)


# --- a real load -----------------------------------------------------------------


async def _ledger(
    pool: ChannelPool, balancer: str, customers: list[Customer]
) -> tuple[int, dict[str, list[tuple[tuple[str, str], int]]]]:
    """Total balance and every ledger line by transfer id, read straight from the banks."""
    directory = BalancerClient(pool, balancer)
    total = 0
    lines: dict[str, list[tuple[tuple[str, str], int]]] = {}
    for c in customers:
        stub = bank_pb2_grpc.BankServiceStub(pool.get(await directory.resolve("bank", c.bank)))
        reply = await stub.GetAccountBalance(
            bank_pb2.GetAccountBalanceRequest(bank=c.bank, account_id=c.account_id),
            timeout=TIMEOUT_S,
        )
        total += reply.balance.balance.amount_minor
        token = ""
        for _ in range(10_000):  # bounded paging
            page = await stub.GetTransactionHistory(
                bank_pb2.BankHistoryRequest(
                    bank=c.bank, account_id=c.account_id, page_size=200, page_token=token
                ),
                timeout=TIMEOUT_S,
            )
            for entry in page.entries:
                lines.setdefault(entry.transfer_id, []).append((c.ref, entry.amount.amount_minor))
            token = page.next_page_token
            if not token:
                break
    return total, lines


@pytest.mark.slow
async def test_a_hundred_customers_pay_and_every_payment_lands_exactly_once(
    tmp_path: Path,
) -> None:
    topology = sized_topology(default_topology(tmp_path / "cluster"), 100, None, tmp_path / "c")
    quiet = Console(stderr=True, quiet=True)
    async with own_cluster(topology, say=lambda _line: None) as target:
        assert len(target.customers) == 102
        async with ChannelPool(target.admin_certs) as admin:
            money_before, lines_before = await _ledger(admin, target.balancer, target.customers)
            assert all(tid.startswith("opening:") for tid in lines_before)  # a fresh cluster

            config = LoadConfig(clients=100, duration_s=4.0, seed=7)
            result = await run_load(config, target, out_dir=tmp_path / "out", console=quiet)

            money_after, lines_after = await _ledger(admin, target.balancer, target.customers)

        # The load generator's own verdict...
        audit = result.audit
        assert audit.ok, (audit.problems(), audit.examples)
        assert audit.conserved and audit.lost == audit.duplicated == 0
        outcomes = Counter(p.outcome for p in result.payments)
        assert outcomes[Outcome.UNKNOWN] == 0
        assert outcomes[Outcome.COMMITTED] >= 100, outcomes
        assert len({p.payer.username for p in result.payments}) == 100
        assert audit.committed_checked == outcomes[Outcome.COMMITTED]

        # ...and an independent one: the same ledgers read here.
        assert money_after == money_before
        for p in result.payments:
            found = lines_after.get(p.transfer_id, [])
            if p.outcome is Outcome.COMMITTED:
                assert sorted(found) == sorted(
                    [(p.payer.ref, -p.amount_minor), (p.payee.ref, p.amount_minor)]
                ), p
            else:
                assert found == [], p
        committed_ids = {p.transfer_id for p in result.payments if p.outcome is Outcome.COMMITTED}
        assert set(lines_after) - set(lines_before) == committed_ids  # nothing unexplained

        saved = json.loads((tmp_path / "out" / "results.json").read_text())
        assert saved["audit"]["ok"] is True
        assert saved["throughput"]["committed_per_s"] > 0
        assert set(saved["gateways"]) == {"gw-1", "gw-2"}
        assert all(saved["gateways"][g]["answers"] > 0 for g in ("gw-1", "gw-2"))
        assert {"bank-alpha", "gateway-gw-1", "loadgen"} <= set(saved["processes"])
        for name in saved["plots"]:
            assert (tmp_path / "out" / name).stat().st_size > 1000

        # The open loop, one-phase payments included, through the command line
        # against the running cluster (the `--balancer --certs` way in).
        await _open_loop_through_the_cli(target, tmp_path / "cli")


async def _open_loop_through_the_cli(target: Target, out: Path) -> None:
    certs = target.client_certs.parent
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "strife-loadgen"),
        "--balancer",
        target.balancer,
        "--certs",
        str(certs),
        "--customers",
        ",".join(c.username for c in target.customers[:12]),
        "--clients",
        "6",
        "--rate",
        "40",
        "--duration",
        "1.5",
        "--mix",
        "any",
        "--out",
        str(out),
        "--no-plots",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    results = json.loads(stdout)
    assert results["audit"]["ok"] is True
    assert results["config"]["rate_per_s"] == 40
    assert results["payments"]["issued"] == 60  # 1.5 s at 40/s, due times 0 .. 1.475 s
    assert results["outcomes"].get("COMMITTED", 0) >= 50
