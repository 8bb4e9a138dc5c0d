"""The PBFT simulator: seeded worlds pass, each Byzantine behaviour is met, and more
than f faulty replicas do what the bound says they may."""

from __future__ import annotations

from dataclasses import replace

import pytest

from strife.bft.byzantine import BEHAVIOURS
from strife.bft.config import Config
from strife.bft.simulation import Result, Scenario, draw, draw_hard, main, run, run_seed

SEEDS = 200
SLOW_SEEDS = 3000
HARD_SEEDS = 40
SLOW_HARD_SEEDS = 600

SMALL = Config(n=4, checkpoint_interval=2, window=4, batch_size=4, max_in_flight=2)


def scenario(seed: int = 1, **fields: object) -> Scenario:
    """A lossy network until GST = 2 s, three clients; the rest from `fields`."""
    base = Scenario(
        seed=seed, config=SMALL, clients=3, requests=6, drop=0.1, duplicate=0.1,
        delay_max=0.1, gst=2.0,
    )  # fmt: skip
    return Scenario(**{**base.__dict__, **fields})


def check(result: Result) -> Result:
    assert result.ok, run(result.scenario, trace=60).report()
    assert result.unfinished == 0
    assert result.accepted == result.scenario.clients * result.scenario.requests
    return result


def sweep(first: int, count: int, *, hard: bool = False) -> list[Result]:
    results = [run_seed(seed, hard=hard) for seed in range(first, first + count)]
    failed = [r for r in results if not r.ok]
    assert not failed, "\n\n".join(run(r.scenario, trace=60).report() for r in failed[:3])
    return results


def test_seeds_pass() -> None:
    results = sweep(1, SEEDS)
    # The draw covers what it claims: every behaviour, partitions, both group sizes
    # and both signature schemes, and view changes and state transfers happen.
    drawn = {name for r in results for _, name in r.scenario.faulty}
    assert drawn == set(BEHAVIOURS)
    assert any(r.scenario.partition for r in results)
    assert {r.scenario.config.n for r in results} == {4, 7}
    assert {r.scenario.signatures for r in results} == {"ed25519", "keyed-hash"}
    assert sum(r.views > 0 for r in results) > SEEDS // 10
    assert sum(r.installs > 0 for r in results) > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_thousands_more_seeds_pass() -> None:
    results = sweep(SEEDS + 1, SLOW_SEEDS)
    assert sum(r.scenario.faulty_count == r.scenario.config.f for r in results) > SLOW_SEEDS // 3


def test_hard_seeds_pass() -> None:
    """Every hard world has f faulty replicas and a lossy network until a late GST."""
    results = sweep(1, HARD_SEEDS, hard=True)
    assert all(r.scenario.faulty_count == r.scenario.config.f for r in results)
    assert all(r.scenario.drop >= 0.3 and r.scenario.gst >= 5.0 for r in results)
    assert {r.scenario.config.n for r in results} == {4, 7}
    assert any(r.scenario.partition for r in results)
    assert sum(r.views > 0 for r in results) > HARD_SEEDS // 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hundreds_more_hard_seeds_pass() -> None:
    sweep(HARD_SEEDS + 1, SLOW_HARD_SEEDS, hard=True)


def test_a_hard_seed_replays_with_its_flag() -> None:
    world = draw_hard(5)
    assert world.hard and not draw(5).hard
    assert world.replay_command() == "python -m strife.bft.simulation --seed 5 --hard"
    assert run_seed(5, hard=True).digest == run(world).digest != run_seed(5).digest


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_an_equivocating_primary_is_replaced(seed: int) -> None:
    result = check(run(scenario(seed, faulty=((0, "equivocate"),))))
    assert result.views >= 1


@pytest.mark.parametrize("seed", [3, 4])
def test_a_silent_primary_is_replaced(seed: int) -> None:
    result = check(run(scenario(seed, faulty=((0, "silent"),))))
    assert result.views >= 1


