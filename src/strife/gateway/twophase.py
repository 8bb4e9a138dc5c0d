"""The coordinator's rules as pure functions: what the banks said in, what to do out.

Kept apart from `coordinator` (which does the I/O) so every rule can be
tested directly and driven by the simulator, like the bank's `ledger`.

The banks are the durable, unique record of a transfer id, so the outcome
rule reads them:

- **COMMITTED** when this coordinator logged COMMIT after every leg voted YES
  to it, or when any bank reports a leg of the id COMMITTED (another replica
  committed it).
- **ABORTED is a promise** that no leg was or will ever be applied. It may be
  given only when (a) some leg is ABORTED *at its bank* (a recorded refusal,
  an acknowledged Abort or its tombstone: that leg can never vote YES, and a
  commit needs every leg's YES), or (b) this coordinator holds a leg's YES in
  this attempt and logs ABORT (only the coordinator named in a PREPARED
  record may commit it, and it decided not to).
- Otherwise the payment is **undecided** and the caller hears "in progress".

Legs are ordered: the payer's bank (the debit) first. The debit is the
transfer's *arbiter* when replicas race: whoever holds its YES owns the
transfer, the others withdraw their votes (a release, which leaves no
tombstone) so the owner can prepare the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from strife.errors import Reason

# Reasons after which a new attempt under a new key may well succeed.
TRANSIENT_REASONS = frozenset(
    {
        Reason.BANK_UNAVAILABLE,
        Reason.PREPARE_TIMEOUT,
        Reason.TRANSFER_ABORTED,
        Reason.COORDINATOR_RESTARTED,
    }
)
# Refusals a bank records on the transfer id (the leg is ABORTED there for good).
RECORDED_REFUSALS = frozenset(
    {
        Reason.INSUFFICIENT_FUNDS,
        Reason.ACCOUNT_NOT_FOUND,
        Reason.CURRENCY_MISMATCH,
        Reason.AMOUNT_OVERFLOW,
        Reason.TRANSFER_ABORTED,
        Reason.NOT_ACCOUNT_OWNER,
    }
)


class Vote(Enum):
    YES = "YES"  # PREPARED under this coordinator
    COMMITTED = "COMMITTED"  # the id is already committed there
    NO = "NO"  # refused and recorded ABORTED at the bank
    REFUSED = "REFUSED"  # refused without a record (bad request, misrouted)
    IN_PROGRESS = "IN_PROGRESS"  # PREPARED under another coordinator
    REUSED = "REUSED"  # the bank knows the id for a different request
    TRANSIENT = "TRANSIENT"  # no answer: unknown whether it arrived


@dataclass(frozen=True, slots=True)
class Ballot:
    vote: Vote
    reason: str = ""


class Verdict(Enum):
    COMMIT = "COMMIT"  # log COMMIT, then deliver it to `deliver`
    COMMITTED = "COMMITTED"  # committed by another replica; nothing to deliver
    ABORT = "ABORT"  # log ABORT (a promise), then deliver it to `deliver`
    RETRY = "RETRY"  # prepare `retry` again: another replica is letting go
    LOST = "LOST"  # another replica owns the transfer: withdraw `release`
    KEY_REUSED = "KEY_REUSED"  # the id belongs to another request: withdraw `release`
    UNDECIDED = "UNDECIDED"  # ask the arbiter (an Abort to the debit's bank)


@dataclass(frozen=True, slots=True)
class Plan:
    verdict: Verdict
    reason: str = ""
    transient: bool = False
    deliver: tuple[int, ...] = ()  # legs to send the decision to
    release: tuple[int, ...] = ()  # legs whose YES to withdraw
    retry: tuple[int, ...] = ()  # legs to prepare again


def is_transient(reason: str) -> bool:
    return reason in TRANSIENT_REASONS


def after_votes(ballots: Sequence[Ballot], *, can_retry: bool) -> Plan:
    """Decide from one attempt's prepare answers (debit first)."""
    assert ballots, "a transfer has at least one leg"
    plan = _after_votes(ballots, can_retry=can_retry)
    _check_plan(ballots, plan)
    return plan


def _check_plan(ballots: Sequence[Ballot], plan: Plan) -> None:
    """The rules' invariants, checked on every plan (our bugs, not bad input)."""
    votes = [b.vote for b in ballots]
    if plan.verdict is Verdict.COMMIT:
        # Every leg voted YES to us, or the transfer is committed somewhere.
        assert all(v is Vote.YES for v in votes) or Vote.COMMITTED in votes, (votes, plan)
        assert all(votes[i] is Vote.YES for i in plan.deliver), (votes, plan)
    if plan.verdict is Verdict.ABORT:
        # A promise: a leg refused at its bank (a), or a YES of ours (b).
        assert Vote.NO in votes or Vote.YES in votes, (votes, plan)
        assert Vote.COMMITTED not in votes, (votes, plan)
        # Never tombstone a leg that refused (already ABORTED) or that another
        # attempt holds (theirs to release).
        assert all(votes[i] in (Vote.YES, Vote.TRANSIENT) for i in plan.deliver), (votes, plan)
    # We withdraw only what may be ours and undecided.
    assert all(votes[i] in (Vote.YES, Vote.TRANSIENT) for i in plan.release), (votes, plan)
    if plan.verdict is Verdict.RETRY:
        assert votes[0] is Vote.YES and plan.retry, (votes, plan)


