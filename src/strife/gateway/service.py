"""PaymentGateway and Coordinator over gRPC: validation, ownership, idempotency."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Sequence
from typing import NoReturn

import grpc

from strife.errors import AnyContext, Reason, abort, from_rpc_error
from strife.gateway.auth import GATEWAY_SERVICE, current_claims
from strife.gateway.banks import Banks
from strife.gateway.coordinator import (
    FingerprintMismatchError,
    InProgressError,
    PaymentCoordinator,
    TooManyInFlightError,
)
from strife.gateway.store import GatewayStore, PaymentRecord, PaymentState
from strife.gateway.throttle import LoginThrottle
from strife.gateway.tokens import TokenAuthority
from strife.money import MoneyError, check_amount, check_currency
from strife.observability import context as request_context
from strife.observability.logging import get_logger
from strife.rpc.authz import AuthzTable, service_methods
from strife.rpc.limits import MAX_DESCRIPTION_CHARS
from strife.storage.status import STORAGE_FAILURES, abort_storage_failure
from strife.v1 import (
    bank_pb2,
    bank_pb2_grpc,
    coordinator_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    money_pb2,
)
from strife.v1 import coordinator_pb2_grpc as _coordinator_grpc

COORDINATOR_SERVICE = "strife.v1.Coordinator"
BANK_TIMEOUT_S = 2.0
_KEY = re.compile(r"[A-Za-z0-9._:-]{16,255}")
_TRANSFER_NAMESPACE = uuid.UUID("6f1c1a52-3d4e-4f0b-9a55-5a1d3c2b7e10")

AUTHZ = AuthzTable(
    {
        method: ("client", "admin")
        for method in service_methods(
            GATEWAY_SERVICE,
            ["Login", "ProcessPayment", "GetPayment", "GetBalance", "GetTransactionHistory"],
        )
    }
    | {f"/{COORDINATOR_SERVICE}/GetDecision": ("bank",)}
)

_STATUS = {
    PaymentState.PENDING: gateway_pb2.PAYMENT_STATUS_PENDING,
    PaymentState.COMMITTED: gateway_pb2.PAYMENT_STATUS_COMMITTED,
    PaymentState.ABORTED: gateway_pb2.PAYMENT_STATUS_ABORTED,
}


_log = get_logger("strife.gateway.service")


def transfer_id_for(bank: str, customer_id: str, key: str) -> str:
    """The same on every replica, so banks see one transfer however often it is
    retried. A customer is known by its bank and its id there: two banks may give
    the same customer id to different people, whose keys must never meet."""
    return str(uuid.uuid5(_TRANSFER_NAMESPACE, f"{bank}\n{customer_id}\n{key}"))


def fingerprint_of(request: gateway_pb2.ProcessPaymentRequest) -> bytes:
    canonical = "\n".join(
        [
            request.from_account.bank,
            request.from_account.account_id,
            request.to_account.bank,
            request.to_account.account_id,
            str(request.amount.amount_minor),
            request.amount.currency,
            request.description,
        ]
    )
    return hashlib.sha256(canonical.encode()).digest()


def payment_pb(record: PaymentRecord) -> gateway_pb2.Payment:
    return gateway_pb2.Payment(
        transfer_id=record.transfer_id,
        idempotency_key=record.idempotency_key,
        status=_STATUS[record.state],
        abort_reason=record.abort_reason,
        abort_transient=record.abort_transient,
        from_account=money_pb2.AccountRef(bank=record.from_bank, account_id=record.from_account),
        to_account=money_pb2.AccountRef(bank=record.to_bank, account_id=record.to_account),
        amount=money_pb2.Money(amount_minor=record.amount_minor, currency=record.currency),
        created_at_unix_ms=record.created_at_ms,
    )


class GatewayServicer(gateway_pb2_grpc.PaymentGatewayServicer):
    def __init__(
        self,
        store: GatewayStore,
        coordinator: PaymentCoordinator,
        banks: Banks,
        tokens: TokenAuthority,
        throttle: LoginThrottle,
    ) -> None:
        self.store = store
        self.coordinator = coordinator
        self.banks = banks
        self.tokens = tokens
        self.throttle = throttle
        # Clear while this process may not coordinate yet (the registry has not
        # confirmed that no other process runs under its name).
        self.ready = asyncio.Event()
        self.ready.set()

    # ------------------------------------------------------------------ login

    async def Login(
        self,
        request: gateway_pb2.LoginRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.LoginRequest, gateway_pb2.LoginResponse],
    ) -> gateway_pb2.LoginResponse:
        if not request.username or not request.password or not request.bank:
            await _invalid(context, "username, password and bank are required")
        stub = await self._bank(context, request.bank)
        # The attempt counts from now, so concurrent guesses cannot all reach
        # the bank before the first ones fail.
        attempt = self.throttle.begin(request.bank, request.username, _peer_host(context.peer()))
        if isinstance(attempt, float):
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                Reason.LOGIN_THROTTLED,
                "too many failed logins; try again later",
                retry_delay_s=attempt,
            )
        checked = False
        try:
            reply = await stub.AuthenticateCustomer(
                bank_pb2.AuthenticateCustomerRequest(
                    bank=request.bank, username=request.username, password=request.password
                ),
                timeout=BANK_TIMEOUT_S,
            )
            checked = True
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                checked = True
                self.throttle.failed(attempt)
            await _relay(context, exc)
        finally:
            if not checked:
                self.throttle.unchecked(attempt)
        self.throttle.succeeded(attempt)
        own = _own_accounts(request.bank, reply.accounts)
        accounts = [f"{a.ref.bank}/{a.ref.account_id}" for a in own]
        info = request_context.current()
        token, expires_at = self.tokens.issue(
            reply.customer_id,
            request.bank,
            accounts,
            cert_sha256=info.peer_cert_sha256 if info is not None else "",
        )
        if info is not None:
            info.customer = reply.customer_id
        return gateway_pb2.LoginResponse(
            access_token=token,
            expires_at_unix_ms=int(expires_at * 1000),
            customer_id=reply.customer_id,
            accounts=own,
        )

    # --------------------------------------------------------------- payments

    async def ProcessPayment(
        self,
        request: gateway_pb2.ProcessPaymentRequest,
        context: grpc.aio.ServicerContext[
            gateway_pb2.ProcessPaymentRequest, gateway_pb2.ProcessPaymentResponse
        ],
    ) -> gateway_pb2.ProcessPaymentResponse:
        if not self.ready.is_set():
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                Reason.NOT_READY,
                "this gateway is starting; try another or again shortly",
                retry_delay_s=0.5,
            )
        claims = current_claims()
        await self._validate_payment(context, request)
        if not claims.owns(request.from_account.bank, request.from_account.account_id):
            await _not_owner(context, request.from_account)
        key = request.idempotency_key
        record = PaymentRecord(
            customer_id=claims.customer_id,
            idempotency_key=key,
            transfer_id=transfer_id_for(claims.bank, claims.customer_id, key),
            fingerprint=fingerprint_of(request),
            state=PaymentState.PENDING,
            from_bank=request.from_account.bank,
            from_account=request.from_account.account_id,
            to_bank=request.to_account.bank,
            to_account=request.to_account.account_id,
            amount_minor=request.amount.amount_minor,
            currency=request.amount.currency,
            description=request.description,
        )
        request_context.note(
            amount_minor=record.amount_minor,
            currency=record.currency,
            transfer_id=record.transfer_id,
        )
        await self._require_known_banks(context, record)
        try:
            result, replayed = await self.coordinator.submit(record)
        except FingerprintMismatchError:
            await _key_reused(context, key)
        except InProgressError:
            await abort(
                context,
                grpc.StatusCode.ABORTED,
                Reason.REQUEST_IN_PROGRESS,
                "this payment is being processed elsewhere; ask again (GetPayment) shortly",
                retry_delay_s=0.2,
            )
        except TooManyInFlightError:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                Reason.TOO_MANY_IN_FLIGHT,
                "too many payments in flight at this gateway",
                retry_delay_s=0.05,
            )
        except STORAGE_FAILURES as exc:
            await abort_storage_failure(context, exc, "gateway")
        if replayed:
            request_context.note(replay=True)
        if result.state == PaymentState.PENDING:
            # Not ABORTED: that is a promise only a bank's answer can back (the
            # payment may still commit through another replica).
            await abort(
                context,
                grpc.StatusCode.ABORTED,
                Reason.REQUEST_IN_PROGRESS,
                "the outcome is not settled yet; ask again with the same key",
                retry_delay_s=0.5,
            )
        request_context.note(status=str(result.state), abort_reason=result.abort_reason or None)
        return gateway_pb2.ProcessPaymentResponse(payment=payment_pb(result), replayed=replayed)

    async def _validate_payment(
        self, context: AnyContext, request: gateway_pb2.ProcessPaymentRequest
    ) -> None:
        if not _KEY.fullmatch(request.idempotency_key):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.INVALID_IDEMPOTENCY_KEY,
                "idempotency_key must be 16-255 characters of [A-Za-z0-9._:-]"
                " (use a random UUIDv4 or ULID)",
            )
        for name in ("from_account", "to_account"):
            ref = getattr(request, name)
            if not ref.bank or not ref.account_id:
                await _invalid(context, f"{name} needs bank and account_id", field=name)
        if (request.from_account.bank, request.from_account.account_id) == (
            request.to_account.bank,
            request.to_account.account_id,
        ):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.SAME_ACCOUNT,
                "from_account and to_account are the same account",
            )
        try:
            check_currency(request.amount.currency)
            check_amount(request.amount.amount_minor, request.amount.currency)
        except MoneyError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, str(exc))
        if len(request.description) > MAX_DESCRIPTION_CHARS:
            await _invalid(context, "description too long", field="description")

    async def _require_known_banks(self, context: AnyContext, record: PaymentRecord) -> None:
        """NOT_FOUND is final for the key, so it is said only of a key this
        replica knows nothing of, naming a bank the registry has never had. A
        bank that is merely away is an outcome to wait for."""
        if self.coordinator.running(record.transfer_id) or self.store.by_transfer(
            record.transfer_id
        ):
            return
        for bank in (record.from_bank, record.to_bank):
            if not await self.banks.exists(bank):
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    Reason.BANK_NOT_FOUND,
                    f"no bank named {bank!r}",
                    {"bank": bank},
                )

    async def GetPayment(
        self,
        request: gateway_pb2.GetPaymentRequest,
        context: grpc.aio.ServicerContext[
            gateway_pb2.GetPaymentRequest, gateway_pb2.GetPaymentResponse
        ],
    ) -> gateway_pb2.GetPaymentResponse:
        claims = current_claims()
        key = request.idempotency_key
        tid = transfer_id_for(claims.bank, claims.customer_id, key)
        try:
            record = await self.coordinator.lookup(tid, key, claims.bank)
        except grpc.aio.AioRpcError as exc:
            await _relay(context, exc)
        if record is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                Reason.PAYMENT_NOT_FOUND,
                "no payment with this idempotency key",
            )
        return gateway_pb2.GetPaymentResponse(payment=payment_pb(record))

    # ------------------------------------------------------------------ reads

    async def GetBalance(
        self,
        request: gateway_pb2.GetBalanceRequest,
        context: grpc.aio.ServicerContext[
            gateway_pb2.GetBalanceRequest, gateway_pb2.GetBalanceResponse
        ],
    ) -> gateway_pb2.GetBalanceResponse:
        await self._require_owner(context, request.account)
        stub = await self._bank(context, request.account.bank)
        try:
            reply = await stub.GetAccountBalance(
                bank_pb2.GetAccountBalanceRequest(
                    bank=request.account.bank, account_id=request.account.account_id
                ),
                timeout=BANK_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            await _relay(context, exc)
        return gateway_pb2.GetBalanceResponse(balance=reply.balance)

    async def GetTransactionHistory(
        self,
        request: gateway_pb2.GetTransactionHistoryRequest,
        context: grpc.aio.ServicerContext[
            gateway_pb2.GetTransactionHistoryRequest, gateway_pb2.GetTransactionHistoryResponse
        ],
    ) -> gateway_pb2.GetTransactionHistoryResponse:
        await self._require_owner(context, request.account)
        stub = await self._bank(context, request.account.bank)
        try:
            reply = await stub.GetTransactionHistory(
                bank_pb2.BankHistoryRequest(
                    bank=request.account.bank,
                    account_id=request.account.account_id,
                    page_size=request.page_size,
                    page_token=request.page_token,
                ),
                timeout=BANK_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            await _relay(context, exc)
        return gateway_pb2.GetTransactionHistoryResponse(
            entries=reply.entries, next_page_token=reply.next_page_token
        )

    async def _require_owner(self, context: AnyContext, ref: money_pb2.AccountRef) -> None:
        """Owner only; then wait for this gateway's decisions on the account to reach
        its bank, so a customer reads what its own payments did."""
        if not current_claims().owns(ref.bank, ref.account_id):
            await _not_owner(context, ref)
        await self.coordinator.delivered(
            ref.bank, ref.account_id, self.coordinator.config.decision_timeout_s
        )

    async def _bank(self, context: AnyContext, bank: str) -> bank_pb2_grpc.BankServiceAsyncStub:
        """The stub for `bank`'s server; its server may host others, so every
        request sent on it names `bank`."""
        # Behind the server's circuit breaker: a GuardedStub, called as the stub it wraps.
        stub: bank_pb2_grpc.BankServiceAsyncStub | None = await self.coordinator.stub(bank)
        if stub is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                Reason.BANK_NOT_FOUND,
                f"no bank named {bank!r}",
                {"bank": bank},
            )
        return stub


class CoordinatorServicer(_coordinator_grpc.CoordinatorServicer):
    def __init__(self, coordinator: PaymentCoordinator) -> None:
        self.coordinator = coordinator

    async def GetDecision(
        self,
        request: coordinator_pb2.GetDecisionRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.GetDecisionRequest, coordinator_pb2.GetDecisionResponse
        ],
    ) -> coordinator_pb2.GetDecisionResponse:
        if not request.transfer_id:
            await _invalid(context, "transfer_id is required", field="transfer_id")
        decision = await self.coordinator.decision(request.transfer_id)
        request_context.note(transfer_id=request.transfer_id, decision=decision)
        return coordinator_pb2.GetDecisionResponse(
            transfer_id=request.transfer_id, decision=decision
        )


def _peer_host(peer: str) -> str:
    """ "ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1": throttle hosts, not connections."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


