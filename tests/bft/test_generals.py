"""OM(m) in memory: the message tree, IC1 and IC2 within the bound, and their failure beyond it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strife.bft.generals import (
    COMMANDER,
    DEFAULT,
    LOYAL,
    MIXED,
    STRATEGIES,
    Arbitrary,
    Flip,
    Order,
    Path,
    Scripted,
    Setup,
    Silent,
    Split,
    Strategy,
    decide,
    expected_paths,
    majority,
    messages_in_round,
    plan,
    run,
    slots,
    strategy_names,
    total_messages,
)

A, R = Order.ATTACK, Order.RETREAT
VALUES: tuple[Order | None, ...] = (A, R, None)


def traitor_slots(n: int, m: int, traitor: int) -> list[tuple[Path, int]]:
    return [(path, r) for path, r in slots(n, m) if path[-1] == traitor]


def every_behaviour(n: int, m: int, traitor: int) -> Iterator[Scripted]:
    """Every way `traitor` can fill its message slots: each value, or silence."""
    mine = traitor_slots(n, m, traitor)
    for values in itertools.product(VALUES, repeat=len(mine)):
        yield Scripted(dict(zip(mine, values, strict=True)))


# --------------------------------------------------------------------- the tree


@pytest.mark.parametrize(("n", "m"), [(4, 1), (5, 1), (7, 2), (10, 3), (6, 4)])
def test_each_round_carries_the_formula_s_count_of_messages(n: int, m: int) -> None:
    outcome = run(plan(n, m, m=m, seed=1))
    assert [len(r) for r in outcome.rounds] == [messages_in_round(n, k) for k in range(1, m + 2)]
    assert sum(len(r) for r in outcome.rounds) == total_messages(n, m)
    assert all(msg.round == k for k, r in enumerate(outcome.rounds, 1) for msg in r)
    # Every path is distinct generals starting with the commander, never sent to one on it.
    for msg in (msg for r in outcome.rounds for msg in r):
        assert msg.path[0] == COMMANDER
        assert len(set(msg.path)) == len(msg.path)
        assert msg.receiver not in msg.path


def test_the_counts_are_the_falling_products_of_n_minus_one() -> None:
    assert [messages_in_round(7, k) for k in (1, 2, 3)] == [6, 6 * 5, 6 * 5 * 4]
    assert total_messages(7, 2) == 156
    assert total_messages(10, 3) == 9 + 72 + 504 + 3024
    assert messages_in_round(4, 4) == 0


def test_a_lieutenant_expects_every_path_it_is_not_on() -> None:
    n, m = 7, 2
    for me in range(1, n):
        heard = {path for path, r in slots(n, m) if r == me}
        expected = {p for k in range(1, m + 2) for p in expected_paths(n, m, me, k)}
        assert heard == expected
        assert len(expected_paths(n, m, me, 3)) == 5 * 4


def test_majority_breaks_ties_and_empty_votes_towards_retreat() -> None:
    assert majority([A, A, R]) is A
    assert majority([A, R, R]) is R
    assert majority([A, R]) is DEFAULT is R
    assert majority([]) is R


def test_a_lieutenant_that_hears_nothing_retreats() -> None:
    vote = decide(7, 2, 3, {})
    assert vote.decision is R
    assert vote.direct is R
    assert set(vote.relayed) == {1, 2, 4, 5, 6}


def test_a_silent_commander_is_heard_as_retreat_by_everyone() -> None:
    outcome = run(Setup(n=7, m=2, order=A, traitors={COMMANDER: Silent()}))
    assert set(outcome.decisions.values()) == {R}
    assert outcome.sent == total_messages(7, 2) - 6
    verdict = outcome.verdict()
    assert verdict.agreement and verdict.validity is None and verdict.holds


# --------------------------------------------------------------------- strategies


def test_strategies_lie_as_described() -> None:
    path: Path = (COMMANDER, 2)
    assert Flip().send(3, path, 4, A, 0) is R
    assert Split().send(3, path, 4, A, 0) is R
    assert Split().send(3, path, 5, R, 0) is A
    assert Silent().send(3, path, 4, A, 0) is None
    assert LOYAL.send(3, path, 4, A, 0) is A
    chosen = {Arbitrary().send(3, path, r, A, seed) for r in range(1, 7) for seed in range(20)}
    assert chosen == {A, R, None}


def test_a_random_traitor_is_reproducible_from_its_seed() -> None:
    first = run(plan(10, 3, seed=7, strategy="random"))
    again = run(plan(10, 3, seed=7, strategy="random"))
    other = run(plan(10, 3, seed=8, strategy="random"))
    assert first.rounds == again.rounds
    assert first.rounds != other.rounds


def test_plan_picks_traitors_from_the_seed() -> None:
    setup = plan(7, 2, seed=3, traitor_commander=True, strategy="flip")
    assert len(setup.traitors) == 2 and COMMANDER in setup.traitors
    assert all(s.name == "flip" for s in setup.traitors.values())
    assert setup.m == 2 and setup.guaranteed
    assert plan(7, 2, seed=3, traitor_commander=True).traitors.keys() == setup.traitors.keys()
    assert not plan(6, 2).guaranteed
    assert not plan(7, 3, m=2).guaranteed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 7, "traitors": 8}, "traitors must be between"),
        ({"n": 7, "traitors": 0, "traitor_commander": True}, "at least one traitor"),
        ({"n": 4, "traitors": 4}, "include the commander"),
        ({"n": 7, "traitors": 1, "strategy": "bribe"}, "unknown strategy"),
        ({"n": 1, "traitors": 0}, "n must be at least 2"),
    ],
)
def test_plan_refuses_what_is_not_a_run(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------- n > 3m, at most m traitors


@pytest.mark.parametrize("n", [4, 5])
@pytest.mark.parametrize("order", [A, R])
def test_om1_holds_for_every_behaviour_of_one_traitor(n: int, order: Order) -> None:
    """Exhaustive: each general in turn is the traitor and fills every one of
    its message slots with each value or with silence."""
    runs = 0
    for traitor in range(n):
        for behaviour in every_behaviour(n, 1, traitor):
            outcome = run(Setup(n=n, m=1, order=order, traitors={traitor: behaviour}))
            verdict = outcome.verdict()
            assert verdict.holds, (traitor, behaviour.table, outcome.decisions)
            runs += 1
    assert runs == 3 ** (n - 1) + (n - 1) * 3 ** (n - 2)


def test_om2_holds_for_every_order_a_traitorous_commander_can_give() -> None:
    for behaviour in every_behaviour(7, 2, COMMANDER):
        for order in (A, R):
            verdict = run(Setup(n=7, m=2, order=order, traitors={COMMANDER: behaviour})).verdict()
            assert verdict.agreement, behaviour.table


@pytest.mark.parametrize(("n", "m"), [(7, 2), (10, 3)])
@pytest.mark.parametrize("strategy", strategy_names())
@pytest.mark.parametrize("traitor_commander", [False, True])
def test_seeded_traitors_never_break_the_bound(
    n: int, m: int, strategy: str, traitor_commander: bool
) -> None:
    for seed in range(40 if n < 10 else 10):
        for order in (A, R):
            setup = plan(
                n,
                m,
                seed=seed,
                order=order,
                strategy=strategy,
                traitor_commander=traitor_commander,
            )
            assert setup.guaranteed
            outcome = run(setup)
            verdict = outcome.verdict()
            assert verdict.agreement, (seed, outcome.decisions)
            assert verdict.validity is (None if traitor_commander else True), seed


def _scripted_traitors(n: int, m: int) -> st.SearchStrategy[tuple[Order, dict[int, Strategy]]]:
    """Up to m traitors, each with an arbitrary value (or silence) in every slot."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[Order, dict[int, Strategy]]:
        order = draw(st.sampled_from([A, R]))
        traitors = draw(st.sets(st.integers(0, n - 1), max_size=m))
        table: dict[int, Strategy] = {}
        for t in sorted(traitors):
            mine = traitor_slots(n, m, t)
            values = draw(st.lists(st.sampled_from(VALUES), min_size=len(mine), max_size=len(mine)))
            table[t] = Scripted(dict(zip(mine, values, strict=True)))
        return order, table

    return build()