def _after_votes(ballots: Sequence[Ballot], *, can_retry: bool) -> Plan:
    votes = [b.vote for b in ballots]
    yes = _legs(ballots, Vote.YES)
    # Withdrawing is safe for any leg we may hold undecided: it removes only a
    # PREPARED record of ours, and leaves an unknown id unknown.
    ours = _legs(ballots, Vote.YES, Vote.TRANSIENT)
    if votes[0] is Vote.REUSED:
        return Plan(Verdict.KEY_REUSED, Reason.IDEMPOTENCY_KEY_REUSED, release=ours)
    if Vote.COMMITTED in votes:
        # Committed elsewhere. A YES of ours beside it can only come from a
        # clone acting under our name; committing it is the only consistent move.
        if yes:
            return Plan(Verdict.COMMIT, deliver=yes)
        return Plan(Verdict.COMMITTED)
    if Vote.NO in votes:
        refusals = [b for b in ballots if b.vote is Vote.NO]
        chosen = next((b for b in refusals if b.reason != Reason.TRANSFER_ABORTED), refusals[0])
        # Tombstone what may have arrived unanswered too: the transfer is dead.
        cleanup = _legs(ballots, Vote.YES, Vote.TRANSIENT)
        return Plan(Verdict.ABORT, chosen.reason, is_transient(chosen.reason), deliver=cleanup)
    if all(v is Vote.YES for v in votes):
        return Plan(Verdict.COMMIT, deliver=yes)
    if votes[0] is Vote.IN_PROGRESS:
        return Plan(Verdict.LOST, Reason.REQUEST_IN_PROGRESS, release=ours)
    # Held by another attempt (another replica, or another request under this
    # key): we hold the debit, so the transfer is ours and they let go.
    waiting = _legs(ballots, Vote.IN_PROGRESS, Vote.REUSED)
    if waiting and votes[0] is Vote.YES and can_retry:
        return Plan(Verdict.RETRY, retry=waiting)
    if yes:
        # We hold a YES, so our ABORT is a promise (rule b). Legs another
        # coordinator holds are theirs to release.
        reason = _why_not(ballots)
        return Plan(
            Verdict.ABORT,
            reason,
            is_transient(reason),
            deliver=_legs(ballots, Vote.YES, Vote.TRANSIENT),
        )
    return Plan(Verdict.UNDECIDED, _why_not(ballots), is_transient(_why_not(ballots)))


class Arbiter(Enum):
    ABORTED = "ABORTED"  # the debit is ABORTED at its bank: the promise holds
    COMMITTED = "COMMITTED"  # the bank says the id committed
    HELD = "HELD"  # another coordinator holds the debit PREPARED
    UNKNOWN = "UNKNOWN"  # no answer; ask again later


def after_arbiter_abort(acked: bool, transient: bool, reason: str) -> Arbiter:
    """Read the answer to an Abort sent to the debit's bank for an undecided
    payment (the establishing step of presumed abort)."""
    if acked:
        return Arbiter.ABORTED
    if reason == Reason.TRANSFER_COMMITTED:
        return Arbiter.COMMITTED
    if reason == Reason.NOT_COORDINATOR:
        return Arbiter.HELD
    if transient:
        return Arbiter.UNKNOWN
    # Anything else (a bank that does not host the account any more, a bad
    # request) cannot be settled by asking again: still, never presume.
    return Arbiter.UNKNOWN


class Delivered(Enum):
    DONE = "DONE"  # the bank applied it, or it is not ours to apply
    RETRY = "RETRY"  # no answer: send again later
    REFUSED = "REFUSED"  # the bank knows the id with the other outcome


def after_delivery(commit: bool, acked: bool, transient: bool, reason: str) -> Delivered:
    """Read a bank's answer to a COMMIT or ABORT. A refusal is final: resending
    a decision the bank refused would be refused forever."""
    if acked:
        return Delivered.DONE
    if not commit and reason == Reason.NOT_COORDINATOR:
        return Delivered.DONE  # another coordinator holds that leg; it releases it
    if transient:
        return Delivered.RETRY
    return Delivered.REFUSED


def _legs(ballots: Sequence[Ballot], *votes: Vote) -> tuple[int, ...]:
    return tuple(i for i, b in enumerate(ballots) if b.vote in votes)


def _why_not(ballots: Sequence[Ballot]) -> str:
    """The reason a transfer could not commit: a refusal explains it best."""
    for wanted in (Vote.REFUSED, Vote.TRANSIENT):
        for ballot in ballots:
            if ballot.vote is wanted:
                return ballot.reason or Reason.PREPARE_TIMEOUT
    return Reason.PREPARE_TIMEOUT  # a leg held elsewhere past the prepare deadline
