"""SM(m): signed orders cannot be altered, so any number of traitors up to m is survived."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from strife.bft.generals import (
    COMMANDER,
    Flip,
    Order,
    Scripted,
    Setup,
    Split,
    Strategy,
    plan,
    run,
    strategy_names,
)
from strife.bft.generals_cli import generals
from strife.bft.generals_signed import SignedOrder, key_of, run_signed, sign, verify

A, R = Order.ATTACK, Order.RETREAT


def public_keys(seed: int, n: int) -> dict[int, object]:
    return {g: key_of(seed, g).public_key() for g in range(n)}


def test_a_chain_verifies_and_any_change_to_it_does_not() -> None:
    keys = {g: key_of(0, g) for g in range(4)}
    public = {g: k.public_key() for g, k in keys.items()}
    chain = sign(keys[2], 2, sign(keys[1], 1, sign(keys[0], COMMANDER, None, A), A), A)
    assert chain.signers == (0, 1, 2) and verify(chain, public)
    assert not verify(SignedOrder(R, chain.signers, chain.signatures), public)
    assert not verify(SignedOrder(A, (0, 2, 1), chain.signatures), public)
    assert not verify(SignedOrder(A, chain.signers[:2], chain.signatures), public)
    assert not verify(SignedOrder(A, (0, 1, 1), chain.signatures), public)
    # A lieutenant cannot start a chain: the commander signs first.
    assert not verify(sign(keys[1], 1, None, A), public)
    # Another run's commander is not this run's.
    assert not verify(sign(key_of(1, 0), COMMANDER, None, A), public)


def test_three_generals_a_two_faced_commander_is_caught() -> None:
    """OM(1) cannot help three generals; with signatures both lieutenants see
    both orders and retreat together."""
    outcome = run_signed(Setup(n=3, m=1, order=A, traitors={COMMANDER: Split()}))
    assert outcome.seen == {1: {A, R}, 2: {A, R}}
    assert outcome.decisions == {1: R, 2: R}
    assert outcome.verdict().holds


def test_three_generals_a_lying_lieutenant_is_a_forger() -> None:
    setup = Setup(n=3, m=1, order=A, traitors={2: Flip()})
    assert not run(setup).verdict().holds  # oral messages: L1 is fooled
    outcome = run_signed(setup)
    forged = [msg for r in outcome.rounds for msg in r if not msg.valid]
    assert [(f.sender, f.receiver, f.order.value) for f in forged] == [(2, 1, R)]
    assert outcome.decisions == {1: A}
    assert outcome.verdict().holds


@pytest.mark.parametrize(("n", "m"), [(3, 1), (4, 2), (5, 3), (6, 2), (10, 3)])
@pytest.mark.parametrize("strategy", strategy_names())
@pytest.mark.parametrize("traitor_commander", [False, True])
def test_sm_holds_with_m_traitors_however_few_the_generals(
    n: int, m: int, strategy: str, traitor_commander: bool
) -> None:
    for seed in range(12 if n < 10 else 3):
        for order in (A, R):
            setup = plan(
                n,
                m,
                seed=seed,
                order=order,
                strategy=strategy,
                traitor_commander=traitor_commander,
            )
            verdict = run_signed(setup).verdict()
            assert verdict.guaranteed and verdict.agreement, seed
            assert verdict.validity is (None if traitor_commander else True), seed


def test_a_loyal_lieutenant_relays_each_order_once() -> None:
    n = 7
    outcome = run_signed(Setup(n=n, m=3, order=A, traitors={COMMANDER: Split()}))
    total = sum(len(r) for r in outcome.rounds)
    assert total <= (n - 1) + 2 * (n - 1) * (n - 2)
    for g in range(1, n):
        relayed = {msg.order.value for r in outcome.rounds[1:] for msg in r if msg.sender == g}
        sent = [msg for r in outcome.rounds[1:] for msg in r if msg.sender == g]
        assert len(sent) <= len(relayed) * (n - 2)


def test_more_traitors_than_m_split_sm_and_one_more_round_mends_it() -> None:
    """C signs RETREAT for its accomplice L3 alone, who shows it to L1 in the
    last round of SM(1): L1 sees two orders, L2 one."""
    traitors: dict[int, Strategy] = {
        COMMANDER: Scripted({((0,), 1): A, ((0,), 2): A, ((0,), 3): R}),
        3: Scripted({((0, 3), 1): R, ((0, 3), 2): None}),
    }
    one_round = run_signed(Setup(n=4, m=1, order=A, traitors=traitors))
    assert one_round.decisions == {1: R, 2: A}
    assert not one_round.verdict().agreement and not one_round.guaranteed
    # SM(2): L1 passes the RETREAT on to L2 in a third round.
    assert run_signed(Setup(n=4, m=2, order=A, traitors=traitors)).decisions == {1: R, 2: R}


def test_the_command_runs_sm_with_signed() -> None:
    result = CliRunner().invoke(
        generals, ["--n", "3", "--traitors", "1", "--strategy", "flip", "--signed"]
    )
    assert result.exit_code == 0, result.output
    assert "SM(1) with n=3, signed messages" in result.output
    assert "1 forged" in result.output
    assert "R! C>L1 -> L2" in result.output
    assert "L2   V={A} -> ATTACK" in result.output
    assert result.output.rstrip().endswith("SM(1) guarantees both, whatever n)")


def test_the_command_reports_sm_beyond_m_traitors() -> None:
    for seed in range(100):
        result = CliRunner().invoke(
            generals,
            [
                *("--n", "4", "--traitors", "2", "--m", "1", "--traitor-commander", "--signed"),
                *("--strategy", "random", "--seed", str(seed)),
            ],
        )
        if result.exit_code == 1:
            assert "(2 traitors > m=1: SM(1) tolerates 1)" in result.output
            return
        assert result.exit_code == 0, result.output
    pytest.fail("no seed found where two traitors beat SM(1)")


def test_signed_runs_only_in_memory() -> None:
    result = CliRunner().invoke(generals, ["--signed", "--transport", "grpc"])
    assert result.exit_code == 2
    assert "in memory only" in result.output
