"""The bank's ledger as PBFT's replicated state machine.

Every replica executes the same operations in the agreed order on its own
`strife.bank.ledger.Ledger`, which is pure and deterministic (no clock, no
randomness, no I/O), so honest replicas compute byte-identical results.
Operations and results are canonical JSON (sorted keys, no spaces, ints as
ints, bytes as hex): a client compares replies byte for byte.

The state is kept in pages (`strife.bft.pages`), so a checkpoint costs what
changed since the last one: accounts, transfers (with their prepare counts
and resolver votes), customers and login attempts in pages of 256 records,
filled in the order records first appear; posted entries in pages of 1,024,
in posting order; and a `meta` page with the counts a restored replica needs
to lay out new records exactly as the others do. Each keyed table is a
`Tracked` dict, whose writes mark their record's page; the digest hashes the
pages' names and digests, and a snapshot is the pages framed.

An operation the ledger refuses (`LedgerError`) is a result too, the same at
every honest replica; a malformed operation is refused as INVALID_REQUEST.
The ledger's `votes` counter (volatile at a plain bank) is replicated state
here, in every snapshot, since the resolver's rule for aborting reads it; so
are the resolver's votes not yet settled (`_resolve`).

Customers are replicated state too (username, id, name, password hash), so
a gateway can log a customer in: it reads the agreed hash through the f + 1
client and checks the password itself (`login`, gateways only). A password
never travels inside an ordered request, where every replica would log it. A
seed's plain-text password is hashed at genesis with a salt derived from the
bank and the username, since every replica must derive the same state; a seed
for production carries scrypt hashes instead (docs/bft-bank.md).

Login attempts are replicated state as well, so the plain bank's limit per
username holds across every gateway: `login` counts an attempt before its
password is checked and refuses one past the limit; `login-ok` clears the
username after a right password, `login-release` gives an attempt back when no
password was checked. The time of an attempt comes inside the operation (the
gateway's wall clock, `at_ns`): a replica never reads its own clock.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from strife.bank.ledger import (
    Account,
    ErrorKind,
    Ledger,
    LedgerError,
    Leg,
    Outcome,
    Posting,
    Reason,
    Transfer,
    TransferState,
)
from strife.bank.seed import SeedRow
from strife.bank.service import (
    LOGIN_FAILURES_PER_USERNAME,
    LOGIN_WINDOW_S,
    MAX_CREDENTIAL_CHARS,
)
from strife.bft.pages import Page, Pager, Tracked, frame, is_paged, root_digest, unframe
from strife.security.passwords import DEFAULT_PARAMS, is_hash

__all__ = ["READS", "BankMachine", "admits", "canonical", "operation"]

READS = frozenset({"account", "transfer", "history"})
"""Operations that change nothing: a gateway or an admin (the auditor) may ask them."""
LOGINS = frozenset({"login", "login-ok", "login-release"})
"""A customer's record (password hash included) and the login throttle: gateways only."""

LOGIN_WINDOW_NS = round(LOGIN_WINDOW_S * 1_000_000_000)
LOGIN_USERNAMES = 10_000
"""Usernames with attempts on record, at most. A full table first forgets names
whose attempts all left the window, then the name whose latest attempt is
oldest: evicting a name still being guessed at takes this many newer names
within one window, far more ordered operations than a group executes in it."""

_DIGEST_PREFIX = b"strife-bft/bank-ledger/v2\n"
RECORDS_PER_PAGE = 256
ENTRIES_PER_PAGE = 1024
_KEYED = ("accounts", "customers", "logins", "transfers")


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def operation(op: str, **fields: object) -> bytes:
    """An operation's canonical bytes (what a client signs into its request)."""
    return canonical({"op": op, **fields})


def admits(client: str, op: bytes, voters: frozenset[str] = frozenset()) -> bool:
    """Who may ask what, as a plain bank's authorization and coordinator check say:
    reads for gateways and admins; anything else only for a gateway, and only
    under its own name as the transfer's coordinator (`client` is `role/name#lane`);
    and a vote on an in-doubt transfer only from a replica of the group (`voters`),
    in its own name."""
    role, _, rest = client.partition("/")
    name = rest.split("#", 1)[0]
    try:
        request = json.loads(op)
    except (ValueError, RecursionError):
        return role == "gateway"  # refused by `execute`, as any malformed operation
    if not isinstance(request, dict):
        return role == "gateway"
    if request.get("op") in READS:
        return role in ("gateway", "admin")
    if request.get("op") in LOGINS:
        return role == "gateway"
    if request.get("op") == "resolve":
        return role == "bank" and name in voters and request.get("voter") == name
    return role == "gateway" and request.get("coordinator") == name


