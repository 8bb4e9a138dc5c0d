"""The bank's SQLite schema, as versioned migrations applied at start.

Transfers are kept for the life of the ledger: a transfer id is never reused,
so a retry days later still cannot move money twice. A PREPARED transfer row
*is* the hold record (its debit postings are what `accounts.held_minor` sums);
an ABORTED row with no postings is a tombstone.

Migration 2 stores transfers in arrival order (`seq`). Version 1 keyed the
whole transfer rows, and the entries' UNIQUE (transfer_id, account_id), by
random transfer ids, so every prepare and commit dirtied random pages and
throughput fell as the ledger grew. Now only a slim unique index on
transfer_id is random; an entry stays unique per account under its
transfer's `seq` (`transfer_seq`; 0 for an opening balance), which grows with
time, so the same guarantee lands on recent pages.

Migration 3 adds the database's owner: the bank it was created for and the
cluster (its CA) that bank belongs to, written once by `--init` and checked
at every start, so a database is never served as another bank's.

Migration 4 adds the bank's own secrets: the key that seals its page tokens
(`strife.bank.pages`), made once when the store first opens and kept with the
ledger, so tokens outlive a restart and each bank of a process has its own.

Migration 5 makes a transfer's state move forward only: an update may take a
PREPARED row to COMMITTED or ABORTED and nothing else (never back to
PREPARED, never between COMMITTED and ABORTED). The ledger never asks for
anything else; should a stale snapshot ever ask, the trigger fails the batch
and its writer stops (fail-stop), as the entries' unique index does for a
second posting, instead of the upsert quietly rewriting a decided transfer.
"""

from __future__ import annotations

from strife.storage.sqlite import Migration

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE customers (
            customer_id   TEXT PRIMARY KEY,
            username      TEXT NOT NULL UNIQUE,
            display_name  TEXT NOT NULL,
            password_hash TEXT NOT NULL
        );
        CREATE TABLE accounts (
            account_id           TEXT PRIMARY KEY,
            customer_id          TEXT NOT NULL REFERENCES customers(customer_id),
            currency             TEXT NOT NULL,
            balance_minor        INTEGER NOT NULL CHECK (balance_minor >= 0),
            held_minor           INTEGER NOT NULL
                                 CHECK (held_minor >= 0 AND held_minor <= balance_minor),
            pending_credit_minor INTEGER NOT NULL CHECK (pending_credit_minor >= 0)
        );
        CREATE INDEX accounts_by_customer ON accounts(customer_id);
        CREATE TABLE transfers (
            transfer_id   TEXT PRIMARY KEY,
            fingerprint   BLOB NOT NULL,
            state         TEXT NOT NULL CHECK (state IN ('PREPARED', 'COMMITTED', 'ABORTED')),
            coordinator   TEXT NOT NULL,
            one_phase     INTEGER NOT NULL,
            abort_reason  TEXT NOT NULL,
            postings      TEXT NOT NULL,
            updated_at_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX transfers_prepared ON transfers(state) WHERE state = 'PREPARED';
        CREATE TABLE entries (
            seq           INTEGER PRIMARY KEY,
            transfer_id   TEXT NOT NULL,
            account_id    TEXT NOT NULL REFERENCES accounts(account_id),
            amount_minor  INTEGER NOT NULL CHECK (amount_minor != 0),
            currency      TEXT NOT NULL,
            counterparty  TEXT NOT NULL,
            posted_at_ms  INTEGER NOT NULL,
            UNIQUE (transfer_id, account_id)
        );
        CREATE INDEX entries_by_account ON entries(account_id, seq);
        CREATE TABLE audit (
            seq          INTEGER PRIMARY KEY,
            at_ms        INTEGER NOT NULL,
            transfer_id  TEXT NOT NULL,
            state        TEXT NOT NULL,
            coordinator  TEXT NOT NULL,
            reason       TEXT NOT NULL
        )
        """,
    ),
    # Built in the new shape and copied, because neither a WITHOUT ROWID table
    # nor a UNIQUE table constraint can be altered in place. migrate() runs it
    # in one transaction: a failure (e.g. an entry naming no transfer, which
    # the CHECK refuses) leaves version 1 untouched.
    Migration(
        2,
        """
        CREATE TABLE transfers_by_arrival (
            seq           INTEGER PRIMARY KEY,
            transfer_id   TEXT NOT NULL,
            fingerprint   BLOB NOT NULL,
            state         TEXT NOT NULL CHECK (state IN ('PREPARED', 'COMMITTED', 'ABORTED')),
            coordinator   TEXT NOT NULL,
            one_phase     INTEGER NOT NULL,
            abort_reason  TEXT NOT NULL,
            postings      TEXT NOT NULL,
            updated_at_ms INTEGER NOT NULL
        );
        INSERT INTO transfers_by_arrival (transfer_id, fingerprint, state, coordinator,
                                          one_phase, abort_reason, postings, updated_at_ms)
            SELECT transfer_id, fingerprint, state, coordinator, one_phase, abort_reason,
                   postings, updated_at_ms
            FROM transfers ORDER BY updated_at_ms, transfer_id;
        DROP TABLE transfers;
        ALTER TABLE transfers_by_arrival RENAME TO transfers;
        CREATE UNIQUE INDEX transfers_by_id ON transfers(transfer_id);
        CREATE INDEX transfers_prepared ON transfers(state) WHERE state = 'PREPARED';
        CREATE TABLE entries_by_transfer_seq (
            seq           INTEGER PRIMARY KEY,
            transfer_seq  INTEGER NOT NULL,
            transfer_id   TEXT NOT NULL,
            account_id    TEXT NOT NULL REFERENCES accounts(account_id),
            amount_minor  INTEGER NOT NULL CHECK (amount_minor != 0),
            currency      TEXT NOT NULL,
            counterparty  TEXT NOT NULL,
            posted_at_ms  INTEGER NOT NULL,
            CHECK (transfer_seq > 0 OR transfer_id = 'opening:' || account_id)
        );
        INSERT INTO entries_by_transfer_seq (seq, transfer_seq, transfer_id, account_id,
                                             amount_minor, currency, counterparty, posted_at_ms)
            SELECT e.seq, COALESCE(t.seq, 0), e.transfer_id, e.account_id, e.amount_minor,
                   e.currency, e.counterparty, e.posted_at_ms
            FROM entries e LEFT JOIN transfers t ON t.transfer_id = e.transfer_id
            ORDER BY e.seq;
        DROP TABLE entries;
        ALTER TABLE entries_by_transfer_seq RENAME TO entries;
        CREATE UNIQUE INDEX entries_once ON entries(transfer_seq, account_id);
        CREATE INDEX entries_by_account ON entries(account_id, seq);
        """,
    ),
    Migration(
        3,
        """
        CREATE TABLE bank_identity (
            one               INTEGER PRIMARY KEY CHECK (one = 1),
            bank              TEXT NOT NULL,
            cluster           TEXT NOT NULL,
            initialised_at_ms INTEGER NOT NULL
        )
        """,
    ),
    Migration(
        4,
        """
        CREATE TABLE secrets (
            name  TEXT PRIMARY KEY,
            value BLOB NOT NULL
        )
        """,
    ),
    Migration(
        5,
        """
        CREATE TRIGGER transfers_forward_only
        BEFORE UPDATE OF state ON transfers
        WHEN OLD.state != 'PREPARED' OR NEW.state NOT IN ('COMMITTED', 'ABORTED')
        BEGIN
            SELECT RAISE(ABORT, 'transfer state moves forward only');
        END
        """,
    ),
)
