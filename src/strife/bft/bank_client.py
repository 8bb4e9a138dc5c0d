"""A replicated bank behind the shape of a bank stub.

`ReplicatedBank` has the async methods of `bank_pb2_grpc.BankServiceStub` that
the gateway calls (same requests, same responses, failures raised as
`grpc.aio.AioRpcError` with the same status codes and ErrorInfo reasons), so the
coordinator drives a replicated bank exactly as a plain one. Each call becomes
one PBFT operation (`strife.bft.bank_machine`), and its answer is believed only
with f + 1 matching signed replies (`Invoker`). When the call's deadline comes
first the call fails DEADLINE_EXCEEDED (BANK_UNAVAILABLE), which 2PC treats as
a bank that did not answer: it asks again, never assumes.

A login reads the customer's agreed record (password hash included) and
checks the password here, so the password never enters an ordered request.
The same ordered read counts the attempt in the group's login throttle, with
this gateway's wall-clock time, so the plain bank's limit per username holds
across every gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from strife.bank.ledger import (
    Changes,
    ErrorKind,
    LedgerError,
    Outcome,
    Transfer,
    TransferState,
    abort_error,
)
from strife.bank.service import (
    LEGS,
    MAX_CREDENTIAL_CHARS,
    transfer_outcome,
    transfer_response,
)
from strife.bft.bank_machine import operation, transfer_of
from strife.bft.group import Group, GroupError, load_signing_key
from strife.bft.invoker import Invoker, NoQuorumError
from strife.errors import Reason, from_rpc_error, make_status
from strife.rpc.channels import ChannelPool
from strife.rpc.limits import MAX_PAGE_SIZE
from strife.security.passwords import HashingBusyError, verify_password_async
from strife.v1 import bank_pb2, money_pb2

__all__ = ["AccountAudit", "ReplicatedBank", "connect"]

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
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_PAGE_SIZE = 50

_R = TypeVar("_R")


def rpc_error(
    code: grpc.StatusCode, reason: str, message: str, retry_delay_s: float | None = None
) -> grpc.aio.AioRpcError:
    """The error a plain bank's call would have raised, with its ErrorInfo (and RetryInfo)."""
    status = make_status(code, reason, message, retry_delay_s=retry_delay_s)
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=message,
    )


def _raise(error: LedgerError) -> NoReturn:
    raise rpc_error(_CODES[ErrorKind(error.kind)], error.reason, error.message)


@dataclass(frozen=True)
class AccountAudit:
    account: dict[str, Any]
    """The agreed record: account_id, currency, balance_minor, held_minor, ..."""
    agreeing: tuple[str, ...]
    """The replicas that answered with it (at least f + 1)."""
    dissenters: tuple[str, ...]
    """The replicas that answered something else: faulty, since f + 1 outvoted them."""


def _result(raw: bytes) -> dict[str, Any]:
    result = json.loads(raw)
    assert isinstance(result, dict), result
    error = result.get("error")
    if error is not None:
        _raise(LedgerError(ErrorKind(error["kind"]), error["reason"], error["message"]))
    return result


def _unavailable(exc: NoQuorumError) -> grpc.aio.AioRpcError:
    return rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, Reason.BANK_UNAVAILABLE, str(exc))


