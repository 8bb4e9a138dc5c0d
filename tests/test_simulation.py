"""The deterministic simulator (docs/simulation.md): seeds pass, replay exactly,
and the checks catch what they claim to catch.

`SEEDS` is tuned so the seed sweep takes about a minute here; the benchmark
(benchmarks/bench_simulation.py) runs many more.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from strife.bank.ledger import Account, Ledger, Leg
from strife.gateway.coordinator import PaymentCoordinator
from strife.gateway.store import PaymentRecord, PaymentState
from strife.simulation import capturing_logs, run_range, run_seed
from strife.simulation.invariants import Checker
from strife.simulation.scenario import AccountSpec, Intent
from strife.simulation.trace import Trace

SEEDS = 1000
FIRST_SEED = 1


@pytest.fixture(autouse=True)
def logs_into_the_trace() -> Iterator[None]:
    with capturing_logs():
        yield


@pytest.mark.timeout(300)
def test_seeds_pass() -> None:
    summary = run_range(FIRST_SEED, SEEDS)
    assert summary.seeds == SEEDS
    assert not summary.failed, "\n\n".join(r.report() for r in summary.failed[:3])
    # The swarm turned every kind of fault on in some of them.
    assert set(summary.faults) == {
        "drop",
        "duplicate",
        "delay",
        "reorder",
        "gateway_crash",
        "bank_crash",
        "partition",
        "slow_disk",
        "client_cancel",
        "hedge",
        "lookup",
    }


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_many_more_seeds_pass() -> None:
    summary = run_range(FIRST_SEED + SEEDS, 4 * SEEDS)
    assert not summary.failed, "\n\n".join(r.report() for r in summary.failed[:3])


def test_a_seed_replays_exactly() -> None:
    first = run_seed(11, full_trace=True)
    second = run_seed(11, full_trace=True)
    assert first.events > 100
    assert first.full_trace == second.full_trace
    assert first.digest == second.digest
    assert (first.virtual_s, first.ticks) == (second.virtual_s, second.ticks)
    assert run_seed(12).digest != first.digest


def test_a_local_presumed_abort_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that aborts an undecided record on its own word (without the
    payer's bank) breaks 'ABORTED is a promise': the simulator must find it."""

    async def abort_alone(self: PaymentCoordinator, record: PaymentRecord) -> PaymentRecord:
        current = self.store.by_transfer(record.transfer_id)
        if current is None or current.state != PaymentState.PENDING:
            return current or record
        decided = current.decided(PaymentState.ABORTED, "COORDINATOR_RESTARTED", True)
        await self.store.decide(decided, settled=True)
        return decided

    monkeypatch.setattr(PaymentCoordinator, "_resolve", abort_alone)
    summary = run_range(1, 200, stop_after=1)
    assert summary.failed, f"no seed of {summary.seeds} caught it"
    broken = set(summary.failed[0].invariants)
    assert broken & {"abort-is-a-promise", "stored-outcome-matches-banks", "intent-at-most-once"}
    assert "replay: python -m strife.simulation --seed" in summary.failed[0].report()


# ------------------------------------------------------------- the checks alone


def _checker() -> tuple[Checker, dict[str, Ledger], Intent]:
    ledgers = {
        "alpha": Ledger([Account("a-1", "c-a", "USD", 1000)]),
        "beta": Ledger([Account("b-1", "c-b", "USD", 0)]),
    }
    now = [0.0]
    checker = Checker(lambda: ledgers, Trace(lambda: now[0]), lambda: now[0])
    checker.opening_total = checker.total_balances()
    payer = AccountSpec("alpha", "a-1", "c-a", 1000)
    payee = AccountSpec("beta", "b-1", "c-b", 0)
    return checker, ledgers, Intent(0, "client-1", payer, payee, 100)


def _pay(checker: Checker, ledgers: dict[str, Ledger], transfer_id: str) -> None:
    for bank, leg, account in (("alpha", Leg.DEBIT, "a-1"), ("beta", Leg.CREDIT, "b-1")):
        outcome = ledgers[bank].prepare(
            transfer_id=transfer_id,
            coordinator="gw-1",
            leg=leg,
            account_id=account,
            amount_minor=100,
            currency="USD",
            fingerprint=b"fp",
            counterparty="x",
        )
        checker.applied(bank, "prepare", outcome)
    for bank in ("alpha", "beta"):
        outcome = ledgers[bank].commit(transfer_id=transfer_id, coordinator="gw-1")
        checker.applied(bank, "commit", outcome)


def test_the_checker_sees_a_double_charge() -> None:
    checker, ledgers, intent = _checker()
    checker.new_key(intent, "key-1", "t-1")
    checker.new_key(intent, "key-2", "t-2")
    _pay(checker, ledgers, "t-1")
    assert not checker.violations  # money in transit between the legs is accounted for
    checker.answered(intent, "key-1", "t-1", "gw-2", "ABORTED", "COORDINATOR_RESTARTED", True)
    _pay(checker, ledgers, "t-2")
    checker.answered(intent, "key-2", "t-2", "gw-1", "COMMITTED", "", False)
    checker.final({}, [])
    found = [v.invariant for v in checker.violations]
    assert found[:2] == ["abort-is-a-promise", "intent-at-most-once"]
    assert "acknowledged-exactly-once" in found


def test_the_checker_sees_two_outcomes_for_one_key() -> None:
    checker, _, intent = _checker()
    checker.new_key(intent, "key-1", "t-1")
    checker.answered(intent, "key-1", "t-1", "gw-1", "ABORTED", "PREPARE_TIMEOUT", True)
    checker.answered(intent, "key-1", "t-1", "gw-2", "COMMITTED", "", False)
    assert [v.invariant for v in checker.violations] == ["one-outcome-per-key"]


def test_the_checker_sees_a_hold_left_and_half_a_payment() -> None:
    checker, ledgers, intent = _checker()
    checker.new_key(intent, "key-1", "t-1")
    outcome = ledgers["alpha"].prepare(
        transfer_id="t-1",
        coordinator="gw-1",
        leg=Leg.DEBIT,
        account_id="a-1",
        amount_minor=100,
        currency="USD",
        fingerprint=b"fp",
        counterparty="x",
    )
    checker.applied("alpha", "prepare", outcome)
    checker.applied(
        "alpha", "commit", ledgers["alpha"].commit(transfer_id="t-1", coordinator="gw-1")
    )
    outcome = ledgers["beta"].abort(transfer_id="t-1", coordinator="gw-1")
    checker.applied("beta", "abort", outcome)
    checker.final({}, ["gw-1: t-1 undecided"])
    found = [v.invariant for v in checker.violations]
    assert found[0] == "atomicity"
    assert "money-conserved" in found and "quiescence" in found
