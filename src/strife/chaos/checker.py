"""The checks at quiescence, per intent across all of its keys.

Ledgers are read straight from the banks' SQLite files once the banks have
stopped: a key's transfer id is `transfer_id_for(payer's bank, customer, key)`,
and a key is *applied* when a bank posted entries under that id. Then:

- every intent applied at most once across all its keys, and exactly once
  if any answer (to the customer, in its outbox, from any gateway) said
  COMMITTED; a key that any answer called ABORTED is applied nowhere; an
  intent that FAILED or never reached the outbox is applied nowhere;
- an applied key moved the intent's amount from payer to payee, both legs;
- every key's answers agree across the gateways (never COMMITTED at one and
  ABORTED at another, nothing left PENDING);
- money is conserved (the sum of balances equals the opening balances), every
  balance equals the sum of its entries, none is negative, no hold, pending
  credit or PREPARED transfer is left;
- every outbox drained, every process stopped on SIGTERM within its grace.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strife.chaos.history import History
from strife.gateway.service import transfer_id_for

MAX_EXAMPLES = 20


@dataclass
class Ledger:
    balances: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # balance, held, pc
    entries: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # tid -> legs
    account_sums: dict[str, int] = field(default_factory=dict)
    opening: int = 0
    prepared: int = 0


def read_ledgers(databases: dict[str, Path]) -> dict[str, Ledger]:
    ledgers = {}
    for bank, path in databases.items():
        ledger = Ledger()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for account, balance, held, pending in conn.execute(
                "SELECT account_id, balance_minor, held_minor, pending_credit_minor FROM accounts"
            ):
                ledger.balances[account] = (balance, held, pending)
            for tid, account, amount in conn.execute(
                "SELECT transfer_id, account_id, amount_minor FROM entries"
            ):
                ledger.account_sums[account] = ledger.account_sums.get(account, 0) + amount
                if tid.startswith("opening:"):
                    ledger.opening += amount
                else:
                    ledger.entries.setdefault(tid, []).append((account, amount))
            (ledger.prepared,) = conn.execute(
                "SELECT COUNT(*) FROM transfers WHERE state = 'PREPARED'"
            ).fetchone()
        finally:
            conn.close()
        ledgers[bank] = ledger
    return ledgers


@dataclass
class Verdict:
    checks: dict[str, int] = field(default_factory=dict)  # check -> violations
    examples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, check: str, example: Any) -> None:
        self.checks[check] = self.checks.get(check, 0) + 1
        if len(self.examples[check]) < MAX_EXAMPLES:
            self.examples[check].append(example)

    def ok(self, *checks: str) -> None:
        for check in checks:
            self.checks.setdefault(check, 0)

    @property
    def passed(self) -> bool:
        return not any(self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "violations": {k: v for k, v in self.checks.items() if v},
            "checks": self.checks,
            "examples": {k: v for k, v in self.examples.items() if v},
            "figures": self.figures,
        }


CHECKS = (
    "applied_at_most_once",
    "committed_applied_exactly_once",
    "aborted_key_not_applied",
    "failed_intent_not_applied",
    "both_legs_with_the_amount",
    "replicas_agree",
    "nothing_pending_at_gateways",
    "answers_match_ledger",
    "money_conserved",
    "balances_match_entries",
    "no_negative_balance",
    "no_hold_left",
    "no_prepared_left",
    "outboxes_drained",
    "no_process_hung",
    "unknown_transfers",
)


def undecided(status: str) -> bool:
    """A gateway's answer that is not an outcome (nor a key it never saw)."""
    return status == "PENDING" or status.startswith("ERROR")


