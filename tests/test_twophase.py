"""The coordinator's rules, pure: which answers of the banks allow which outcome."""

from __future__ import annotations

import pytest

from strife.errors import Reason
from strife.gateway.twophase import (
    Arbiter,
    Ballot,
    Delivered,
    Verdict,
    Vote,
    after_arbiter_abort,
    after_delivery,
    after_votes,
)

YES = Ballot(Vote.YES)
COMMITTED = Ballot(Vote.COMMITTED)
HELD = Ballot(Vote.IN_PROGRESS, Reason.REQUEST_IN_PROGRESS)
SILENT = Ballot(Vote.TRANSIENT, Reason.PREPARE_TIMEOUT)
BROKE = Ballot(Vote.NO, Reason.INSUFFICIENT_FUNDS)
TOMBSTONED = Ballot(Vote.NO, Reason.TRANSFER_ABORTED)
REUSED = Ballot(Vote.REUSED, Reason.TRANSFER_ID_REUSED)
MISROUTED = Ballot(Vote.REFUSED, Reason.BANK_NOT_FOUND)


def test_every_yes_commits_and_delivers_to_every_leg() -> None:
    plan = after_votes([YES, YES], can_retry=True)
    assert (plan.verdict, plan.deliver) == (Verdict.COMMIT, (0, 1))


def test_a_leg_committed_elsewhere_means_committed_with_nothing_to_deliver() -> None:
    assert after_votes([COMMITTED, HELD], can_retry=True).verdict is Verdict.COMMITTED
    assert after_votes([SILENT, COMMITTED], can_retry=True).verdict is Verdict.COMMITTED


def test_a_recorded_refusal_aborts_and_names_the_business_reason() -> None:
    plan = after_votes([YES, BROKE], can_retry=True)
    assert (plan.verdict, plan.reason, plan.transient) == (
        Verdict.ABORT,
        Reason.INSUFFICIENT_FUNDS,
        False,
    )
    assert plan.deliver == (0,)  # the refusing leg is already ABORTED at its bank
    tombstoned = after_votes([TOMBSTONED, SILENT], can_retry=True)
    assert (tombstoned.verdict, tombstoned.transient) == (Verdict.ABORT, True)
    assert tombstoned.deliver == (1,)  # the silent leg may hold a prepare of ours


def test_silence_without_a_yes_is_never_an_abort() -> None:
    """Nothing of ours is known to be held and no bank refused: another replica
    may commit this transfer, so the coordinator must ask the arbiter."""
    for ballots in ([SILENT, SILENT], [SILENT, HELD], [MISROUTED, SILENT], [SILENT]):
        assert after_votes(ballots, can_retry=False).verdict is Verdict.UNDECIDED, ballots


def test_holding_a_yes_makes_our_abort_a_promise() -> None:
    plan = after_votes([YES, SILENT], can_retry=False)
    assert (plan.verdict, plan.transient, plan.deliver) == (Verdict.ABORT, True, (0, 1))
    plan = after_votes([SILENT, YES], can_retry=False)
    assert (plan.verdict, plan.deliver) == (Verdict.ABORT, (0, 1))


def test_the_debit_holder_owns_a_raced_transfer() -> None:
    owner = after_votes([YES, HELD], can_retry=True)
    assert (owner.verdict, owner.retry) == (Verdict.RETRY, (1,))
    loser = after_votes([HELD, YES], can_retry=True)
    assert (loser.verdict, loser.release) == (Verdict.LOST, (1,))
    # The owner whose deadline passed aborts what it holds, and only that.
    late = after_votes([YES, HELD], can_retry=False)
    assert (late.verdict, late.deliver, late.transient) == (Verdict.ABORT, (0,), True)


def test_a_key_reused_at_the_payers_bank_is_refused_and_withdrawn() -> None:
    plan = after_votes([REUSED, YES], can_retry=True)
    assert (plan.verdict, plan.reason, plan.release) == (
        Verdict.KEY_REUSED,
        Reason.IDEMPOTENCY_KEY_REUSED,
        (1,),
    )
    # Reused only at the payee's: the other request lets go of it.
    assert after_votes([YES, REUSED], can_retry=True).verdict is Verdict.RETRY


@pytest.mark.parametrize(
    ("acked", "transient", "reason", "expected"),
    [
        (True, False, "", Arbiter.ABORTED),
        (False, False, Reason.TRANSFER_COMMITTED, Arbiter.COMMITTED),
        (False, False, Reason.NOT_COORDINATOR, Arbiter.HELD),
        (False, True, Reason.BANK_UNAVAILABLE, Arbiter.UNKNOWN),
        (False, False, Reason.INTERNAL, Arbiter.UNKNOWN),
    ],
)
def test_the_arbiters_answer_is_the_outcome(
    acked: bool, transient: bool, reason: str, expected: Arbiter
) -> None:
    assert after_arbiter_abort(acked, transient, reason) is expected


def test_a_refused_decision_is_not_resent() -> None:
    assert after_delivery(True, True, False, "") is Delivered.DONE
    assert after_delivery(False, False, False, Reason.NOT_COORDINATOR) is Delivered.DONE
    assert after_delivery(True, False, True, Reason.BANK_UNAVAILABLE) is Delivered.RETRY
    assert after_delivery(False, False, False, Reason.TRANSFER_COMMITTED) is Delivered.REFUSED
    assert after_delivery(True, False, False, Reason.TRANSFER_ABORTED) is Delivered.REFUSED
