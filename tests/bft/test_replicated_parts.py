"""The replicated bank's pure parts: the ledger as a state machine, who may ask
what, the wire encoding, the group file and the journal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strife.bank.seed import SeedRow
from strife.bft.bank_machine import BankMachine, admits, operation
from strife.bft.config import Config
from strife.bft.group import (
    ClientEntry,
    Group,
    GroupError,
    ReplicaEntry,
    public_hex,
    write_signing_key,
)
from strife.bft.journal import Journal, Saved
from strife.bft.messages import Checkpoint, ClientRecord, Request, StateReply
from strife.bft.pages import unframe
from strife.bft.recovery import resume, stable_state
from strife.bft.replica import Replica
from strife.bft.signing import keyed_hash_keys, replica_identity
from strife.bft.wire import WireError, decode, decode_records, encode, encode_records
from strife.rpc.channels import MAX_MESSAGE_BYTES
from strife.security.passwords import verify_password

from .snapshots import forge

ROWS = [
    SeedRow("vault", "c-ann", "ann", "Ann", "pw", "ann-usd", "USD", 10_000),
    SeedRow("vault", "c-ben", "ben", "Ben", "pw", "ben-usd", "USD", 0),
]


def prepare(transfer_id: str, account: str, minor: int, leg: str = "DEBIT") -> bytes:
    return operation(
        "prepare", transfer_id=transfer_id, coordinator="gw-1", leg=leg, account_id=account,
        amount_minor=minor, currency="USD", fingerprint="ab", counterparty="x", customer_id="",
    )  # fmt: skip


def test_replicas_fed_the_same_operations_answer_and_hash_alike() -> None:
    ops = [
        prepare("t1", "ann-usd", 500),
        operation("commit", transfer_id="t1", coordinator="gw-1"),
        prepare("t2", "ben-usd", 1),  # refused: ben has nothing, recorded as NO
        operation("abort", transfer_id="t3", coordinator="gw-1", release=False),
        operation("account", account_id="ann-usd"),
        b"not json",
    ]
    a, b = BankMachine.from_seed(ROWS), BankMachine.from_seed(reversed(ROWS))
    assert [a.execute(op) for op in ops] == [b.execute(op) for op in ops]
    assert a.digest() == b.digest()
    assert (
        json.loads(a.execute(operation("account", account_id="ann-usd")))["account"][
            "balance_minor"
        ]
        == 9_500
    )
    assert json.loads(a.execute(b"not json"))["error"]["reason"] == "INVALID_REQUEST"
    assert a.total_minor == 9_500  # the debit left for the other bank


def test_a_snapshot_restores_exactly_and_a_forged_one_is_refused() -> None:
    source = BankMachine.from_seed(ROWS)
    source.execute(prepare("t1", "ann-usd", 500))
    copy = BankMachine()
    copy.restore(source.snapshot())
    assert copy.digest() == source.digest()
    assert copy.execute(operation("commit", transfer_id="t1", coordinator="gw-1")) == (
        source.execute(operation("commit", transfer_id="t1", coordinator="gw-1"))
    )

    def held(accounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**accounts[0], "held_minor": 7}, *accounts[1:]]  # a hold no transfer explains

    for forged in (
        forge(source.snapshot(), "accounts/00000000", held),
        forge(source.snapshot(), "meta", lambda meta: {**meta, "entries": meta["entries"] + 1}),
        forge(source.snapshot(), "transfers/00000000", lambda t: {**t, "votes": {"t1": "2"}}),
        b'{"mallory": 1000000}',
    ):
        with pytest.raises(ValueError):
            copy.restore(forged)
    assert copy.digest() == source.digest()


def test_gateways_move_money_only_as_themselves_and_admins_only_read() -> None:
    commit = operation("commit", transfer_id="t", coordinator="gw-1")
    assert admits("gateway/gw-1#3", commit)
    assert not admits("gateway/gw-2#0", commit)
    assert not admits("admin/auditor#0", commit)
    assert admits("admin/auditor#0", operation("account", account_id="a"))
    assert not admits("client/someone#0", operation("account", account_id="a"))
    # A customer's record carries its password hash: for logging in, so gateways only.
    assert admits("gateway/gw-1#0", operation("login", username="ann", at_ns=1))
    assert not admits("admin/auditor#0", operation("login", username="ann", at_ns=1))


def test_every_replica_derives_the_same_customers_and_their_passwords_check() -> None:
    a, b = BankMachine.from_seed(ROWS), BankMachine.from_seed(list(reversed(ROWS)))
    assert a.digest() == b.digest()
    found = json.loads(a.execute(operation("login", username="ann", at_ns=1)))["customer"]
    assert found["accounts"] == [["ann-usd", "USD"]]
    assert verify_password("pw", found["password_hash"])
    assert not verify_password("wrong", found["password_hash"])
    unknown = operation("login", username="nobody", at_ns=1)
    assert json.loads(a.execute(unknown)) == {"customer": None}
    copy = BankMachine()
    copy.restore(a.snapshot())
    assert copy.customers == a.customers


def test_the_wire_encoding_round_trips_and_refuses_what_is_not_a_message() -> None:
    keys = keyed_hash_keys(["replica-1"])
    cp = Checkpoint(8, b"\x01" * 32, 1)
    cp = Checkpoint(8, b"\x01" * 32, 1, keys.signer("replica-1").sign(cp.payload))
    assert decode(encode(cp)) == cp
    body = json.loads(encode(cp))
    for broken in (
        {**body, "kind": "nope"},
        {**body, "message": {**body["message"], "seq": True}},
        {**body, "message": {**body["message"], "seq": 8.0}},
        {**body, "message": {**body["message"], "extra": 1}},
        {**body, "message": {**body["message"], "state_digest": "ZZ"}},
    ):
        with pytest.raises(WireError):
            decode(json.dumps(broken).encode())
    with pytest.raises(WireError):
        decode(b"\xff")


def test_a_group_file_round_trips_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    keys = [write_signing_key(tmp_path / f"{i}.key") for i in range(4)]
    group = Group(
        "vault",
        Config(n=4, checkpoint_interval=4, window=8),
        tuple(
            ReplicaEntry(f"vault-{i}", f"127.0.0.1:{7000 + i}", bytes.fromhex(public_hex(k)))
            for i, k in enumerate(keys)
        ),
        (ClientEntry("gateway/gw-1", bytes.fromhex(public_hex(keys[0]))),),
    )
    (tmp_path / "group.toml").write_text(group.to_toml())
    assert Group.load(tmp_path / "group.toml") == group
    (tmp_path / "three.toml").write_text(group.to_toml().rsplit("[[replica]]", 1)[0])
    with pytest.raises(GroupError):
        Group.load(tmp_path / "three.toml")


def test_the_journal_gives_back_a_checkpoint_and_the_log_above_it(tmp_path: Path) -> None:
    config = Config(n=4, checkpoint_interval=2, window=4)
    names = [replica_identity(i) for i in range(4)] + ["gateway/gw-1#0"]
    keys = keyed_hash_keys(names)
    replica = Replica(
        config, 0, keys.signer("replica-0"), keys.verifier, BankMachine.from_seed(ROWS)
    )
    genesis = stable_state(replica)
    assert genesis is not None
    journal = Journal(tmp_path / "r0.db", synchronous="NORMAL")
    journal.identity("vault", 0)
    request = Request("gateway/gw-1#0", 1, prepare("t1", "ann-usd", 5))
    request = Request(
        request.client, 1, request.operation, keys.signer(request.client).sign(request.payload)
    )
    journal.write([(1, (request,))], genesis)
    journal.close()
    journal = Journal(tmp_path / "r0.db", synchronous="NORMAL")
    with pytest.raises(ValueError):
        journal.identity("vault", 1)
    saved = journal.load()
    assert saved is not None and saved.log == ((1, (request,)),)
    fresh = Replica(config, 0, keys.signer("replica-0"), keys.verifier, BankMachine.from_seed(ROWS))
    resume(fresh, saved)
    assert fresh.last_executed == 1
    assert fresh.clients["gateway/gw-1#0"] == ClientRecord(
        "gateway/gw-1#0", 1, fresh.clients["gateway/gw-1#0"].result
    )
    broken = Saved(0, b"\x00" * 32, (), saved.snapshot, (), ())
    with pytest.raises(ValueError):
        resume(Replica(config, 0, keys.signer("replica-0"), keys.verifier, BankMachine()), broken)


def test_an_in_doubt_leg_is_settled_by_f_plus_one_votes_alike() -> None:
    machine = BankMachine.from_seed(ROWS, weak=2)
    machine.execute(prepare("t1", "ann-usd", 500))

    def vote(voter: str, commit: bool, seen: int = 0) -> str:
        op = operation("resolve", transfer_id="t1", commit=commit, voter=voter, seen=seen)
        return str(json.loads(machine.execute(op))["transfer"]["state"])

    assert vote("vault-0", False) == "PREPARED"  # one vote may be a faulty replica's
    assert vote("vault-0", False) == "PREPARED"  # and it cannot vote twice
    assert vote("vault-1", True) == "PREPARED"  # nor do unlike votes add up
    # A YES given again since (a newer attempt): votes to abort that saw 0 are stale.
    machine.execute(prepare("t1", "ann-usd", 500))
    assert vote("vault-2", False) == "PREPARED"
    assert vote("vault-3", False, seen=1) == "PREPARED"
    assert vote("vault-2", True) == "COMMITTED"  # vault-1 and vault-2: f + 1 alike
    assert machine.resolutions == {}
    assert (
        json.loads(machine.execute(operation("account", account_id="ann-usd")))["account"][
            "balance_minor"
        ]
        == 9_500
    )
    copy = BankMachine(weak=2)
    copy.restore(machine.snapshot())
    assert copy.digest() == machine.digest()


def test_only_a_replica_of_the_group_votes_and_only_as_itself() -> None:
    op = operation("resolve", transfer_id="t", commit=False, voter="vault-1", seen=0)
    voters = frozenset({"vault-0", "vault-1"})
    assert admits("bank/vault-1#0", op, voters)
    assert not admits("bank/vault-0#0", op, voters)
    assert not admits("bank/alpha#0", op, voters)
    assert not admits("gateway/vault-1#0", op, voters)


_ACCOUNTS = ("ann-usd", "ben-usd", "nobody")
_ids = st.sampled_from(["t1", "t2", "t3", "t4"])
_ops = st.one_of(
    st.builds(
        lambda t, a, m, leg: prepare(t, a, m, leg),
        _ids, st.sampled_from(_ACCOUNTS), st.integers(0, 20_000),
        st.sampled_from(["DEBIT", "CREDIT"]),
    ),
    st.builds(lambda t: operation("commit", transfer_id=t, coordinator="gw-1"), _ids),
    st.builds(
        lambda t, r: operation("abort", transfer_id=t, coordinator="gw-1", release=r),
        _ids, st.booleans(),
    ),
    st.builds(
        lambda t, c, v, s: operation("resolve", transfer_id=t, commit=c, voter=v, seen=s),
        _ids, st.booleans(), st.sampled_from(["vault-0", "vault-1"]), st.integers(0, 2),
    ),
    st.builds(lambda a: operation("account", account_id=a), st.sampled_from(_ACCOUNTS)),
    st.builds(
        lambda a, b, n: operation("history", account_id=a, before=b, limit=n),
        st.sampled_from(_ACCOUNTS), st.integers(-1, 8), st.integers(0, 4),
    ),
)  # fmt: skip


def _history_by_scan(machine: BankMachine, op: bytes) -> object:
    """What `history` answers, found the slow way: every entry scanned."""
    r = json.loads(op)
    if r["account_id"] not in machine.ledger.accounts:
        return json.loads(machine.execute(op))  # the refusal, checked elsewhere
    rows = [(i + 1, e) for i, e in enumerate(machine.entries) if e[1] == r["account_id"]]
    rows = [(n, e) for n, e in rows if r["before"] <= 0 or n < r["before"]]
    return {"entries": [[n, *e] for n, e in rows[::-1][: r["limit"]]]}


_GENESIS = BankMachine.from_seed(ROWS).snapshot()


@settings(max_examples=200, deadline=None)
@given(st.lists(_ops, max_size=25), st.integers(0, 25))
def test_a_replica_restored_midway_answers_and_hashes_as_one_that_ran_throughout(
    ops: list[bytes], cut: int
) -> None:
    """Determinism, and snapshots that carry everything: a replica that ran every
    operation and one that took the other's snapshot halfway give the same
    results and the same digest, and money only leaves by committed debits."""
    ran, restored = BankMachine(weak=2), BankMachine(weak=2)
    ran.restore(_GENESIS)  # genesis hashes passwords (scrypt): once, not per example
    for op in ops[:cut]:
        ran.execute(op)
        ran.audit_pages()
    restored.restore(ran.snapshot())
    for op in ops[cut:]:
        if json.loads(op)["op"] == "history":
            assert json.loads(restored.execute(op)) == _history_by_scan(restored, op)
        assert ran.execute(op) == restored.execute(op)
        ran.audit_pages()  # renders every page: a write it missed shows next time
    assert ran.digest() == restored.digest()
    # Every write reached its page: the pages are what the records render to now.
    ran.audit_pages()
    restored.audit_pages()
    ran.ledger.check_invariants()
    posted = sum(entry[2] for entry in ran.entries)
    assert ran.total_minor == 10_000 + posted


def test_a_checkpoint_renders_only_the_pages_that_changed() -> None:
    """Past a few pages of transfers and entries, a batch of payments changes only
    the pages its records live in, and a replica restored from the snapshot lays
    new records out exactly as the one that ran throughout."""
    machine = BankMachine.from_seed(ROWS)

    def pay(n: int) -> bytes:
        return operation(
            "process", transfer_id=f"p{n}", coordinator="gw-1", from_account="ann-usd",
            to_account="ben-usd", amount_minor=1, currency="USD", fingerprint="00",
            customer_id="c-ann",
        )  # fmt: skip

    for n in range(1_200):
        machine.execute(pay(n))
    before = {p.name: p.digest for p in unframe(machine.snapshot())}
    assert sum(name.startswith("transfers/") for name in before) == 5  # 1,200 / 256
    assert sum(name.startswith("entries/") for name in before) == 3  # 2,400 / 1,024
    copy = BankMachine()
    copy.restore(machine.snapshot())
    for n in range(1_200, 1_264):
        assert machine.execute(pay(n)) == copy.execute(pay(n))
    after = {p.name: p.digest for p in unframe(machine.snapshot())}
    changed = sorted(name for name, digest in after.items() if before.get(name) != digest)
    # The two balances, the newest entries and transfers, and the counts.
    assert changed == ["accounts/00000000", "entries/00000002", "meta", "transfers/00000004"]
    assert copy.digest() == machine.digest()
    machine.audit_pages()
    copy.audit_pages()


def test_a_state_reply_with_a_full_chunk_fits_in_one_grpc_message() -> None:
    """The wire carries at most MAX_MESSAGE_BYTES; a state of any size (reply table
    and snapshot) travels in chunks, and one chunk with all it comes with stays
    well inside."""
    config = Config()
    clients = tuple(
        ClientRecord(f"gateway/gw-{g}#{lane}", 2**62, b"r" * 512)
        for g in range(8)
        for lane in range(32)
    )
    proof = tuple(Checkpoint(64, bytes(32), r, bytes(64)) for r in range(config.quorum))
    digests = tuple(bytes(32) for _ in range(2_000))  # a 2 GB snapshot's chunk list
    chunk = bytes(config.state_chunk_bytes)
    reply = StateReply(64, 0, digests, 1, chunk, proof, 1, bytes(64))
    assert len(encode(reply)) < 0.75 * MAX_MESSAGE_BYTES
    # The reply table travels as chunks of the state too, whatever its size.
    table = encode_records(clients)
    assert len(table) > config.state_chunk_bytes // 4
    assert decode_records(table) == clients


def test_a_journal_from_before_pages_is_refused_with_what_to_do(tmp_path: Path) -> None:
    config = Config(n=4, checkpoint_interval=2, window=4)
    names = [replica_identity(i) for i in range(4)]
    keys = keyed_hash_keys(names)
    old = b'{"accounts":[],"customers":{},"entries":[],"resolutions":{},"transfers":[],"votes":{}}'
    replica = Replica(config, 0, keys.signer("replica-0"), keys.verifier, BankMachine())
    with pytest.raises(ValueError, match="move it aside"):
        resume(replica, Saved(4, bytes(32), (), old, (), ()))