def check(
    history: History,
    ledgers: dict[str, Ledger],
    gateway_answers: dict[str, dict[str, str]],
    *,
    left_in_outboxes: int,
    exit_codes: dict[str, int | None],
) -> Verdict:
    verdict = Verdict()
    verdict.ok(*CHECKS)
    legs_by_tid: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for bank, ledger in ledgers.items():
        for tid, posted in ledger.entries.items():
            legs_by_tid[tid] += [(bank, account, amount) for account, amount in posted]
    known: set[str] = set()
    applied_intents = committed_intents = 0
    for intent in history.intents.values():
        applied = []
        committed_heard = intent.final_state == "COMMITTED"
        for key in intent.keys:
            tid = transfer_id_for(intent.bank, intent.customer_id, key)
            known.add(tid)
            heard = intent.answers.get(key, set())
            committed_heard |= "COMMITTED" in heard
            legs = legs_by_tid.get(tid, [])
            if legs:
                applied.append(key)
                want = sorted(
                    [
                        (intent.bank, intent.from_account, -intent.amount_minor),
                        (intent.to_bank, intent.to_account, intent.amount_minor),
                    ]
                )
                if sorted(legs) != want:
                    verdict.fail(
                        "both_legs_with_the_amount", {"intent": intent.id, "key": key, "legs": legs}
                    )
            if "ABORTED" in heard and legs:
                verdict.fail("aborted_key_not_applied", {"intent": intent.id, "key": key})
            if ("COMMITTED" in heard) != bool(legs) and heard & {"COMMITTED", "ABORTED"}:
                verdict.fail(
                    "answers_match_ledger",
                    {
                        "intent": intent.id,
                        "key": key,
                        "heard": sorted(heard),
                        "applied": bool(legs),
                    },
                )
            replicas = gateway_answers.get(key, {})
            finals = {s for s in replicas.values() if s in ("COMMITTED", "ABORTED")}
            if len(finals) > 1 or (finals and (heard & {"COMMITTED", "ABORTED"}) - finals):
                verdict.fail(
                    "replicas_agree",
                    {"intent": intent.id, "key": key, "gateways": replicas, "heard": sorted(heard)},
                )
            if any(map(undecided, replicas.values())):
                verdict.fail("nothing_pending_at_gateways", {"key": key, "gateways": replicas})
        applied_intents += bool(applied)
        committed_intents += committed_heard
        if len(applied) > 1:
            verdict.fail("applied_at_most_once", {"intent": intent.id, "keys": applied})
        if committed_heard and len(applied) != 1:
            verdict.fail(
                "committed_applied_exactly_once",
                {"intent": intent.id, "keys": intent.keys, "applied": applied},
            )
        if (intent.final_state in ("FAILED", "ABORTED") or not intent.queued) and applied:
            verdict.fail(
                "failed_intent_not_applied",
                {"intent": intent.id, "state": intent.final_state or "NOT_QUEUED"},
            )
    for tid in legs_by_tid.keys() - known:
        verdict.fail("unknown_transfers", {"transfer_id": tid, "legs": legs_by_tid[tid]})
    opening = total = 0
    for bank, ledger in ledgers.items():
        opening += ledger.opening
        if ledger.prepared:
            verdict.fail("no_prepared_left", {"bank": bank, "prepared": ledger.prepared})
        for account, (balance, held, pending) in ledger.balances.items():
            total += balance
            if balance != ledger.account_sums.get(account, 0):
                verdict.fail(
                    "balances_match_entries",
                    {
                        "bank": bank,
                        "account": account,
                        "balance": balance,
                        "entries": ledger.account_sums.get(account),
                    },
                )
            if balance - held < 0 or balance < 0:
                verdict.fail("no_negative_balance", {"account": account, "balance": balance})
            if held or pending:
                verdict.fail(
                    "no_hold_left", {"account": account, "held": held, "pending_credit": pending}
                )
    if total != opening:
        verdict.fail("money_conserved", {"opening": opening, "now": total})
    if left_in_outboxes:
        verdict.fail("outboxes_drained", {"left": left_in_outboxes})
    for name, code in exit_codes.items():
        if code is None:
            verdict.fail("no_process_hung", {"process": name})
    verdict.figures = {
        "intents": len(history.intents),
        "keys": sum(len(i.keys) for i in history.intents.values()),
        "resubmitted_intents": sum(len(i.keys) > 1 for i in history.intents.values()),
        "applied_intents": applied_intents,
        "committed_intents": committed_intents,
        "transfers_in_ledgers": len(legs_by_tid),
        "money_total_minor": total,
        "money_opening_minor": opening,
        "exit_codes": exit_codes,
    }
    return verdict
