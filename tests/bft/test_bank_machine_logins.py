"""The replicated bank's login throttle as state machine: the plain bank's limit
per username, counted before the password check, in the agreed order, with
times that come inside the operations, carried by snapshots and digests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strife.bank.seed import SeedRow
from strife.bank.service import LOGIN_FAILURES_PER_USERNAME, LOGIN_WINDOW_S
from strife.bft import bank_machine
from strife.bft.bank_machine import BankMachine, admits, operation
from strife.bft.pages import unframe

from .snapshots import forge

LIMIT = LOGIN_FAILURES_PER_USERNAME
WINDOW_NS = round(LOGIN_WINDOW_S * 1_000_000_000)
S = 1_000_000_000
T0 = 1_800_000_000 * S
ROWS = [
    SeedRow("vault", "c-ann", "ann", "Ann", "pw", "ann-usd", "USD", 10_000),
    SeedRow("vault", "c-ben", "ben", "Ben", "pw", "ben-usd", "USD", 0),
]
_GENESIS = BankMachine.from_seed(ROWS).snapshot()  # scrypt once, not per test


def genesis() -> BankMachine:
    machine = BankMachine()
    machine.restore(_GENESIS)
    return machine


def login(machine: BankMachine, username: str, at_ns: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        machine.execute(operation("login", username=username, at_ns=at_ns))
    )
    return result


def test_attempts_past_the_limit_wait_until_the_oldest_leaves_the_window() -> None:
    machine = genesis()
    for k in range(LIMIT):
        assert login(machine, "ann", T0 + k * S)["customer"]["customer_id"] == "c-ann"
    # Refused before any password is checked, so a right one is refused too.
    refused = login(machine, "ann", T0 + 10 * S)
    assert refused == {"throttled": {"retry_after_ns": WINDOW_NS - 10 * S}}
    assert machine.logins["ann"] == [T0 + k * S for k in range(LIMIT)]  # a refusal is not counted
    assert "customer" in login(machine, "ben", T0 + 10 * S)  # other usernames are not held
    # The first attempt leaves the window: one more, then wait for the second.
    assert "customer" in login(machine, "ann", T0 + WINDOW_NS)
    assert login(machine, "ann", T0 + WINDOW_NS) == {"throttled": {"retry_after_ns": S}}
    assert machine.logins["ann"] == [T0 + k * S for k in range(1, LIMIT)] + [T0 + WINDOW_NS]


def test_unknown_usernames_are_held_like_known_ones() -> None:
    machine = genesis()
    answers = [login(machine, "nobody", T0) for _ in range(LIMIT + 1)]
    assert answers == [{"customer": None}] * LIMIT + [{"throttled": {"retry_after_ns": WINDOW_NS}}]


def test_a_right_password_clears_and_an_unchecked_attempt_is_given_back() -> None:
    machine = genesis()
    for k in range(LIMIT):
        login(machine, "ann", T0 + k)
    released = machine.execute(operation("login-release", username="ann", at_ns=T0 + 2))
    assert json.loads(released) == {"attempts": LIMIT - 1}
    unknown = machine.execute(operation("login-release", username="ann", at_ns=T0 + 99))
    assert json.loads(unknown) == {"attempts": LIMIT - 1}
    assert "customer" in login(machine, "ann", T0 + 10)
    assert "throttled" in login(machine, "ann", T0 + 11)
    assert json.loads(machine.execute(operation("login-ok", username="ann"))) == {"attempts": 0}
    assert machine.logins == {}
    assert all("customer" in login(machine, "ann", T0 + 12) for _ in range(LIMIT))


def test_attempts_are_in_the_digest_and_travel_in_the_snapshot() -> None:
    a, b = genesis(), genesis()
    for k in range(LIMIT):
        login(a, "ann", T0 + k)
    assert a.digest() != b.digest()
    b.restore(a.snapshot())
    assert b.digest() == a.digest()
    assert login(b, "ann", T0 + S) == login(a, "ann", T0 + S)
    assert "throttled" in login(b, "ann", T0 + S)
    # Cleared again: no page holds ann's attempts any more.
    a.execute(operation("login-ok", username="ann"))
    assert a.logins == {}
    assert not any(p.name.startswith("logins/") for p in unframe(a.snapshot()))


@pytest.mark.parametrize(
    "forged",
    [
        {},  # a page holds at least one name
        {"ann": []},
        {"ann": [T0] * (LIMIT + 1)},
        {"ann": [T0 + 1, T0]},
        {"ann": ["soon"]},
        {"ann": [1.5]},
        {"": [T0]},
        {"ann": T0},
    ],
)
def test_a_snapshot_with_an_attempts_table_this_machine_never_writes_is_refused(
    forged: Any,
) -> None:
    source = genesis()
    login(source, "ann", T0)
    forged_snapshot = forge(source.snapshot(), "logins/00000000", lambda _: forged)
    copy = genesis()
    before = copy.digest()
    with pytest.raises(ValueError):
        copy.restore(forged_snapshot)
    assert copy.digest() == before


def test_the_table_is_bounded_and_every_replica_forgets_the_same_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bank_machine, "LOGIN_USERNAMES", 3)
    ops = [
        operation("login", username="old", at_ns=T0),
        operation("login", username="b", at_ns=T0 + WINDOW_NS - S),
        operation("login", username="a", at_ns=T0 + WINDOW_NS - S),
        # Full: "old" has left the window, so it goes first.
        operation("login", username="c", at_ns=T0 + WINDOW_NS + S),
        # Full, nothing expired: the latest attempt oldest goes, ties by name ("a").
        operation("login", username="d", at_ns=T0 + WINDOW_NS + 2 * S),
    ]
    one, other = genesis(), genesis()
    assert [one.execute(op) for op in ops] == [other.execute(op) for op in ops]
    assert sorted(one.logins) == ["b", "c", "d"]
    assert one.digest() == other.digest()


def test_only_gateways_count_attempts_and_malformed_ones_are_refused() -> None:
    for op in (
        operation("login", username="ann", at_ns=T0),
        operation("login-ok", username="ann"),
        operation("login-release", username="ann", at_ns=T0),
    ):
        assert admits("gateway/gw-2#1", op)
        assert not admits("admin/auditor#0", op)
        assert not admits("bank/vault-0", op, frozenset({"vault-0"}))
    machine = genesis()
    for bad in (
        operation("login", username="ann"),
        operation("login", username="ann", at_ns=-1),
        operation("login", username="ann", at_ns="now"),
        operation("login", username="x" * 257, at_ns=T0),
        operation("login-ok", username=""),
    ):
        assert json.loads(machine.execute(bad))["error"]["reason"] == "INVALID_REQUEST"
    assert machine.logins == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3 * WINDOW_NS // S), max_size=40))
def test_no_window_ever_admits_more_than_the_limit(seconds: list[int]) -> None:
    """Whatever the times of the attempts (as several gateways' clocks give them,
    in any order), no window of the plain bank's length holds more admitted
    attempts of one username than its limit."""
    machine = genesis()
    admitted = [T0 + s * S for s in seconds if "customer" in login(machine, "ann", T0 + s * S)]
    for end in admitted:
        inside = [t for t in admitted if end - WINDOW_NS < t <= end]
        assert len(inside) <= LIMIT, (end, admitted)


_OPS = st.one_of(
    st.builds(
        lambda u, s: operation("login", username=u, at_ns=T0 + s * S),
        st.sampled_from(["ann", "ben", "nobody"]),
        st.one_of(st.integers(0, 8), st.integers(0, 200)),
    ),
    st.builds(lambda u: operation("login-ok", username=u), st.sampled_from(["ann", "nobody"])),
    st.builds(
        lambda s: operation("login-release", username="ann", at_ns=T0 + s * S),
        st.integers(0, 8),  # often an attempt on record
    ),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(_OPS, max_size=30), st.integers(0, 30))
def test_a_replica_restored_midway_throttles_as_one_that_ran_throughout(
    ops: list[bytes], cut: int
) -> None:
    ran, restored = genesis(), BankMachine()
    for op in ops[:cut]:
        ran.execute(op)
    restored.restore(ran.snapshot())
    for op in ops[cut:]:
        assert ran.execute(op) == restored.execute(op)
        ran.audit_pages()  # renders every page: a write it missed shows next time
    assert ran.digest() == restored.digest()
    ran.audit_pages()
    restored.audit_pages()
