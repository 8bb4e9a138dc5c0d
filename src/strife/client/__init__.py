"""`strife.client`: the customer's async library, with an offline outbox.

    from strife.client import StrifeClient

    async with StrifeClient(certs="certs/client-default", gateways=["127.0.0.1:7001"]) as client:
        await client.login("ada", password, "alpha")
        result = await client.pay("beta/cy-usd", amount_minor=1234, currency="USD")
        async for outcome in client.outcomes():
            ...

Everything public is exported here; the modules beside it are private.
Errors a server reports are the typed classes of `strife.errors` (each with
`.reason`, `.retryable`, `.retry_after_s`); errors the client detects itself
derive from `ClientError`.
"""

from strife.client._auth import CredentialProvider, Credentials, Session
from strife.client._client import ClientConfig, DrainResult, Outcomes, StrifeClient
from strife.client._exceptions import (
    ClientError,
    EntryNotFound,
    EntryStateError,
    LoginRequired,
    OutboxFull,
)
from strife.client._models import (
    Account,
    AccountRef,
    Balance,
    EntryState,
    HistoryPage,
    LedgerEntry,
    OutboxEntry,
    Payment,
    PaymentResult,
    PaymentStatus,
    amount_text,
    new_idempotency_key,
    parse_amount_text,
)
from strife.client._retry import RetryPolicy
from strife.errors import (
    Aborted,
    AccountNotFound,
    AlreadyExists,
    CurrencyMismatch,
    DeadlineExceeded,
    FailedPrecondition,
    IdempotencyKeyReused,
    InsufficientFunds,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RequestInProgress,
    ResourceExhausted,
    StrifeError,
    Unauthenticated,
    Unavailable,
)
from strife.money import MoneyError

__all__ = [
    "Aborted",
    "Account",
    "AccountNotFound",
    "AccountRef",
    "AlreadyExists",
    "Balance",
    "ClientConfig",
    "ClientError",
    "CredentialProvider",
    "Credentials",
    "CurrencyMismatch",
    "DeadlineExceeded",
    "DrainResult",
    "EntryNotFound",
    "EntryState",
    "EntryStateError",
    "FailedPrecondition",
    "HistoryPage",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "Internal",
    "InvalidArgument",
    "LedgerEntry",
    "LoginRequired",
    "MoneyError",
    "NotFound",
    "OutboxEntry",
    "OutboxFull",
    "Outcomes",
    "Payment",
    "PaymentResult",
    "PaymentStatus",
    "PermissionDenied",
    "RequestInProgress",
    "ResourceExhausted",
    "RetryPolicy",
    "Session",
    "StrifeClient",
    "StrifeError",
    "Unauthenticated",
    "Unavailable",
    "amount_text",
    "new_idempotency_key",
    "parse_amount_text",
]
