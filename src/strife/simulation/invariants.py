"""The invariants, checked as the run goes and once more at quiescence.

As it goes (after every change a bank applies and every answer a client gets):

- money-conserved: the banks' balances plus the money between the two legs
  of a transfer (debited at the payer's bank, not yet credited at the
  payee's) always add up to the opening total;
- atomicity: no transfer id has one leg committed and another aborted;
- intent-at-most-once: no client intent moves money under two keys;
- abort-is-a-promise: once a replica answered ABORTED for a key, no leg of its
  transfer is ever committed, at any bank;
- commit-is-a-promise: once a replica answered COMMITTED, no leg is aborted;
- one-outcome-per-key: every replica that answers a key gives the same outcome;
- no-handler-crash: no handler and no ledger assertion fails (the ledger
  asserts no negative available balance, consistent holds, ... on every change);
- no-error-logged: the real code logs nothing at error level (it does so only
  for what its rules say cannot happen: a refused decision, a failed settler).

At quiescence (faults off, everything restarted and settled), also:

- no-hold-at-quiescence: no transfer is PREPARED, no hold or pending credit left;
- money-conserved exactly: the balances alone add up to the opening total;
- acknowledged-exactly-once: an intent answered COMMITTED moved money exactly
  once, under the key that was answered;
- stored-outcome-matches-banks: every decided record at every replica agrees
  with what the banks applied;
- quiescence: everything settles within the bound (no undecided record, no
  undelivered decision, no client still waiting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from strife.bank.ledger import Ledger, Outcome, Transfer, TransferState
from strife.gateway.store import PaymentRecord, PaymentState
from strife.simulation.scenario import Intent
from strife.simulation.trace import Trace


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    at: float

    def __str__(self) -> str:
        return f"{self.invariant} (t={self.at:.6f}): {self.detail}"


@dataclass
class _IntentLog:
    intent: Intent
    keys: dict[str, str] = field(default_factory=dict)  # transfer id -> key
    committed: dict[str, None] = field(default_factory=dict)  # transfer ids moving money
    acknowledged: str = ""  # the transfer id answered COMMITTED
    resolved: bool = False


class Checker:
    def __init__(
        self, ledgers: Callable[[], dict[str, Ledger]], trace: Trace, clock: Callable[[], float]
    ) -> None:
        self._ledgers = ledgers
        self._trace = trace
        self._clock = clock
        self.opening_total = 0  # set once the banks are open
        self._in_transit = 0
        self._intents: dict[int, _IntentLog] = {}
        self._by_transfer: dict[str, _IntentLog] = {}
        self._answers: dict[str, dict[str, str]] = {}  # transfer id -> replica -> outcome
        self._aborted: dict[str, str] = {}  # transfer id -> replica that answered ABORTED
        self._committed: dict[str, str] = {}  # transfer id -> replica that answered COMMITTED
        self._seen: set[tuple[str, str]] = set()
        self.violations: list[Violation] = []
        self.leading: list[str] = []  # the trace's last events up to the first violation

    # ---------------------------------------------------------------- reports

    def violation(self, invariant: str, detail: str, about: str = "") -> None:
        """Record a broken invariant (once per invariant and transfer id)."""
        if about:
            if (invariant, about) in self._seen:
                return
            self._seen.add((invariant, about))
        found = Violation(invariant, detail, self._clock())
        self.violations.append(found)
        self._trace("CHECK", f"VIOLATION {found}")
        if len(self.violations) == 1:
            self.leading = list(self._trace.last)

    def new_key(self, intent: Intent, key: str, transfer_id: str) -> None:
        log = self._intents.setdefault(intent.intent_id, _IntentLog(intent))
        log.keys[transfer_id] = key
        self._by_transfer[transfer_id] = log

    def resolved(self, intent: Intent) -> None:
        self._intents[intent.intent_id].resolved = True

    def refused(self, intent: Intent, key: str, replica: str, what: str) -> None:
        self.violation(
            "unexpected-answer",
            f"{replica} answered {what} for intent {intent.intent_id} key {key}",
        )

    def unexpected(self, where: str, error: BaseException) -> None:
        self.violation("no-handler-crash", f"{where} raised {error!r}")

    def logged_error(self, line: str) -> None:
        self.violation("no-error-logged", line, line)

    def broken(self, bank: str, error: BaseException) -> None:
        self.violation("no-handler-crash", f"ledger assertion at {bank}: {error!r}")

    # ------------------------------------------------------------ as it goes

    def answered(
        self,
        intent: Intent,
        key: str,
        transfer_id: str,
        replica: str,
        status: str,
        reason: str,
        transient: bool,
    ) -> None:
        if status not in ("COMMITTED", "ABORTED"):
            self.violation("unexpected-answer", f"{replica} answered {status} for key {key}")
            return
        answers = self._answers.setdefault(transfer_id, {})
        others = {r: s for r, s in answers.items() if s != status}
        if others:
            self.violation(
                "one-outcome-per-key",
                f"key {key} (transfer {transfer_id}): {replica} answered {status},"
                f" earlier {others}",
                transfer_id,
            )
        answers.setdefault(replica, status)
        legs = self.legs(transfer_id)
        if status == "ABORTED":
            self._aborted.setdefault(transfer_id, replica)
            committed = [bank for bank, t in legs if t.state == TransferState.COMMITTED]
            if committed:
                self.violation(
                    "abort-is-a-promise",
                    f"{replica} answered ABORTED ({reason}{', transient' if transient else ''})"
                    f" for key {key} of intent {intent.intent_id}, but transfer {transfer_id}"
                    f" is committed at {committed}",
                    transfer_id,
                )
        else:
            self._committed.setdefault(transfer_id, replica)
            log = self._intents[intent.intent_id]
            log.acknowledged = log.acknowledged or transfer_id
            aborted = [bank for bank, t in legs if t.state == TransferState.ABORTED]
            if aborted:
                self.violation(
                    "commit-is-a-promise",
                    f"{replica} answered COMMITTED for key {key}, but transfer {transfer_id}"
                    f" is aborted at {aborted}",
                    transfer_id,
                )

    def applied(self, bank: str, operation: str, outcome: Outcome) -> None:
        """After every change a bank applied (durably)."""
        transfer = outcome.transfer
        transfer_id = transfer.transfer_id
        self._trace(
            bank,
            f"{operation} {transfer_id[:8]} -> {transfer.state}"
            f"{' (replay)' if outcome.replayed else ''}",
        )
        if outcome.replayed:
            return
        for entry in outcome.changes.entries:
            if not transfer.one_phase:
                self._in_transit -= entry.amount_minor
        total = self.total_balances() + self._in_transit
        if total != self.opening_total:
            self.violation(
                "money-conserved",
                f"balances + in transit = {total}, opened with {self.opening_total}",
                "money",
            )
        legs = self.legs(transfer_id)
        states = {t.state for _, t in legs}
        if TransferState.COMMITTED in states and TransferState.ABORTED in states:
            self.violation(
                "atomicity",
                f"transfer {transfer_id}: {[(b, str(t.state)) for b, t in legs]}",
                transfer_id,
            )
        if transfer.state == TransferState.COMMITTED:
            self._on_commit(bank, transfer)
        elif transfer.state == TransferState.ABORTED and transfer_id in self._committed:
            self.violation(
                "commit-is-a-promise",
                f"{self._committed[transfer_id]} answered COMMITTED for transfer {transfer_id},"
                f" but {bank} aborted it",
                transfer_id,
            )

    def _on_commit(self, bank: str, transfer: Transfer) -> None:
        transfer_id = transfer.transfer_id
        if transfer_id in self._aborted:
            self.violation(
                "abort-is-a-promise",
                f"{self._aborted[transfer_id]} answered ABORTED for transfer {transfer_id},"
                f" but {bank} committed it",
                transfer_id,
            )
        log = self._by_transfer.get(transfer_id)
        if log is None:
            self.violation("intent-at-most-once", f"{bank} committed unknown {transfer_id}")
            return
        log.committed[transfer_id] = None
        if len(log.committed) > 1:
            intent = log.intent
            self.violation(
                "intent-at-most-once",
                f"intent {intent.intent_id} ({intent.client} pays {intent.amount_minor} from"
                f" {intent.payer.bank}/{intent.payer.account_id} to"
                f" {intent.payee.bank}/{intent.payee.account_id}) moved money under"
                f" {len(log.committed)} keys: "
                + ", ".join(f"{log.keys[t]} ({t[:8]})" for t in log.committed),
                f"intent {intent.intent_id}",
            )

    # -------------------------------------------------------------- helpers

    def legs(self, transfer_id: str) -> list[tuple[str, Transfer]]:
        found = []
        for bank, ledger in self._ledgers().items():
            transfer = ledger.transfers.get(transfer_id)
            if transfer is not None:
                found.append((bank, transfer))
        return found

    def total_balances(self) -> int:
        return sum(
            account.balance_minor
            for ledger in self._ledgers().values()
            for account in ledger.accounts.values()
        )

    # --------------------------------------------------------- at quiescence

    def final(self, stored: dict[str, Iterable[PaymentRecord]], pending: list[str]) -> None:
        """The end-state checks; `stored` is every replica's durable records,
        `pending` what has not settled (empty when the run reached quiescence)."""
        for bank, ledger in self._ledgers().items():
            try:
                ledger.check_invariants()
            except AssertionError as exc:
                self.broken(bank, exc)
            for account in ledger.accounts.values():
                if account.held_minor or account.pending_credit_minor:
                    self.violation(
                        "no-hold-at-quiescence",
                        f"{bank}/{account.account_id} holds {account.held_minor},"
                        f" pending credit {account.pending_credit_minor}",
                        f"{bank}/{account.account_id}",
                    )
            for transfer in ledger.transfers.values():
                if transfer.transfer_id not in self._by_transfer:
                    self.violation(
                        "intent-at-most-once",
                        f"{bank} knows {transfer.transfer_id}, no client's key",
                        transfer.transfer_id,
                    )
        if self.total_balances() != self.opening_total:
            self.violation(
                "money-conserved",
                f"balances add up to {self.total_balances()}, opened with {self.opening_total}",
                "money-final",
            )
        for transfer_id in self._by_transfer:
            legs = self.legs(transfer_id)
            committed = [b for b, t in legs if t.state == TransferState.COMMITTED]
            two_phase = any(not t.one_phase for _, t in legs)
            if two_phase and len(committed) == 1:
                self.violation(
                    "atomicity",
                    f"transfer {transfer_id} committed at {committed} only:"
                    f" {[(b, str(t.state)) for b, t in legs]}",
                    transfer_id,
                )
        for log in self._intents.values():
            if log.acknowledged and list(log.committed) != [log.acknowledged]:
                self.violation(
                    "acknowledged-exactly-once",
                    f"intent {log.intent.intent_id} answered COMMITTED for"
                    f" {log.keys[log.acknowledged]}; money moved under"
                    f" {[log.keys[t] for t in log.committed]}",
                    f"intent {log.intent.intent_id}",
                )
        for transfer_id, replica in self._aborted.items():
            if any(t.state == TransferState.COMMITTED for _, t in self.legs(transfer_id)):
                self.violation(
                    "abort-is-a-promise",
                    f"{replica} answered ABORTED for {transfer_id}, committed at the banks",
                    transfer_id,
                )
        self._check_stored(stored)
        if pending:
            self.violation("quiescence", "; ".join(pending[:6]) + (" ..." if pending[6:] else ""))

    def _check_stored(self, stored: dict[str, Iterable[PaymentRecord]]) -> None:
        decided: dict[str, dict[str, str]] = {}
        for replica, records in stored.items():
            for record in records:
                if record.state == PaymentState.PENDING:
                    continue
                decided.setdefault(record.transfer_id, {})[replica] = str(record.state)
                legs = self.legs(record.transfer_id)
                committed = [b for b, t in legs if t.state == TransferState.COMMITTED]
                if (record.state == PaymentState.COMMITTED) != bool(committed):
                    self.violation(
                        "stored-outcome-matches-banks",
                        f"{replica} stores {record.state} ({record.abort_reason}) for"
                        f" {record.transfer_id}; the banks: {[(b, str(t.state)) for b, t in legs]}",
                        record.transfer_id,
                    )
        for transfer_id, states in decided.items():
            if len(set(states.values())) > 1:
                self.violation(
                    "one-outcome-per-key", f"stored for {transfer_id}: {states}", transfer_id
                )