async def _relay(context: AnyContext, exc: grpc.aio.AioRpcError) -> NoReturn:
    """Pass a bank's refusal through with its reason; a dead bank is UNAVAILABLE."""
    error = from_rpc_error(exc)
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # An open circuit (no call made) says when its probe goes: RetryInfo.
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            Reason.BANK_UNAVAILABLE,
            "bank unreachable",
            retry_delay_s=error.retry_after_s,
        )
    await abort(
        context,
        error.code,
        error.reason or Reason.INTERNAL,
        error.message,
        error.metadata,
        retry_delay_s=error.retry_after_s,
    )


async def _invalid(context: AnyContext, message: str, field: str = "") -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_REQUEST,
        message,
        {"field": field} if field else None,
    )


def _own_accounts(bank: str, accounts: Sequence[money_pb2.Account]) -> list[money_pb2.Account]:
    """A bank speaks only for its own accounts: any other it lists is dropped."""
    own = [a for a in accounts if a.ref.bank == bank]
    if len(own) != len(accounts):
        foreign = sorted(f"{a.ref.bank}/{a.ref.account_id}" for a in accounts if a.ref.bank != bank)
        _log.warning("foreign_accounts_dropped", bank=bank, accounts=foreign)
    return own


async def _not_owner(context: AnyContext, ref: money_pb2.AccountRef) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.NOT_ACCOUNT_OWNER,
        f"account {ref.bank}/{ref.account_id} is not yours",
    )


async def _key_reused(context: AnyContext, key: str) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.IDEMPOTENCY_KEY_REUSED,
        "this idempotency key was used for a different payment",
        {"idempotency_key": key},
    )
