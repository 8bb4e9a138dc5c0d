"""The bank's SQLite schema, as versioned migrations applied at start.

Transfers are kept for the life of the ledger: a transfer id is never reused,
so a retry days later still cannot move money twice. A PREPARED transfer row
*is* the hold record (its debit postings are what `accounts.held_minor` sums);
an ABORTED row with no postings is a tombstone.
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
)
