"""`strife bft generals`: the trace, the votes, the verdict and the exit status."""

from __future__ import annotations

import re

from click.testing import CliRunner

from strife.bft.cli import bft
from strife.bft.generals_cli import EXIT_VIOLATED, generals


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(generals, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_seven_generals_two_traitors_print_three_rounds_votes_and_both_verdicts() -> None:
    code, out = invoke("--n", "7", "--traitors", "2", "--seed", "4")
    assert code == 0, out
    assert "OM(2) with n=7" in out
    assert "bound: n=7 > 3m=6, 2 traitors <= m=2" in out
    assert "messages: 6 + 30 + 120 = 156 in 3 rounds" in out
    for k, count in ((1, 6), (2, 30), (3, 120)):
        assert f"round {k}: {count} messages" in out
    assert "round 4" not in out
    # Round 1 is one line from the commander; round 3 a line per path of two.
    assert re.search(r"^  C -> L1:A L2:A L3:A L4:A L5:A L6:A$", out, re.M)
    assert len(re.findall(r"^  C>L\d>L\d +->", out, re.M)) == 30
    votes = re.findall(r"^  (L\d) +C:\w.* -> (ATTACK|RETREAT) \(\d A, \d R\)$", out, re.M)
    assert len(votes) == 4
    assert {decision for _, decision in votes} == {"ATTACK"}
    assert "IC1 agreement: holds (all 4 loyal lieutenants decide ATTACK)" in out
    assert "IC2 validity:  holds" in out
    assert out.rstrip().endswith(
        "verdict: OK (n > 3m with at most m traitors: OM(2) guarantees both)"
    )


def test_a_traitorous_commander_leaves_validity_unasked() -> None:
    code, out = invoke("--n", "7", "--traitors", "2", "--traitor-commander", "--strategy", "split")
    assert code == 0, out
    assert "C is a traitor" in out
    assert "traitors: C (split)," in out
    assert "IC2 validity:  not asked (the commander is a traitor)" in out
    # Two-faced: the commander tells odd lieutenants ATTACK, even ones RETREAT.
    assert "C -> L1:A L2:R* L3:A L4:R* L5:A L6:R*" in out


def test_retreat_order_is_obeyed() -> None:
    code, out = invoke("--n", "4", "--traitors", "1", "--order", "retreat", "--strategy", "flip")
    assert code == 0, out
    assert "orders RETREAT" in out
    assert "decide RETREAT" in out


def test_three_generals_exit_1_and_blame_the_bound() -> None:
    code, out = invoke("--n", "3", "--traitors", "1", "--strategy", "flip")
    assert code == EXIT_VIOLATED == 1, out
    assert "bound: n=3 <= 3m=3" in out
    assert "IC2 validity:  VIOLATED (the loyal commander ordered ATTACK" in out
    assert out.rstrip().endswith(
        "verdict: VIOLATED, as the bound allows "
        "(n=3 <= 3m=3: no oral-messages algorithm can guarantee both against m traitors)"
    )


def test_six_generals_two_silent_traitors_exit_1() -> None:
    code, out = invoke("--n", "6", "--traitors", "2", "--strategy", "silent")
    assert code == 1, out
    assert "n=6 <= 3m=6" in out
    assert "L1:-" in out or "L2:-" in out
    assert "VIOLATED" in out.splitlines()[-1]


def test_six_generals_two_faced_lieutenants_break_agreement() -> None:
    code, out = invoke("--n", "6", "--traitors", "2", "--strategy", "split")
    assert code == 1, out
    assert "IC1 agreement: VIOLATED (2 decide ATTACK, 1 decides RETREAT)" in out
    assert "IC2 validity:  VIOLATED" in out


def test_more_traitors_than_m_is_named_as_the_cause() -> None:
    code, out = invoke("--n", "7", "--traitors", "3", "--m", "1", "--seed", "0")
    assert code == 1, out
    assert "bound: n=7 > 3m=3, 3 traitors > m=1" in out
    assert out.rstrip().endswith("(3 traitors > m=1: OM(1) tolerates at most 1)")


def test_big_rounds_print_one_line_per_sender() -> None:
    code, out = invoke("--n", "10", "--traitors", "3", "--seed", "2")
    assert code == 0, out
    assert "round 4: 3024 messages" in out
    senders = re.findall(r"^  L\d \(\w+\) +336 messages: .*; \d+ altered$", out, re.M)
    assert len(senders) == 9
    assert "C>L1>L2>L3" not in out
    code, full = invoke("--n", "10", "--traitors", "3", "--seed", "2", "--trace", "full")
    assert code == 0
    assert len(re.findall(r"^  C>L\d>L\d>L\d +->", full, re.M)) == 9 * 8 * 7


def test_bad_usage_exits_2() -> None:
    code, out = invoke("--n", "7", "--traitors", "0", "--traitor-commander")
    assert code == 2
    assert "at least one traitor" in out
    code, _ = invoke("--n", "7", "--strategy", "bribe")
    assert code == 2
    code, out = invoke("--n", "16", "--traitors", "5")
    assert code == 2
    assert "OM(5) among 16 generals is 3,999,675 messages" in out


def test_the_group_runs_generals() -> None:
    result = CliRunner().invoke(bft, ["generals", "--n", "4", "--traitors", "1"])
    assert result.exit_code == 0, result.output
    assert "verdict: OK" in result.output
