"""BankService over gRPC: a thin adapter from requests to one bank's store and ledger.

`BankServicer` serves one bank's calls and the per-item steps of the batch
calls; `strife.bank.host.BankHost` routes each request (and each batch item)
to its bank by the request's `bank` field, and runs the batches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import NoReturn, TypeVar

import grpc

from strife.bank.ledger import (
    ErrorKind,
    LedgerError,
    Leg,
    Outcome,
    Transfer,
    TransferState,
    abort_error,
)
from strife.bank.pages import open_page_token, seal_page_token
from strife.bank.store import BankStore, HistoryRow
from strife.errors import AnyContext, Reason, abort
from strife.faults import failpoint, failpoint_async
from strife.observability import context as request_context
from strife.rpc.authz import AuthzTable, service_methods
from strife.rpc.limits import MAX_PAGE_SIZE
from strife.security.passwords import HashingBusyError, verify_password_async
from strife.security.throttle import FailureWindow
from strife.storage.status import STORAGE_FAILURES, abort_storage_failure
from strife.v1 import bank_pb2, money_pb2

SERVICE = "strife.v1.BankService"
DEFAULT_PAGE_SIZE = 50
MAX_CREDENTIAL_CHARS = 256
# Failed password checks per username at this bank, from every gateway replica
# and every caller together (docs/security.md).
LOGIN_FAILURES_PER_USERNAME = 5
LOGIN_WINDOW_S = 60.0

_READS = ["AuthenticateCustomer", "ValidateAccount", "GetAccountBalance", "GetTransactionHistory"]
_LEGS_PB = {Leg.DEBIT: bank_pb2.LEG_DEBIT, Leg.CREDIT: bank_pb2.LEG_CREDIT}
_TWO_PHASE = [
    "ProcessTransaction",
    "Prepare",
    "Commit",
    "Abort",
    "DecideTransfers",
    "PrepareTransfers",
    "GetTransfer",
]
MAX_BATCH = 1000
AUTHZ = AuthzTable(
    {method: ("gateway", "admin") for method in service_methods(SERVICE, _READS)}
    | {method: ("gateway",) for method in service_methods(SERVICE, _TWO_PHASE)}
)

_CODES = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.ABORTED: grpc.StatusCode.ABORTED,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}
_STATES = {
    TransferState.PREPARED: bank_pb2.TRANSFER_STATE_PREPARED,
    TransferState.COMMITTED: bank_pb2.TRANSFER_STATE_COMMITTED,
    TransferState.ABORTED: bank_pb2.TRANSFER_STATE_ABORTED,
}
LEGS = {bank_pb2.LEG_DEBIT: Leg.DEBIT, bank_pb2.LEG_CREDIT: Leg.CREDIT}


class BankServicer:
    """One bank's handlers. Not a servicer of its own: a BankHost picks the bank
    by `request.bank`, calls these, and runs the batch calls over `prepare` and
    `decide`, since a batch may span the banks of one host."""

    def __init__(self, name: str, store: BankStore, *, check_coordinator: bool = True) -> None:
        self.name = name
        self.store = store
        self._check_coordinator = check_coordinator
        self.logins = FailureWindow(LOGIN_FAILURES_PER_USERNAME, LOGIN_WINDOW_S)

    # ------------------------------------------------------------- customers

    async def AuthenticateCustomer(
        self,
        request: bank_pb2.AuthenticateCustomerRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.AuthenticateCustomerRequest, bank_pb2.AuthenticateCustomerResponse
        ],
    ) -> bank_pb2.AuthenticateCustomerResponse:
        if not request.username or not request.password:
            await invalid(context, "username and password are required")
        if max(len(request.username), len(request.password)) > MAX_CREDENTIAL_CHARS:
            await invalid(context, "credentials too long")
        # Counted before the check, so concurrent guesses cannot all be checked.
        slot = self.logins.reserve(request.username)
        if isinstance(slot, float):
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                Reason.LOGIN_THROTTLED,
                "too many failed logins; try again later",
                retry_delay_s=slot,
            )
        checked = False
        try:
            customer = await self.store.customer(request.username)
            stored = customer.password_hash if customer else None
            ok = await verify_password_async(request.password, stored, context.time_remaining())
            checked = True
        except HashingBusyError as exc:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                Reason.PASSWORD_CHECKS_BUSY,
                "too many logins at this bank; retry shortly",
                retry_delay_s=exc.retry_after_s,
            )
        finally:
            if not checked:
                self.logins.release(slot)
        if not ok or customer is None:
            # Unknown user and wrong password look the same, and cost the same.
            await abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.INVALID_CREDENTIALS,
                "wrong username or password",
            )
        self.logins.succeed(request.username)
        _note_customer(customer.customer_id)
        return bank_pb2.AuthenticateCustomerResponse(
            customer_id=customer.customer_id,
            display_name=customer.display_name,
            accounts=[
                self._account_pb(a.account_id, a.customer_id, a.currency)
                for a in self.store.accounts_of(customer.customer_id)
            ],
        )

    async def ValidateAccount(
        self,
        request: bank_pb2.ValidateAccountRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.ValidateAccountRequest, bank_pb2.ValidateAccountResponse
        ],
    ) -> bank_pb2.ValidateAccountResponse:
        account = self.store.account(request.account_id)
        if account is None:
            await _account_not_found(context, request.account_id)
        if request.currency and request.currency != account.currency:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.CURRENCY_MISMATCH,
                f"account {request.account_id} holds {account.currency}, not {request.currency}",
                {"account_currency": account.currency},
            )
        return bank_pb2.ValidateAccountResponse(
            account=self._account_pb(account.account_id, account.customer_id, account.currency)
        )

    async def GetAccountBalance(
        self,
        request: bank_pb2.GetAccountBalanceRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.GetAccountBalanceRequest, bank_pb2.GetAccountBalanceResponse
        ],
    ) -> bank_pb2.GetAccountBalanceResponse:
        account = await self.store.committed_account(request.account_id)
        if account is None:
            await _account_not_found(context, request.account_id)
        currency = account.currency
        return bank_pb2.GetAccountBalanceResponse(
            balance=money_pb2.Balance(
                account=money_pb2.AccountRef(bank=self.name, account_id=account.account_id),
                balance=money_pb2.Money(amount_minor=account.balance_minor, currency=currency),
                held=money_pb2.Money(amount_minor=account.held_minor, currency=currency),
                available=money_pb2.Money(amount_minor=account.available_minor, currency=currency),
            )
        )

    async def GetTransactionHistory(
        self,
        request: bank_pb2.BankHistoryRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.BankHistoryRequest, bank_pb2.BankHistoryResponse
        ],
    ) -> bank_pb2.BankHistoryResponse:
        if self.store.account(request.account_id) is None:
            await _account_not_found(context, request.account_id)
        if request.page_size < 0:
            await invalid(context, "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        key = self.store.page_token_key
        before = None
        if request.page_token:
            before = open_page_token(key, self.name, request.account_id, request.page_token)
            if before is None:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    Reason.INVALID_PAGE_TOKEN,
                    "page_token is not one this bank issued for this account;"
                    " start again without one",
                )
        rows = await self.store.history(request.account_id, before, size + 1)
        page, more = rows[:size], len(rows) > size
        return bank_pb2.BankHistoryResponse(
            entries=[self._entry_pb(request.account_id, row) for row in page],
            next_page_token=(
                seal_page_token(key, self.name, request.account_id, page[-1].seq) if more else ""
            ),
        )

    # ------------------------------------------------------------- transfers

    async def Prepare(
        self,
        request: bank_pb2.PrepareRequest,
        context: grpc.aio.ServicerContext[bank_pb2.PrepareRequest, bank_pb2.PrepareResponse],
    ) -> bank_pb2.PrepareResponse:
        await failpoint_async("bank.before_prepare", request.transfer_id)
        await self._require_coordinator(context, request.coordinator)
        leg = LEGS.get(request.leg)
        if leg is None:
            await invalid(context, "leg must be LEG_DEBIT or LEG_CREDIT")
        request_context.note(
            transfer_id=request.transfer_id, amount_minor=request.amount.amount_minor
        )
        outcome = await self._run(context, self.prepare(request, leg))
        return _reply(bank_pb2.PrepareResponse, outcome)

    async def Commit(
        self,
        request: bank_pb2.CommitRequest,
        context: grpc.aio.ServicerContext[bank_pb2.CommitRequest, bank_pb2.CommitResponse],
    ) -> bank_pb2.CommitResponse:
        await failpoint_async("bank.before_commit", request.transfer_id)
        await self._require_coordinator(context, request.coordinator)
        failpoint("bank.before_commit")
        request_context.note(transfer_id=request.transfer_id)
        outcome = await self._run(
            context,
            self.store.commit(transfer_id=request.transfer_id, coordinator=request.coordinator),
        )
        return _reply(bank_pb2.CommitResponse, outcome)

    async def Abort(
        self,
        request: bank_pb2.AbortRequest,
        context: grpc.aio.ServicerContext[bank_pb2.AbortRequest, bank_pb2.AbortResponse],
    ) -> bank_pb2.AbortResponse:
        await failpoint_async("bank.before_abort", request.transfer_id)
        await self._require_coordinator(context, request.coordinator)
        request_context.note(transfer_id=request.transfer_id, release=request.release or None)
        settle = self.store.release if request.release else self.store.abort
        outcome = await self._run(
            context,
            settle(transfer_id=request.transfer_id, coordinator=request.coordinator),
            aborted_is_success=True,
        )
        return _reply(bank_pb2.AbortResponse, outcome)

    async def GetTransfer(
        self,
        request: bank_pb2.GetTransferRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.GetTransferRequest, bank_pb2.GetTransferResponse
        ],
    ) -> bank_pb2.GetTransferResponse:
        if not request.transfer_id:
            await invalid(context, "transfer_id is required")
        transfer = self.store.transfer(request.transfer_id)
        if transfer is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                Reason.TRANSFER_NOT_FOUND,
                f"no transfer {request.transfer_id!r} at this bank",
            )
        return transfer_response(transfer)

    async def ProcessTransaction(
        self,
        request: bank_pb2.ProcessTransactionRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.ProcessTransactionRequest, bank_pb2.ProcessTransactionResponse
        ],
    ) -> bank_pb2.ProcessTransactionResponse:
        await self._require_coordinator(context, request.coordinator)
        request_context.note(
            transfer_id=request.transfer_id, amount_minor=request.amount.amount_minor
        )
        outcome = await self._run(
            context,
            self.store.process(
                transfer_id=request.transfer_id,
                coordinator=request.coordinator,
                from_account=request.from_account_id,
                to_account=request.to_account_id,
                amount_minor=request.amount.amount_minor,
                currency=request.amount.currency,
                fingerprint=request.fingerprint,
                customer_id=request.customer_id,
            ),
        )
        return _reply(bank_pb2.ProcessTransactionResponse, outcome)

    # ---------------------------------------------------------------- helpers

    def prepare(self, request: bank_pb2.PrepareRequest, leg: Leg | None) -> Awaitable[Outcome]:
        """One prepare, as a batch item or a single call (`leg` already checked)."""
        assert leg is not None
        return self.store.prepare(
            transfer_id=request.transfer_id,
            coordinator=request.coordinator,
            leg=leg,
            account_id=request.account_id,
            amount_minor=request.amount.amount_minor,
            currency=request.amount.currency,
            fingerprint=request.fingerprint,
            counterparty=request.counterparty,
            customer_id=request.customer_id,
        )

    def decide(self, transfer_id: str, commit: bool, coordinator: str) -> Awaitable[Outcome]:
        """One COMMIT or ABORT decision of a batch."""
        apply = self.store.commit if commit else self.store.abort
        return apply(transfer_id=transfer_id, coordinator=coordinator)

    async def _require_coordinator(self, context: AnyContext, coordinator: str) -> None:
        if self._check_coordinator:
            await require_coordinator(context, coordinator)

    async def _run(
        self, context: AnyContext, call: Awaitable[Outcome], *, aborted_is_success: bool = False
    ) -> Outcome:
        try:
            outcome: Outcome = await call
        except LedgerError as exc:
            await _ledger_abort(context, exc)
        except STORAGE_FAILURES as exc:
            await abort_storage_failure(context, exc, "bank")
        if outcome.transfer.state == TransferState.ABORTED and not aborted_is_success:
            await _ledger_abort(context, abort_error(outcome.transfer))
        request_context.note(replay=outcome.replayed or None)
        return outcome

    def _account_pb(self, account_id: str, customer_id: str, currency: str) -> money_pb2.Account:
        return money_pb2.Account(
            ref=money_pb2.AccountRef(bank=self.name, account_id=account_id),
            customer_id=customer_id,
            currency=currency,
        )

    def _entry_pb(self, account_id: str, row: HistoryRow) -> money_pb2.LedgerEntry:
        return money_pb2.LedgerEntry(
            sequence=row.seq,
            transfer_id=row.transfer_id,
            account=money_pb2.AccountRef(bank=self.name, account_id=account_id),
            amount=money_pb2.Money(amount_minor=row.amount_minor, currency=row.currency),
            counterparty=row.counterparty,
            posted_at_unix_ms=row.posted_at_ms,
        )


_Reply = TypeVar(
    "_Reply",
    bank_pb2.PrepareResponse,
    bank_pb2.CommitResponse,
    bank_pb2.AbortResponse,
    bank_pb2.ProcessTransactionResponse,
)


def _reply(response: type[_Reply], outcome: Outcome) -> _Reply:
    """Every transfer RPC answers the same three facts about the transfer."""
    transfer = outcome.transfer
    return response(
        transfer_id=transfer.transfer_id, state=_STATES[transfer.state], replayed=outcome.replayed
    )


async def require_coordinator(context: AnyContext, coordinator: str) -> None:
    """A gateway acts only under its own name: the one in its certificate."""
    info = request_context.current()
    if info is not None and info.peer_name != coordinator:
        await abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.NOT_COORDINATOR,
            f"peer {info.peer_name!r} may not act as coordinator {coordinator!r}",
        )


async def storage_failure(context: AnyContext, results: Sequence[Outcome | BaseException]) -> None:
    """A batch fails as a whole only when storage does; anything else unexpected raises."""
    for result in results:
        if isinstance(result, STORAGE_FAILURES):
            await abort_storage_failure(context, result, "bank")
        if isinstance(result, BaseException) and not isinstance(result, LedgerError):
            raise result


def transfer_outcome(
    transfer_id: str, result: Outcome | BaseException, *, refuse_aborted: bool
) -> bank_pb2.TransferOutcome:
    """One transfer's answer in a batch, as its single call would have given it
    (`storage_failure` has already raised for anything but a LedgerError)."""
    if isinstance(result, Outcome) and (
        result.transfer.state != TransferState.ABORTED or not refuse_aborted
    ):
        transfer = result.transfer
        return bank_pb2.TransferOutcome(
            transfer_id=transfer.transfer_id,
            state=_STATES[transfer.state],
            replayed=result.replayed,
        )
    if isinstance(result, Outcome):
        error = abort_error(result.transfer)
    else:
        assert isinstance(result, LedgerError), result
        error = result
    return bank_pb2.TransferOutcome(
        transfer_id=transfer_id,
        error_reason=error.reason,
        error_code=_CODES[error.kind].value[0],
        error_message=error.message,
    )


def _note_customer(customer_id: str) -> None:
    info = request_context.current()
    if info is not None:
        info.customer = customer_id


async def _ledger_abort(context: AnyContext, exc: LedgerError) -> NoReturn:
    await abort(context, _CODES[exc.kind], exc.reason, exc.message)


async def invalid(context: AnyContext, message: str) -> NoReturn:
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, message)


async def _account_not_found(context: AnyContext, account_id: str) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.NOT_FOUND,
        Reason.ACCOUNT_NOT_FOUND,
        f"no account {account_id!r} at this bank",
        {"account_id": account_id},
    )


def transfer_response(transfer: Transfer) -> bank_pb2.GetTransferResponse:
    """A transfer as GetTransfer answers it, from a plain bank or a replicated one."""
    return bank_pb2.GetTransferResponse(
        transfer_id=transfer.transfer_id,
        state=_STATES[transfer.state],
        coordinator=transfer.coordinator,
        one_phase=transfer.one_phase,
        abort_reason=transfer.abort_reason,
        postings=[
            bank_pb2.TransferPosting(
                leg=_LEGS_PB[p.leg],
                account_id=p.account_id,
                amount=money_pb2.Money(amount_minor=p.amount_minor, currency=p.currency),
                counterparty=p.counterparty,
            )
            for p in transfer.postings
        ],
    )
