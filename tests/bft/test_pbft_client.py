"""The client's rule: a result counts only when f + 1 distinct replicas sign the same one."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from strife.bft.client import Client
from strife.bft.config import Config
from strife.bft.messages import Reply
from strife.bft.signing import Keys, ed25519_keys, keyed_hash_keys, replica_identity

CONFIG = Config(n=7)  # f = 2
KEYS = keyed_hash_keys([replica_identity(r) for r in range(7)] + ["client-a"], seed=3)


def reply(
    keys: Keys, replica: int, timestamp: int, result: bytes, *, as_: int | None = None
) -> Reply:
    unsigned = Reply(0, timestamp, "client-a", replica, result)
    signer = keys.signer(replica_identity(replica if as_ is None else as_))
    return replace(unsigned, signature=signer.sign(unsigned.payload))


def fresh() -> Client:
    client = Client(CONFIG, KEYS.signer("client-a"), KEYS.verifier)
    client.request(b"balance a")
    return client


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([b"x", b"y", b"z"])), max_size=40))
def test_a_result_is_accepted_exactly_when_f_plus_1_replicas_first_said_it(
    replies: list[tuple[int, bytes]],
) -> None:
    client = fresh()
    first: dict[int, bytes] = {}
    for replica, result in replies:
        accepted = client.on_reply(reply(KEYS, replica, 1, result))
        first.setdefault(replica, result)
        vouchers = sorted(r for r, said in first.items() if said == result)
        if accepted is not None:
            assert accepted.result == result and list(accepted.vouchers) == vouchers
            assert len(vouchers) >= CONFIG.f + 1
            return
        assert len(vouchers) <= CONFIG.f


@settings(deadline=None)
@given(st.sets(st.integers(0, 6), max_size=2), st.integers(0, 6))
def test_f_liars_and_forgeries_in_others_names_never_make_a_result(
    liars: set[int], impersonated: int
) -> None:
    client = fresh()
    for liar in liars:
        assert client.on_reply(reply(KEYS, liar, 1, b"lie")) is None
        # The liar signs in another replica's name: not counted.
        forged = reply(KEYS, impersonated, 1, b"lie", as_=liar)
        if impersonated != liar:
            assert client.on_reply(forged) is None
    assert client.current is not None


def test_replies_for_another_timestamp_or_client_do_not_count() -> None:
    client = fresh()
    for replica in range(3):
        assert client.on_reply(reply(KEYS, replica, 2, b"x")) is None
    assert client.dropped["not-outstanding"] == 3
    accepted = None
    for replica in range(3):
        accepted = client.on_reply(reply(KEYS, replica, 1, b"x"))
    assert accepted is not None and accepted.vouchers == (0, 1, 2)
    assert client.on_reply(reply(KEYS, 3, 1, b"x")) is None  # nothing outstanding now


def test_ed25519_replies() -> None:
    keys = ed25519_keys([replica_identity(r) for r in range(4)] + ["client-a"])
    client = Client(Config(n=4), keys.signer("client-a"), keys.verifier)
    client.request(b"balance a")
    assert client.on_reply(reply(keys, 0, 1, b"ok 0")) is None
    assert client.on_reply(reply(keys, 1, 1, b"ok 0", as_=0)) is None
    accepted = client.on_reply(reply(keys, 2, 1, b"ok 0"))
    assert accepted is not None and accepted.vouchers == (0, 2)
