"""The chaos run: a real cluster under kills, pauses, partitions and short
deadlines, checked per intent at quiescence; and the checker itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from strife.chaos import net
from strife.chaos.checker import Ledger, check
from strife.chaos.evidence import transfer_ids, write_evidence
from strife.chaos.history import FAIL, OK, History
from strife.chaos.runner import ChaosConfig, run_chaos
from strife.chaos.workload import ask_until_decided
from strife.gateway.service import transfer_id_for


def _history_with_one_intent(keys: list[str], answer: str) -> History:
    history = History()
    intent = history.new_intent(
        customer="alpha-1",
        customer_id="c-alpha-1",
        bank="alpha",
        from_account="alpha-1-usd",
        to_bank="beta",
        to_account="beta-1-usd",
        amount_minor=100,
        via="outbox",
    )
    for key in keys:
        history.link_key(intent, key)
    history.record(OK if answer == "COMMITTED" else FAIL, intent, keys[-1], answer)
    intent.final_state = answer
    return history


def _ledgers(applied_keys: list[str]) -> dict[str, Ledger]:
    alpha, beta = Ledger(opening=1000), Ledger(opening=1000)
    moved = 100 * len(applied_keys)
    alpha.balances["alpha-1-usd"] = (1000 - moved, 0, 0)
    beta.balances["beta-1-usd"] = (1000 + moved, 0, 0)
    alpha.account_sums["alpha-1-usd"] = 1000 - moved
    beta.account_sums["beta-1-usd"] = 1000 + moved
    for key in applied_keys:
        tid = transfer_id_for("alpha", "c-alpha-1", key)
        alpha.entries[tid] = [("alpha-1-usd", -100)]
        beta.entries[tid] = [("beta-1-usd", 100)]
    return {"alpha": alpha, "beta": beta}


def test_the_checker_counts_per_intent_across_keys() -> None:
    """Two keys of one intent both applied: each key alone looks fine, the intent does not."""
    history = _history_with_one_intent(["k-1", "k-2"], "COMMITTED")
    good = check(history, _ledgers(["k-2"]), {}, left_in_outboxes=0, exit_codes={"b": 0})
    assert good.passed, good.as_dict()
    twice = check(history, _ledgers(["k-1", "k-2"]), {}, left_in_outboxes=0, exit_codes={})
    assert twice.checks["applied_at_most_once"] == 1
    assert twice.checks["committed_applied_exactly_once"] == 1


def test_the_checker_sees_lost_commits_aborted_keys_applied_and_disagreeing_replicas() -> None:
    committed = _history_with_one_intent(["k-1"], "COMMITTED")
    lost = check(committed, _ledgers([]), {}, left_in_outboxes=0, exit_codes={})
    assert lost.checks["committed_applied_exactly_once"] == 1
    aborted = _history_with_one_intent(["k-1"], "ABORTED")
    applied = check(aborted, _ledgers(["k-1"]), {}, left_in_outboxes=0, exit_codes={})
    assert applied.checks["aborted_key_not_applied"] == 1
    split = {"k-1": {"gw-1": "COMMITTED", "gw-2": "ABORTED"}}
    disagree = check(
        committed, _ledgers(["k-1"]), split, left_in_outboxes=1, exit_codes={"gateway-gw-1": None}
    )
    assert disagree.checks["replicas_agree"] == 1
    assert disagree.checks["outboxes_drained"] == 1
    assert disagree.checks["no_process_hung"] == 1


async def test_undecided_answers_are_asked_again_until_the_deadline() -> None:
    """A replica that settles late is seen settled; one that never settles is
    reported as it last answered, once the deadline has passed."""
    script = {
        "late": ["PENDING", "ERROR:UNAVAILABLE", "COMMITTED"],
        "never": ["PENDING"] * 1000,
        "at-once": ["ABORTED"],
        "unasked": [],
    }
    asked: dict[str, int] = {name: 0 for name in script}

    async def ask(name: str) -> str | None:
        asked[name] += 1
        answers = script[name]
        return answers[min(asked[name], len(answers)) - 1] if answers else None

    got = await ask_until_decided(list(script), ask, timeout_s=0.2, pause_s=0.01)
    assert got == {"late": "COMMITTED", "never": "PENDING", "at-once": "ABORTED"}
    assert asked["late"] == 3 and asked["at-once"] == 1 and asked["unasked"] == 1
    assert asked["never"] > 3


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_chaos_run_with_partitions_passes_its_checker(tmp_path: Path) -> None:
    """35 s of load: 30 customers, 24 faults of every kind (partitions in namespaces, full disks
    on tmpfs)."""
    if (why := net.unavailable_reason()) is not None:
        pytest.skip(f"partitions need network namespaces: {why}")
    config = ChaosConfig(
        out=tmp_path / "chaos",
        customers=30,
        duration_s=35.0,
        rate_per_s=40.0,
        faults=24,
        netns=True,
        drain_timeout_s=30.0,
        seed=7,
    )
    report = asyncio.run(run_chaos(config, say=lambda _line: None))
    assert report["faults"]["count"] >= 20
    assert report["faults"]["by_kind"].get("partition", 0) >= 2
    assert set(report["faults"]["by_kind"]) == {
        "kill",
        "pause",
        "partition",
        "disk",
        "deadline",
        "cancel",
    }
    assert report["payments"]["intents"] >= 300
    assert net.leftovers(report["network_tag"]) == []
    assert Path(report["files"]["plot"]).stat().st_size > 0
    assert report["checker"]["violations"] == {}, report["checker"]
    assert report["passed"]


def test_a_failed_check_leaves_the_log_lines_about_its_examples(tmp_path: Path) -> None:
    history = _history_with_one_intent(["k-1", "k-2"], "COMMITTED")
    tid = transfer_id_for("alpha", "c-alpha-1", "k-1")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "gateway-gw-1.log").write_text(
        f'{{"event": "prepared", "transfer_id": "{tid}"}}\n'
        '{"event": "unrelated", "transfer_id": "t-other"}\n'
        f'{{"event": "decision_not_delivered", "transfer_id": "{tid}"}}\n'
    )
    (logs / "bank-alpha.log").write_text(f'{{"event": "abort", "transfer_id": "{tid}"}}\n')
    examples: dict[str, list[Any]] = {
        "nothing_pending_at_gateways": [{"key": "k-1", "gateways": {"gw-1": "PENDING"}}],
        "unknown_transfers": [{"transfer_id": "t-lost", "legs": []}],
        "money_conserved": [{"bank": "alpha"}],
    }
    named = transfer_ids(history, examples)
    assert named == {"nothing_pending_at_gateways": [tid], "unknown_transfers": ["t-lost"]}
    text = write_evidence(tmp_path / "evidence.txt", logs, named).read_text()
    assert text.splitlines() == [
        f"== nothing_pending_at_gateways: transfer {tid}",
        f'   bank-alpha: {{"event": "abort", "transfer_id": "{tid}"}}',
        f'   gateway-gw-1: {{"event": "prepared", "transfer_id": "{tid}"}}',
        f'   gateway-gw-1: {{"event": "decision_not_delivered", "transfer_id": "{tid}"}}',
        "== unknown_transfers: transfer t-lost",
        "   (no log line mentions it)",
    ]