def test_a_slow_primary_is_replaced() -> None:
    result = check(run(scenario(3, faulty=((0, "slow"),), drop=0.0, duplicate=0.0)))
    assert result.views >= 1


@pytest.mark.parametrize("liar", [0, 2])
def test_a_lying_replica_fools_no_client(liar: int) -> None:
    result = check(run(scenario(3, faulty=((liar, "lie"),))))
    assert result.ok  # every accepted result is the honest one (the checker compares)


def test_forged_and_replayed_messages_change_nothing() -> None:
    result = check(run(scenario(3, faulty=((1, "forge"),))))
    assert result.dropped["bad-signature"] > 10


def test_a_partitioned_replica_catches_up_by_state_transfer() -> None:
    result = check(
        run(scenario(3, partition=(3, 0.2, 1.5), requests=20, drop=0.0, duplicate=0.0, gst=0.0))
    )
    assert result.installs >= 1
    # Back in step: at most the log since the last stable checkpoint behind the others.
    assert max(result.last_executed) - result.last_executed[3] <= SMALL.window


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_each_behaviour_with_ed25519_signatures(behaviour: str) -> None:
    check(run(scenario(8, faulty=((0, behaviour),), requests=3, signatures="ed25519")))


def test_seven_replicas_with_two_byzantine() -> None:
    config = Config(n=7, checkpoint_interval=2, window=4, batch_size=4, max_in_flight=2)
    result = check(run(scenario(3, config=config, faulty=((0, "equivocate"), (4, "lie")))))
    assert result.views >= 1


def test_view_changes_that_hide_what_prepared_change_nothing() -> None:
    config = Config(n=7, checkpoint_interval=2, window=4, batch_size=4, max_in_flight=2)
    result = check(run(scenario(4, config=config, faulty=((0, "slow"), (2, "amnesia")))))
    assert result.views >= 1


def test_more_than_f_silent_stops_the_group_but_breaks_nothing() -> None:
    result = run(scenario(3, faulty=((0, "silent"), (1, "silent"))))
    assert result.ok  # no safety check failed; liveness is not promised beyond f
    assert result.accepted == 0 and result.executed == 0
    assert result.unfinished == 3


def test_more_than_f_colluding_liars_can_fool_a_client() -> None:
    """f + 1 liars telling the same lie are f + 1 vouchers: the bound is tight."""
    result = run(scenario(3, faulty=((1, "lie"), (2, "lie"))))
    assert {v.check for v in result.violations} == {"client-rule"}
    assert "b'forged ok" in str(result.violations[0])


@pytest.mark.parametrize("behaviour", ["equivocate", "forge"])
def test_the_run_is_the_same_with_ed25519_as_with_the_stand_in(behaviour: str) -> None:
    """Nothing the protocol does depends on which scheme made the signatures."""

    def shape(result: Result) -> tuple[object, ...]:
        return (
            result.events, result.views, result.accepted, result.installs,
            result.last_executed, result.virtual_s, result.dropped,
        )  # fmt: skip

    world = scenario(5, faulty=((0, behaviour),), requests=3)
    ed25519 = run(replace(world, signatures="ed25519"))
    assert ed25519.ok and ed25519.views >= 1
    assert shape(ed25519) == shape(run(world))


def test_a_seed_replays_exactly() -> None:
    first, again = run_seed(11, trace=30), run_seed(11, trace=30)
    assert first.events > 100
    assert (first.digest, first.trace, first.virtual_s) == (
        again.digest,
        again.trace,
        again.virtual_s,
    )
    assert run_seed(12).digest != first.digest
    assert draw(11) == draw(11) != draw(12)


def test_a_failing_seed_prints_its_world_trace_and_replay_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--seed", "3", "--faulty", "1=lie,2=lie", "--trace", "10"]) == 1
    printed = capsys.readouterr().out
    assert "seed 3 FAILED: client-rule" in printed
    assert "byzantine 1=lie 2=lie" in printed
    assert "the last 10 events:" in printed
    assert "replay: python -m strife.bft.simulation --seed 3" in printed
    assert main(["--seed", "3"]) == 0