@settings(max_examples=300, deadline=None)
@given(_scripted_traitors(7, 2))
def test_om2_with_seven_generals_holds_whatever_two_traitors_say(
    drawn: tuple[Order, dict[int, Strategy]],
) -> None:
    order, traitors = drawn
    outcome = run(Setup(n=7, m=2, order=order, traitors=traitors))
    verdict = outcome.verdict()
    assert verdict.guaranteed and verdict.holds, outcome.decisions


# --------------------------------------------------------------------- n <= 3m: the checks catch it


def test_three_generals_one_traitorous_lieutenant_breaks_validity() -> None:
    """The paper's first picture: L1 cannot tell a loyal C and a lying L2 from
    a lying C and a loyal L2, and the tie goes to RETREAT."""
    outcome = run(Setup(n=3, m=1, order=A, traitors={2: Flip()}))
    assert outcome.decisions == {1: R}
    verdict = outcome.verdict()
    assert verdict.agreement and verdict.validity is False
    assert not verdict.holds and not verdict.guaranteed


def test_three_generals_a_traitorous_commander_cannot_split_om1() -> None:
    """With n = 3 only IC2 can be broken: each lieutenant takes the majority of
    the same two values, so ties fall the same way for both."""
    for behaviour in every_behaviour(3, 1, COMMANDER):
        assert run(Setup(n=3, m=1, order=A, traitors={COMMANDER: behaviour})).verdict().holds