class ReplicatedBank:
    """The bank stub's methods, over a replica group's f + 1 client."""

    def __init__(self, invoker: Invoker, clock: Callable[[], int] = time.time_ns) -> None:
        self.invoker = invoker
        self.bank = invoker.group.bank
        self._clock = clock
        """Wall-clock nanoseconds: when a login attempt happened, as the group records it."""

    async def _run(self, op: bytes, timeout_s: float | None) -> dict[str, Any]:
        """The agreed result of one operation; a refusal raised as the bank's error."""
        try:
            raw = await self.invoker.invoke(op, timeout_s or DEFAULT_TIMEOUT_S)
        except NoQuorumError as exc:
            raise _unavailable(exc) from None
        return _result(raw)

    async def _outcome(self, op: bytes, timeout_s: float | None) -> Outcome:
        result = await self._run(op, timeout_s)
        return Outcome(transfer_of(result["transfer"]), Changes(), bool(result["replayed"]))

    async def _transfer_call(
        self, response: type[_R], op: bytes, timeout_s: float | None, aborted_is_success: bool
    ) -> _R:
        outcome = await self._outcome(op, timeout_s)
        if outcome.transfer.state == TransferState.ABORTED and not aborted_is_success:
            _raise(abort_error(outcome.transfer))
        reply: _R = response(  # type: ignore[call-arg]
            transfer_id=outcome.transfer.transfer_id,
            state=_STATES[outcome.transfer.state],
            replayed=outcome.replayed,
        )
        return reply

    # -- two-phase commit ----------------------------------------------------

    def _prepare_op(self, r: bank_pb2.PrepareRequest) -> bytes:
        leg = LEGS.get(r.leg)
        if leg is None:
            raise rpc_error(
                grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "leg must be set"
            )
        return operation(
            "prepare", transfer_id=r.transfer_id, coordinator=r.coordinator, leg=str(leg),
            account_id=r.account_id, amount_minor=r.amount.amount_minor,
            currency=r.amount.currency, fingerprint=r.fingerprint.hex(),
            counterparty=r.counterparty, customer_id=r.customer_id,
        )  # fmt: skip

    async def Prepare(
        self,
        request: bank_pb2.PrepareRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.PrepareResponse:
        op = self._prepare_op(request)
        return await self._transfer_call(bank_pb2.PrepareResponse, op, timeout, False)

    async def Commit(
        self,
        request: bank_pb2.CommitRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.CommitResponse:
        op = operation("commit", transfer_id=request.transfer_id, coordinator=request.coordinator)
        return await self._transfer_call(bank_pb2.CommitResponse, op, timeout, False)

    async def Abort(
        self,
        request: bank_pb2.AbortRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.AbortResponse:
        op = operation(
            "abort", transfer_id=request.transfer_id, coordinator=request.coordinator,
            release=bool(request.release),
        )  # fmt: skip
        return await self._transfer_call(bank_pb2.AbortResponse, op, timeout, True)

    async def ProcessTransaction(
        self,
        request: bank_pb2.ProcessTransactionRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.ProcessTransactionResponse:
        op = operation(
            "process", transfer_id=request.transfer_id, coordinator=request.coordinator,
            from_account=request.from_account_id, to_account=request.to_account_id,
            amount_minor=request.amount.amount_minor, currency=request.amount.currency,
            fingerprint=request.fingerprint.hex(), customer_id=request.customer_id,
        )  # fmt: skip
        return await self._transfer_call(bank_pb2.ProcessTransactionResponse, op, timeout, False)

    async def PrepareTransfers(
        self,
        request: bank_pb2.PrepareTransfersRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.PrepareTransfersResponse:
        """Each prepare is its own operation; they run concurrently, on separate lanes."""
        calls = [self._outcome(self._prepare_op(p), timeout) for p in request.prepares]
        results = await _gather(calls)
        return bank_pb2.PrepareTransfersResponse(
            outcomes=[
                transfer_outcome(p.transfer_id, result, refuse_aborted=True)
                for p, result in zip(request.prepares, results, strict=True)
            ]
        )

    async def DecideTransfers(
        self,
        request: bank_pb2.DecideTransfersRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.DecideTransfersResponse:
        calls = [
            self._outcome(
                operation(
                    "commit" if d.commit else "abort",
                    transfer_id=d.transfer_id,
                    coordinator=request.coordinator,
                    **({} if d.commit else {"release": False}),
                ),
                timeout,
            )
            for d in request.decisions
        ]
        results = await _gather(calls)
        return bank_pb2.DecideTransfersResponse(
            outcomes=[
                transfer_outcome(d.transfer_id, result, refuse_aborted=d.commit)
                for d, result in zip(request.decisions, results, strict=True)
            ]
        )

    async def GetTransfer(
        self,
        request: bank_pb2.GetTransferRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.GetTransferResponse:
        result = await self._run(operation("transfer", transfer_id=request.transfer_id), timeout)
        transfer: Transfer = transfer_of(result["transfer"])
        return transfer_response(transfer)

    # -- reads ---------------------------------------------------------------

    async def _account(self, account_id: str, timeout_s: float | None) -> dict[str, Any]:
        result = await self._run(operation("account", account_id=account_id), timeout_s)
        account: dict[str, Any] = result["account"]
        return account

    async def audit_account(
        self, account_id: str, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> AccountAudit:
        """An account's agreed record, and the replicas whose signed answer contradicted
        it (an auditor's read: it waits for every replica, up to `timeout_s`)."""
        op = operation("account", account_id=account_id)
        try:
            survey = await self.invoker.survey(op, timeout_s)
        except NoQuorumError as exc:
            raise _unavailable(exc) from None
        names = [r.name for r in self.invoker.group.replicas]
        return AccountAudit(
            _result(survey.result)["account"],
            tuple(names[r] for r, vote in sorted(survey.votes.items()) if vote == survey.result),
            tuple(names[r] for r in survey.dissenters),
        )

    async def GetAccountBalance(
        self,
        request: bank_pb2.GetAccountBalanceRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.GetAccountBalanceResponse:
        a = await self._account(request.account_id, timeout)
        currency = a["currency"]
        balance, held = a["balance_minor"], a["held_minor"]
        return bank_pb2.GetAccountBalanceResponse(
            balance=money_pb2.Balance(
                account=money_pb2.AccountRef(bank=self.bank, account_id=a["account_id"]),
                balance=money_pb2.Money(amount_minor=balance, currency=currency),
                held=money_pb2.Money(amount_minor=held, currency=currency),
                available=money_pb2.Money(amount_minor=balance - held, currency=currency),
            )
        )

    async def ValidateAccount(
        self,
        request: bank_pb2.ValidateAccountRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.ValidateAccountResponse:
        a = await self._account(request.account_id, timeout)
        if request.currency and request.currency != a["currency"]:
            raise rpc_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.CURRENCY_MISMATCH,
                f"account {request.account_id} holds {a['currency']}, not {request.currency}",
            )
        return bank_pb2.ValidateAccountResponse(
            account=money_pb2.Account(
                ref=money_pb2.AccountRef(bank=self.bank, account_id=a["account_id"]),
                customer_id=a["customer_id"],
                currency=a["currency"],
            )
        )

    async def GetTransactionHistory(
        self,
        request: bank_pb2.BankHistoryRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.BankHistoryResponse:
        """Newest first; the page token is the position of the last entry given."""
        if request.page_size < 0 or (request.page_token and not request.page_token.isdigit()):
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_TOKEN, "bad page")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        op = operation(
            "history", account_id=request.account_id,
            before=int(request.page_token or 0), limit=size + 1,
        )  # fmt: skip
        rows = (await self._run(op, timeout))["entries"]
        page, more = rows[:size], len(rows) > size
        return bank_pb2.BankHistoryResponse(
            entries=[
                money_pb2.LedgerEntry(
                    sequence=seq,
                    transfer_id=transfer_id,
                    account=money_pb2.AccountRef(bank=self.bank, account_id=account_id),
                    amount=money_pb2.Money(amount_minor=amount, currency=currency),
                    counterparty=counterparty,
                )
                for seq, transfer_id, account_id, amount, currency, counterparty in page
            ],
            next_page_token=str(page[-1][0]) if more else "",
        )

    async def AuthenticateCustomer(
        self,
        request: bank_pb2.AuthenticateCustomerRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **_: Any,
    ) -> bank_pb2.AuthenticateCustomerResponse:
        """The customer's agreed record, and the password checked here against its hash.

        As at a plain bank, the attempt is counted before the check (`login`),
        stays counted when the password is wrong, is given back when no password
        was checked (`login-release`), and a right one clears the username
        (`login-ok`); past the limit the group refuses before any check."""
        if not request.username or not request.password:
            raise rpc_error(
                grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "credentials required"
            )
        if max(len(request.username), len(request.password)) > MAX_CREDENTIAL_CHARS:
            raise rpc_error(
                grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "credentials too long"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or DEFAULT_TIMEOUT_S)

        def remaining() -> float:
            return max(0.001, deadline - loop.time())

        username, at_ns = request.username, self._clock()
        result = await self._run(operation("login", username=username, at_ns=at_ns), remaining())
        throttled = result.get("throttled")
        if throttled is not None:
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                Reason.LOGIN_THROTTLED,
                "too many failed logins; try again later",
                retry_delay_s=int(throttled["retry_after_ns"]) / 1_000_000_000,
            )
        customer = result["customer"]
        stored = None if customer is None else str(customer["password_hash"])
        try:
            ok = await verify_password_async(request.password, stored, remaining())
        except HashingBusyError as exc:
            release = operation("login-release", username=username, at_ns=at_ns)
            # Best effort: an attempt not given back counts until it leaves the window.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._run(release, remaining())
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                Reason.PASSWORD_CHECKS_BUSY,
                str(exc),
                retry_delay_s=exc.retry_after_s,
            ) from None
        if not ok or customer is None:
            # Unknown user and wrong password look the same; the attempt stays counted.
            raise rpc_error(
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.INVALID_CREDENTIALS,
                "wrong username or password",
            )
        # The password was right, so the customer is in even if the group cannot
        # order the clearing in time: the attempt then counts until it leaves the window.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._run(operation("login-ok", username=username), remaining())
        return bank_pb2.AuthenticateCustomerResponse(
            customer_id=customer["customer_id"],
            display_name=customer["display_name"],
            accounts=[
                money_pb2.Account(
                    ref=money_pb2.AccountRef(bank=self.bank, account_id=account_id),
                    customer_id=customer["customer_id"],
                    currency=currency,
                )
                for account_id, currency in customer["accounts"]
            ],
        )


def connect(
    group_file: Path, identity: str, signing_key: Path, pool: ChannelPool
) -> ReplicatedBank:
    """The client of the group in `group_file`, as certificate identity `identity`
    (`role/name`), signing with the Ed25519 key at `signing_key`."""
    group = Group.load(group_file)
    signer = load_signing_key(signing_key, identity)
    listed = {c.identity: c.public_key for c in group.clients}
    if listed.get(identity) != signer.key.public_key().public_bytes_raw():
        raise GroupError(f"{group_file} does not list {identity} with the key in {signing_key}")
    return ReplicatedBank(Invoker(group, identity, signer.key, pool))


async def _gather(calls: Sequence[Awaitable[Outcome]]) -> list[Outcome | BaseException]:
    """Outcomes, or the LedgerError each refusal stands for (what a batch reports per item)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    out: list[Outcome | BaseException] = []
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError) and result.code() in _KINDS:
            error = from_rpc_error(result)
            out.append(LedgerError(_KINDS[result.code()], error.reason, error.message))
        elif isinstance(result, BaseException):
            raise result
        else:
            out.append(result)
    return out


_KINDS = {code: kind for kind, code in _CODES.items()}
