"""OM(m) over gRPC with mutual TLS: same messages and decisions as in memory, and
a sender is who its certificate says, whatever its message claims."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from click.testing import CliRunner

from strife.bft.generals import COMMANDER, Order, Scripted, Setup, Silent, plan, run
from strife.bft.generals_cli import generals
from strife.bft.generals_net import (
    METHOD,
    ROLE,
    TRUST_DOMAIN,
    General,
    issue_identities,
    run_in_loop,
    run_processes,
)
from strife.security import certs
from strife.security.tls import TlsMaterial

# Only a general that says nothing for a whole round is waited for; the others
# close their rounds as soon as every batch is in.
PATIENT_S = 30.0


@pytest.mark.parametrize(
    "setup",
    [
        plan(4, 1, seed=1, strategy="flip"),
        plan(7, 2, seed=1, strategy="random"),
        plan(7, 2, seed=2, strategy="split", traitor_commander=True),
        plan(6, 2, seed=0, strategy="random"),
    ],
    ids=["n4-flip", "n7-random", "n7-split-commander", "n6-random"],
)
async def test_grpc_rounds_deliver_the_tree_computed_in_memory(setup: Setup) -> None:
    over_grpc = await run_in_loop(setup, round_timeout_s=PATIENT_S)
    in_memory = run(setup)
    assert over_grpc.rounds == in_memory.rounds
    assert over_grpc.votes == in_memory.votes
    assert over_grpc.verdict() == in_memory.verdict()


async def test_silent_generals_cost_a_round_timeout_each_and_read_as_retreat() -> None:
    setup = Setup(n=4, m=1, order=Order.ATTACK, traitors={3: Silent()})
    started = time.monotonic()
    # Long enough that a loyal batch is never late on a busy machine.
    outcome = await run_in_loop(setup, round_timeout_s=3.0)
    elapsed = time.monotonic() - started
    # Round 1 closes on the commander's batch; round 2 waits out L3.
    assert 3.0 <= elapsed < PATIENT_S
    assert outcome.rounds == run(setup).rounds
    assert all(msg.value is None for r in outcome.rounds for msg in r if msg.sender == 3)
    assert outcome.decisions == {1: Order.ATTACK, 2: Order.ATTACK}
    assert outcome.verdict().holds


async def test_six_generals_fail_over_grpc_as_they_do_in_memory() -> None:
    setup = Setup(n=6, m=2, order=Order.ATTACK, traitors={4: Silent(), 5: Silent()})
    # A late loyal value would only add a RETREAT: the outcome cannot change.
    outcome = await run_in_loop(setup, round_timeout_s=0.5)
    assert outcome.decisions == {1: Order.RETREAT, 2: Order.RETREAT, 3: Order.RETREAT}
    assert outcome.verdict().validity is False


@pytest.fixture
async def lieutenant_one() -> AsyncIterator[
    tuple[General, dict[int, TlsMaterial], certs.Authority]
]:
    ca, tls = issue_identities(4)
    general = General(1, tls[1])
    general.configure(Setup(n=4, m=1), round_timeout_s=PATIENT_S)
    await general.start()
    try:
        yield general, tls, ca
    finally:
        await general.stop()


async def tell(address: str, tls: TlsMaterial, body: object) -> None:
    async with grpc.aio.secure_channel(address, tls.channel_credentials()) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        await call(json.dumps(body).encode(), timeout=10)


async def test_a_general_speaks_only_in_its_own_name(
    lieutenant_one: tuple[General, dict[int, TlsMaterial], certs.Authority],
) -> None:
    general, tls, _ = lieutenant_one
    # L2 claims to be the commander: round 1 belongs to C, so it is dropped.
    await tell(general.address, tls[2], {"round": 1, "values": [{"path": [], "value": "retreat"}]})
    assert general.heard == {} and general.rejected == 1
    # The commander speaks for itself.
    await tell(
        general.address, tls[COMMANDER], {"round": 1, "values": [{"path": [], "value": "attack"}]}
    )
    # L2 relays: whatever it claims, the path ends with L2, the certificate's general.
    await tell(
        general.address,
        tls[2],
        {
            "round": 2,
            "values": [
                {"path": [0], "value": "retreat"},
                {"path": [0], "value": "attack"},  # a second value for one path
                {"path": [0, 3], "value": "attack"},  # not a path of round 2
                {"path": [0], "value": "surrender"},  # not an order
            ],
        },
    )
    assert general.heard == {(0,): Order.ATTACK, (0, 2): Order.RETREAT}
    assert general.rejected == 4


async def test_strangers_and_non_generals_are_not_heard(
    lieutenant_one: tuple[General, dict[int, TlsMaterial], certs.Authority],
) -> None:
    general, _, ca = lieutenant_one
    # Same CA, but not a general's name: refused by the service.
    issued = certs.issue(ca, role=ROLE, name="bank-alpha", trust_domain=TRUST_DOMAIN)
    outsider = TlsMaterial(
        ca=certs.cert_to_pem(ca.cert),
        cert=certs.cert_to_pem(issued.cert),
        key=certs.key_to_pem(issued.key),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tell(general.address, outsider, {"round": 1, "values": []})
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Another CA's general-0: the handshake fails before any message.
    _, foreign = issue_identities(1)
    forged = TlsMaterial(ca=outsider.ca, cert=foreign[0].cert, key=foreign[0].key)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await tell(general.address, forged, {"round": 1, "values": []})
    assert unknown.value.code() == grpc.StatusCode.UNAVAILABLE
    assert general.heard == {}


def test_one_process_per_general_agrees_with_memory() -> None:
    setup = plan(7, 2, seed=3, strategy="split")
    outcome = run_processes(setup, round_timeout_s=PATIENT_S)
    in_memory = run(setup)
    assert outcome.rounds == in_memory.rounds
    assert outcome.votes == in_memory.votes
    assert outcome.verdict().holds


def test_processes_refuse_a_strategy_they_cannot_be_told() -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        run_processes(Setup(n=4, m=1, traitors={1: Scripted({})}))


@pytest.mark.parametrize("transport", ["grpc", "processes"])
def test_the_command_plays_the_rounds_over_grpc(transport: str) -> None:
    result = CliRunner().invoke(
        generals, ["--n", "4", "--traitors", "1", "--strategy", "flip", "--transport", transport]
    )
    assert result.exit_code == 0, result.output
    assert "played over gRPC with mutual TLS" in result.output
    assert "C>L3 -> L1:R* L2:R*" in result.output
    assert "verdict: OK" in result.output


def test_a_process_run_past_its_deadline_is_killed_not_waited_for() -> None:
    """A silent general and a round timeout of ten minutes: the generals would
    wait it out, the deadline does not."""
    setup = Setup(n=4, m=1, order=Order.ATTACK, traitors={3: Silent()})
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish in 3 s"):
        run_processes(setup, round_timeout_s=600.0, deadline_s=3.0)
    assert time.monotonic() - started < PATIENT_S