class BankMachine:
    """One replica's copy of a bank: accounts, transfers and posted entries."""

    def __init__(self, *, weak: int = 1) -> None:
        self.weak = weak
        """f + 1: votes that settle an in-doubt transfer (one of them is honest)."""
        self._pagers = {kind: Pager(kind, RECORDS_PER_PAGE) for kind in _KEYED}
        self._hold(Ledger(), {}, {}, {}, [])

    def _hold(
        self,
        ledger: Ledger,
        resolutions: dict[str, dict[str, list[Any]]],
        customers: dict[str, dict[str, str]],
        logins: dict[str, list[int]],
        entries: list[list[Any]],
    ) -> None:
        """Take these as the state, every keyed table tracked (pages laid out apart)."""
        self.ledger = ledger
        ledger.accounts = Tracked(ledger.accounts, self._touch_account)
        ledger.transfers = Tracked(ledger.transfers, self._touch_transfer)
        ledger.votes = Tracked(ledger.votes, self._touch_transfer)
        self.resolutions: Tracked[dict[str, list[Any]]] = Tracked(resolutions, self._touch_transfer)
        """transfer id -> voter -> [commit, the prepare count it saw]."""
        self.customers: Tracked[dict[str, str]] = Tracked(customers, self._touch_customer)
        """username -> customer_id, display_name, password_hash."""
        self.logins: Tracked[list[int]] = Tracked(logins, self._touch_login)
        """username -> times (ns, ascending) of its latest attempts since its last
        right password, at most the limit (the latest by time, not by arrival)."""
        self.entries = entries
        """Posted lines, oldest first: transfer, account, signed amount, currency, counterparty."""
        self._by_account: dict[str, list[int]] = {}
        """account id -> positions of its entries (an index for history, not state)."""
        for position, entry in enumerate(entries):
            self._by_account.setdefault(entry[1], []).append(position)
        self._entry_pages: list[Page] = []
        self._entries_paged = 0
        """Entries below this many are in `_entry_pages` as they are now."""
        # A checkpoint asks for the digest and then the snapshot of the same state.
        self._pages: list[Page] | None = None

    # Values in tracked tables are replaced, never changed in place: a write is
    # what marks a record's page.

    def _touch_account(self, key: str) -> None:
        self._pagers["accounts"].touch(key, key in self.ledger.accounts)

    def _touch_transfer(self, key: str) -> None:
        held = key in self.ledger.transfers or key in self.ledger.votes
        self._pagers["transfers"].touch(key, held or key in getattr(self, "resolutions", ()))

    def _touch_customer(self, key: str) -> None:
        self._pagers["customers"].touch(key, key in self.customers)

    def _touch_login(self, key: str) -> None:
        self._pagers["logins"].touch(key, key in self.logins)

    @classmethod
    def from_seed(cls, rows: Iterable[SeedRow], *, weak: int = 1) -> BankMachine:
        """The genesis state every replica of the group starts from."""
        machine = cls(weak=weak)
        rows = sorted(rows, key=lambda r: r.account_id)
        for row in rows:
            if row.username not in machine.customers:
                machine.customers[row.username] = {
                    "customer_id": row.customer_id,
                    "display_name": row.display_name,
                    "password_hash": genesis_hash(row.bank, row.username, row.password),
                }
        for row in rows:
            machine.ledger.add_account(
                account_id=row.account_id,
                customer_id=row.customer_id,
                currency=row.currency,
                balance_minor=row.opening_balance_minor,
            )
        return machine

    # -- StateMachine -----------------------------------------------------

    def execute(self, op: bytes) -> bytes:
        self._pages = None
        try:
            request = json.loads(op)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise _bad("an operation is a JSON object with an op")
            handler = _HANDLERS.get(request["op"])
            if handler is None:
                raise _bad(f"unknown op {request['op']!r}")
            return canonical(handler(self, request))
        except LedgerError as exc:
            return canonical(
                {"error": {"kind": exc.kind, "reason": exc.reason, "message": exc.message}}
            )
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            error = _bad(f"malformed operation: {type(exc).__name__}")
            return canonical(
                {"error": {"kind": error.kind, "reason": error.reason, "message": error.message}}
            )

    def digest(self) -> bytes:
        return root_digest(_DIGEST_PREFIX, self._current())

    def snapshot(self) -> bytes:
        return frame(self._current())

    def restore(self, snapshot: bytes) -> None:
        """Replace the state; a snapshot that is not a consistent ledger is refused."""
        if not is_paged(snapshot):
            raise ValueError(
                "not a paged bank snapshot (a journal from before pages is refused: move it"
                " aside, and the replica catches up from its group by state transfer)"
            )
        try:
            saved = _Saved(unframe(snapshot))
            ledger = Ledger(saved.accounts, saved.transfers)  # checks every invariant
            ledger.votes = saved.votes
            pagers = {kind: Pager(kind, RECORDS_PER_PAGE) for kind in _KEYED}
            for kind, pager in pagers.items():
                pager.load(saved.pages[kind], saved.slots[kind])
        except (ValueError, TypeError, KeyError, AttributeError, AssertionError) as exc:
            raise ValueError(f"not a bank ledger snapshot: {type(exc).__name__}") from None
        self._pagers = pagers
        self._hold(ledger, saved.resolutions, saved.customers, saved.logins, saved.entries)
        self._entry_pages = saved.entry_pages
        self._entries_paged = len(saved.entries)

    def audit_pages(self) -> None:
        """Raise AssertionError unless every page holds exactly what its records render
        to now: a write that bypassed tracking would leave a stale page, and a digest
        that no longer says what the state is."""
        cached = self._current()
        for kind, pager in self._pagers.items():
            assert set(pager.page_of) == set(self._table(kind)), kind
            pager.dirty.update(pager.members)
        self._entry_pages, self._entries_paged, self._pages = [], 0, None
        assert self._current() == cached, "a page went stale"

    def _table(self, kind: str) -> Iterable[str]:
        if kind == "transfers":
            return {*self.ledger.transfers, *self.ledger.votes, *self.resolutions}
        tables: dict[str, Iterable[str]] = {
            "accounts": self.ledger.accounts,
            "customers": self.customers,
            "logins": self.logins,
        }
        return tables[kind]

    def _current(self) -> list[Page]:
        """Every page of the state as it is now, in name order."""
        if self._pages is None:
            render = {
                "accounts": lambda keys: canonical([asdict(self.ledger.accounts[k]) for k in keys]),
                "customers": lambda keys: canonical({k: self.customers[k] for k in keys}),
                "logins": lambda keys: canonical({k: self.logins[k] for k in keys}),
                "transfers": self._render_transfers,
            }
            pages = [p for kind in _KEYED for p in self._pagers[kind].pages(render[kind])]
            meta = {
                "entries": len(self.entries),
                "slots": {kind: self._pagers[kind].next_slot for kind in _KEYED},
            }
            pages += [*self._paged_entries(), Page.of("meta", canonical(meta))]
            self._pages = sorted(pages, key=lambda p: p.name)
        return self._pages

    def _render_transfers(self, keys: list[str]) -> bytes:
        transfers, votes = self.ledger.transfers, self.ledger.votes
        return canonical(
            {
                "transfers": [_transfer_json(transfers[k]) for k in keys if k in transfers],
                "votes": {k: votes[k] for k in keys if k in votes},
                "resolutions": {k: self.resolutions[k] for k in keys if k in self.resolutions},
            }
        )

    def _paged_entries(self) -> list[Page]:
        """Entry pages; only the last ones change (entries are appended, never edited)."""
        if self._entries_paged != len(self.entries):
            first = self._entries_paged // ENTRIES_PER_PAGE
            del self._entry_pages[first:]
            for k in range(first, -(-len(self.entries) // ENTRIES_PER_PAGE)):
                rows = self.entries[k * ENTRIES_PER_PAGE : (k + 1) * ENTRIES_PER_PAGE]
                self._entry_pages.append(Page.of(f"entries/{k:08d}", canonical(rows)))
            self._entries_paged = len(self.entries)
        return self._entry_pages

    # -- the operations ---------------------------------------------------

    def _prepare(self, r: Mapping[str, Any]) -> dict[str, Any]:
        return _outcome(
            self.ledger.prepare(
                transfer_id=_s(r, "transfer_id"),
                coordinator=_s(r, "coordinator"),
                leg=Leg(_s(r, "leg")),
                account_id=_s(r, "account_id"),
                amount_minor=_i(r, "amount_minor"),
                currency=_s(r, "currency"),
                fingerprint=bytes.fromhex(_s(r, "fingerprint")),
                counterparty=_s(r, "counterparty"),
                customer_id=_s(r, "customer_id"),
            )
        )

    def _process(self, r: Mapping[str, Any]) -> dict[str, Any]:
        outcome = self.ledger.process(
            transfer_id=_s(r, "transfer_id"),
            coordinator=_s(r, "coordinator"),
            from_account=_s(r, "from_account"),
            to_account=_s(r, "to_account"),
            amount_minor=_i(r, "amount_minor"),
            currency=_s(r, "currency"),
            fingerprint=bytes.fromhex(_s(r, "fingerprint")),
            customer_id=_s(r, "customer_id"),
        )
        return self._posted(outcome)

    def _commit(self, r: Mapping[str, Any]) -> dict[str, Any]:
        outcome = self.ledger.commit(
            transfer_id=_s(r, "transfer_id"), coordinator=_s(r, "coordinator")
        )
        self.resolutions.pop(outcome.transfer.transfer_id, None)
        return self._posted(outcome)

    def _abort(self, r: Mapping[str, Any]) -> dict[str, Any]:
        settle = self.ledger.release if r.get("release") is True else self.ledger.abort
        outcome = settle(transfer_id=_s(r, "transfer_id"), coordinator=_s(r, "coordinator"))
        self.resolutions.pop(outcome.transfer.transfer_id, None)
        return _outcome(outcome)

    def _resolve(self, r: Mapping[str, Any]) -> dict[str, Any]:
        """A replica's vote on an in-doubt transfer: what its coordinator told that
        replica. f + 1 votes alike settle it, under the coordinator's name, as the
        coordinator's own decision would. A vote to abort counts only while the
        leg's prepare count is the one the voter saw before asking: a YES given
        since belongs to a newer attempt the coordinator is counting on (the
        plain bank's resolver rule, `Ledger.abort(unless_voted_since=...)`)."""
        transfer_id, voter = _s(r, "transfer_id"), _s(r, "voter")
        commit, seen = r.get("commit"), _i(r, "seen")
        if type(commit) is not bool:
            raise _bad("commit must be true or false")
        transfer = self.ledger.transfers.get(transfer_id)
        if transfer is None or transfer.state != TransferState.PREPARED:
            self.resolutions.pop(transfer_id, None)
            return self._transfer({"transfer_id": transfer_id})
        votes = {**self.resolutions.get(transfer_id, {}), voter: [commit, seen]}
        self.resolutions[transfer_id] = votes
        count = self.ledger.votes.get(transfer_id, 0)
        alike = sum(1 for c, s in votes.values() if c == commit and (commit or s == count))
        if alike < self.weak:
            return {"transfer": _transfer_json(transfer), "replayed": True}
        del self.resolutions[transfer_id]
        coordinator = transfer.coordinator
        if commit:
            return self._posted(
                self.ledger.commit(transfer_id=transfer_id, coordinator=coordinator)
            )
        return _outcome(self.ledger.abort(transfer_id=transfer_id, coordinator=coordinator))

    def _transfer(self, r: Mapping[str, Any]) -> dict[str, Any]:
        transfer_id = _s(r, "transfer_id")
        transfer = self.ledger.transfers.get(transfer_id)
        if transfer is None:
            raise LedgerError(
                ErrorKind.NOT_FOUND, Reason.TRANSFER_NOT_FOUND, f"no transfer {transfer_id!r}"
            )
        return {"transfer": _transfer_json(transfer), "replayed": True}

    def _account(self, r: Mapping[str, Any]) -> dict[str, Any]:
        account_id = _s(r, "account_id")
        account = self.ledger.accounts.get(account_id)
        if account is None:
            raise LedgerError(
                ErrorKind.NOT_FOUND, Reason.ACCOUNT_NOT_FOUND, f"no account {account_id!r}"
            )
        return {"account": asdict(account)}

    def _login(self, r: Mapping[str, Any]) -> dict[str, Any]:
        """One login attempt at `at_ns`: counted now, before the caller checks the
        password (so concurrent guesses through many gateways cannot all be checked),
        and answered with the customer's record; or, with the username's limit of
        attempts inside the window already used, refused with how long to wait.
        Unknown usernames are counted alike, so a refusal tells no one a name exists."""
        username, at_ns = _username(r), _i(r, "at_ns")
        if at_ns < 0:
            raise _bad("at_ns must not be negative")
        times = self.logins.get(username, [])
        # Attempts stamped later than `at_ns` (a gateway whose clock is ahead) count
        # too; and since the latest ones are kept, not the latest to arrive, no
        # window ever holds more admitted attempts than the limit, whatever the
        # order the gateways' times arrive in.
        recent = [t for t in times if t > at_ns - LOGIN_WINDOW_NS]
        if len(recent) >= LOGIN_FAILURES_PER_USERNAME:
            # Every kept attempt is inside: the oldest leaving the window frees a slot.
            wait = recent[0] + LOGIN_WINDOW_NS - at_ns
            return {"throttled": {"retry_after_ns": max(1_000_000, wait)}}
        if username not in self.logins:
            self._make_room(at_ns)
        times = list(times)
        bisect.insort(times, at_ns)
        self.logins[username] = times[-LOGIN_FAILURES_PER_USERNAME:]
        return self._customer(username)

    def _login_ok(self, r: Mapping[str, Any]) -> dict[str, Any]:
        """A right password: the username starts afresh."""
        self.logins.pop(_username(r), None)
        return {"attempts": 0}

    def _login_release(self, r: Mapping[str, Any]) -> dict[str, Any]:
        """Give back the attempt made at `at_ns`: no password was checked for it."""
        username, at_ns = _username(r), _i(r, "at_ns")
        times = list(self.logins.get(username, []))
        if at_ns in times:
            times.remove(at_ns)
        if times:
            self.logins[username] = times
        else:
            self.logins.pop(username, None)
        return {"attempts": len(times)}

    def _make_room(self, at_ns: int) -> None:
        """Keep the table within LOGIN_USERNAMES, the same choice at every replica."""
        if len(self.logins) < LOGIN_USERNAMES:
            return
        horizon = at_ns - LOGIN_WINDOW_NS
        for name in [n for n, times in self.logins.items() if times[-1] <= horizon]:
            del self.logins[name]
        if len(self.logins) >= LOGIN_USERNAMES:
            del self.logins[min(self.logins, key=lambda n: (self.logins[n][-1], n))]

    def _customer(self, username: str) -> dict[str, Any]:
        """A customer and their accounts; null for an unknown username (the caller
        then checks against a dummy hash, so that costs the same as a wrong password)."""
        customer = self.customers.get(username)
        if customer is None:
            return {"customer": None}
        accounts = [
            [a.account_id, a.currency]
            for a in sorted(self.ledger.accounts.values(), key=_account_key)
            if a.customer_id == customer["customer_id"]
        ]
        return {"customer": {**customer, "accounts": accounts}}

    def _history(self, r: Mapping[str, Any]) -> dict[str, Any]:
        """Entries of one account, newest first, `limit` of them before position `before`."""
        account_id = _s(r, "account_id")
        self._account(r)
        before, limit = _i(r, "before"), _i(r, "limit")
        positions = self._by_account.get(account_id, [])
        # Positions are 1-based on the wire; `before` <= 0 means from the newest.
        end = len(positions) if before <= 0 else bisect.bisect_left(positions, before - 1)
        newest = positions[max(0, end - max(limit, 0)) : end][::-1]
        return {"entries": [[i + 1, *self.entries[i]] for i in newest]}

    def _posted(self, outcome: Outcome) -> dict[str, Any]:
        if not outcome.replayed:
            for e in outcome.changes.entries:
                self._by_account.setdefault(e.account_id, []).append(len(self.entries))
                self.entries.append(
                    [e.transfer_id, e.account_id, e.amount_minor, e.currency, e.counterparty]
                )
        return _outcome(outcome)

    @property
    def total_minor(self) -> int:
        """All balances together: what conservation of money is checked on."""
        return sum(a.balance_minor for a in self.ledger.accounts.values())


_HANDLERS = {
    "prepare": BankMachine._prepare,
    "process": BankMachine._process,
    "commit": BankMachine._commit,
    "abort": BankMachine._abort,
    "transfer": BankMachine._transfer,
    "account": BankMachine._account,
    "history": BankMachine._history,
    "login": BankMachine._login,
    "login-ok": BankMachine._login_ok,
    "login-release": BankMachine._login_release,
    "resolve": BankMachine._resolve,
}

_ACCOUNT_FIELDS = {
    "account_id": str, "customer_id": str, "currency": str,
    "balance_minor": int, "held_minor": int, "pending_credit_minor": int,
}  # fmt: skip


_CUSTOMER_FIELDS = {"customer_id": str, "display_name": str, "password_hash": str}


def genesis_hash(bank: str, username: str, password: str) -> str:
    """A seed's password as every replica hashes it: scrypt with a salt derived from
    the bank and the username (a seed's scrypt hash is taken as it is)."""
    if is_hash(password):
        return password
    salt = hashlib.sha256(f"strife-bft/genesis-salt/{bank}/{username}".encode()).digest()[:16]
    params = DEFAULT_PARAMS
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=params.n, r=params.r, p=params.p, dklen=32,
        maxmem=64 * 1024 * 1024,
    )  # fmt: skip
    encode = base64.b64encode
    return (
        f"scrypt${params.n}${params.r}${params.p}${encode(salt).decode()}${encode(digest).decode()}"
    )


def _bad(message: str) -> LedgerError:
    return LedgerError(ErrorKind.INVALID_ARGUMENT, Reason.INVALID_REQUEST, message)


def _s(r: Mapping[str, Any], key: str) -> str:
    value = r.get(key, "")
    if type(value) is not str:
        raise _bad(f"{key} must be a string")
    return value


def _i(r: Mapping[str, Any], key: str) -> int:
    value = r.get(key)
    if type(value) is not int:
        raise _bad(f"{key} must be an integer")
    return value


def _typed(raw: Mapping[str, Any], fields: Mapping[str, type]) -> dict[str, Any]:
    if set(raw) != set(fields) or any(type(raw[k]) is not t for k, t in fields.items()):
        raise ValueError("fields")
    return dict(raw)


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {"transfer": _transfer_json(outcome.transfer), "replayed": outcome.replayed}


def _transfer_json(t: Transfer) -> dict[str, Any]:
    return {
        "transfer_id": t.transfer_id,
        "fingerprint": t.fingerprint.hex(),
        "state": str(t.state),
        "coordinator": t.coordinator,
        "postings": [
            [p.account_id, str(p.leg), p.amount_minor, p.currency, p.counterparty]
            for p in t.postings
        ],
        "one_phase": t.one_phase,
        "abort_reason": str(t.abort_reason),
    }


def transfer_of(raw: Mapping[str, Any]) -> Transfer:
    """A transfer from its canonical form (a result's, or a snapshot's)."""
    return _transfer_of(raw)


def _transfer_of(raw: Mapping[str, Any]) -> Transfer:
    postings = tuple(
        Posting(str(a), Leg(leg), _int(amount), str(cur), str(cp))
        for a, leg, amount, cur, cp in raw["postings"]
    )
    if type(raw["one_phase"]) is not bool:
        raise ValueError("one_phase")
    return Transfer(
        transfer_id=str(raw["transfer_id"]),
        fingerprint=bytes.fromhex(str(raw["fingerprint"])),
        state=TransferState(raw["state"]),
        coordinator=str(raw["coordinator"]),
        postings=postings,
        one_phase=raw["one_phase"],
        abort_reason=str(raw["abort_reason"]),
    )


def _username(r: Mapping[str, Any]) -> str:
    username = _s(r, "username")
    if not username or len(username) > MAX_CREDENTIAL_CHARS:
        raise _bad(f"a username is 1 to {MAX_CREDENTIAL_CHARS} characters")
    return username


def _logins_of(raw: Any) -> dict[str, list[int]]:
    """The attempts table of a snapshot, refused unless it is one this machine could
    have written (per name 1 to the limit times, ascending; at most LOGIN_USERNAMES)."""
    if not isinstance(raw, dict) or len(raw) > LOGIN_USERNAMES:
        raise ValueError("logins")
    logins: dict[str, list[int]] = {}
    for name, times in raw.items():
        if not isinstance(times, list) or not 1 <= len(times) <= LOGIN_FAILURES_PER_USERNAME:
            raise ValueError("logins")
        checked = [_int(t) for t in times]
        if checked != sorted(checked) or not 1 <= len(name) <= MAX_CREDENTIAL_CHARS:
            raise ValueError("logins")
        logins[str(name)] = checked
    return logins


class _Saved:
    """A snapshot's pages read back, every record checked for its shape (the ledger's
    own invariants are checked when a `Ledger` is built from them)."""

    def __init__(self, pages: list[Page]) -> None:
        by_kind: dict[str, list[Page]] = {kind: [] for kind in (*_KEYED, "entries")}
        meta: Any = None
        for page in pages:
            kind, slash, _ = page.name.partition("/")
            if page.name == "meta":
                meta = json.loads(page.body)
            elif slash and kind in by_kind:
                by_kind[kind].append(page)
            else:
                raise ValueError(f"unknown page {page.name!r}")
        if not isinstance(meta, dict) or set(meta) != {"entries", "slots"}:
            raise ValueError("meta")
        slots = meta["slots"]
        if not isinstance(slots, dict) or set(slots) != set(_KEYED):
            raise ValueError("meta")
        self.slots = {kind: _int(slots[kind]) for kind in _KEYED}
        self.pages: dict[str, list[tuple[Page, list[str]]]] = {kind: [] for kind in _KEYED}
        self.accounts: list[Account] = []
        for page in by_kind["accounts"]:
            rows = [Account(**_typed(a, _ACCOUNT_FIELDS)) for a in json.loads(page.body)]
            self.pages["accounts"].append((page, [a.account_id for a in rows]))
            self.accounts += rows
        self.customers: dict[str, dict[str, str]] = {}
        for page in by_kind["customers"]:
            held = {str(k): _typed(c, _CUSTOMER_FIELDS) for k, c in json.loads(page.body).items()}
            self.pages["customers"].append((page, list(held)))
            self.customers.update(held)
        logins: dict[str, Any] = {}
        for page in by_kind["logins"]:
            held = json.loads(page.body)
            if not isinstance(held, dict):
                raise ValueError("logins")
            self.pages["logins"].append((page, list(held)))
            logins.update(held)
        self.logins = _logins_of(logins)
        self.transfers: list[Transfer] = []
        self.votes: dict[str, int] = {}
        self.resolutions: dict[str, dict[str, list[Any]]] = {}
        for page in by_kind["transfers"]:
            raw = json.loads(page.body)
            if set(raw) != {"transfers", "votes", "resolutions"}:
                raise ValueError("transfers")
            held_transfers = [_transfer_of(t) for t in raw["transfers"]]
            votes = {str(t): _int(n) for t, n in raw["votes"].items()}
            resolutions = {
                str(t): {str(v): [_bool(c), _int(seen)] for v, (c, seen) in by.items()}
                for t, by in raw["resolutions"].items()
            }
            keys = {t.transfer_id for t in held_transfers} | votes.keys() | resolutions.keys()
            self.pages["transfers"].append((page, sorted(keys)))
            self.transfers += held_transfers
            self.votes.update(votes)
            self.resolutions.update(resolutions)
        self.entries: list[list[Any]] = []
        self.entry_pages = by_kind["entries"]
        for k, page in enumerate(self.entry_pages):
            rows = json.loads(page.body)
            if page.name != f"entries/{k:08d}" or not isinstance(rows, list):
                raise ValueError("entries")
            if len(rows) != ENTRIES_PER_PAGE and k != len(self.entry_pages) - 1:
                raise ValueError("entries")
            self.entries += [_entry_of(e) for e in rows]
        if len(self.entries) != _int(meta["entries"]):
            raise ValueError("entries")


def _entry_of(raw: Any) -> list[Any]:
    if not isinstance(raw, list) or len(raw) != 5:
        raise ValueError("entry")
    transfer_id, account_id, amount, currency, counterparty = raw
    if not all(isinstance(v, str) for v in (transfer_id, account_id, currency, counterparty)):
        raise ValueError("entry")
    return [transfer_id, account_id, _int(amount), currency, counterparty]


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("expected true or false")
    return value


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError("expected an integer")
    return value


def _account_key(a: Account) -> str:
    return a.account_id


def _transfer_key(t: Transfer) -> str:
    return t.transfer_id