def test_among_three_a_lying_lieutenant_defeats_attack_but_not_retreat() -> None:
    """A loyal lieutenant weighs two values; a tie is RETREAT, so one lie turns
    an ATTACK into RETREAT, but nothing turns a RETREAT into ATTACK."""
    for traitor in (1, 2):
        beaten = {
            order: [
                b.table
                for b in every_behaviour(3, 1, traitor)
                if not run(Setup(n=3, m=1, order=order, traitors={traitor: b})).verdict().holds
            ]
            for order in (A, R)
        }
        assert beaten[A] and not beaten[R], traitor


def test_six_generals_two_silent_lieutenants_break_om2() -> None:
    """n = 6 = 3m: two silent lieutenants make each loyal lieutenant's OM(1)
    about another loyal one a 2-2 tie, so the tie's RETREAT outvotes the order."""
    outcome = run(Setup(n=6, m=2, order=A, traitors={4: Silent(), 5: Silent()}))
    assert outcome.decisions == {1: R, 2: R, 3: R}
    for vote in outcome.votes.values():
        assert vote.direct is A
        assert all(v is R for v in vote.relayed.values())
    verdict = outcome.verdict()
    assert verdict.agreement and verdict.validity is False and not verdict.guaranteed


def test_six_generals_two_two_faced_lieutenants_split_the_loyal_ones() -> None:
    """n = 6 = 3m again: telling odd generals ATTACK and even ones RETREAT breaks
    IC1 as well as IC2."""
    outcome = run(Setup(n=6, m=2, order=A, traitors={2: Split(), 5: Split()}))
    assert outcome.decisions == {1: A, 3: A, 4: R}
    verdict = outcome.verdict()
    assert not verdict.agreement and verdict.validity is False


def test_a_traitorous_commander_and_a_lieutenant_need_om2_not_om1() -> None:
    """Six generals, a two-faced commander and L1: n > 3m for OM(1), but two
    traitors are one too many for it, while OM(2) holds (n - 1 = 5 > 3(m - 1))."""
    traitors: dict[int, Strategy] = {COMMANDER: Split(), 1: Split()}
    too_few = run(Setup(n=6, m=1, order=A, traitors=traitors))
    assert too_few.decisions == {2: R, 3: A, 4: R, 5: A}
    assert not too_few.verdict().agreement
    assert run(Setup(n=6, m=2, order=A, traitors=traitors)).verdict().agreement


def test_four_generals_two_traitors_beat_om1_and_the_checker_says_so() -> None:
    """Exhaustive over a traitorous commander and L3: some behaviour splits L1 and L2."""
    commander_slots = traitor_slots(4, 1, COMMANDER)
    l3_slots = traitor_slots(4, 1, 3)
    split = 0
    for c_values in itertools.product(VALUES, repeat=len(commander_slots)):
        for l_values in itertools.product(VALUES, repeat=len(l3_slots)):
            traitors: dict[int, Strategy] = {
                COMMANDER: Scripted(dict(zip(commander_slots, c_values, strict=True))),
                3: Scripted(dict(zip(l3_slots, l_values, strict=True))),
            }
            verdict = run(Setup(n=4, m=1, order=A, traitors=traitors)).verdict()
            split += not verdict.agreement
    assert split > 0


def test_every_named_strategy_is_listed() -> None:
    assert set(strategy_names()) == {*STRATEGIES, MIXED}
