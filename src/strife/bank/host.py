"""One gRPC server for one or several banks: route each request by its `bank`.

Banks sharing a process share its event loop, port and the gateways' batched
calls (a gateway batches per server address), instead of each waking up for
tiny batches of its own. Each bank keeps its own store, writer and resolver;
this only picks the bank. It is used for a single bank too, so a request
naming another bank is refused there as well: a misrouted prepare must never
apply at the wrong bank.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import NoReturn

import grpc

from strife.bank.service import (
    LEGS,
    MAX_BATCH,
    BankServicer,
    invalid,
    require_coordinator,
    storage_failure,
    transfer_outcome,
)
from strife.errors import AnyContext, Reason, abort
from strife.faults import decision_failpoints, failpoint, failpoint_async
from strife.observability import context as request_context
from strife.v1 import bank_pb2, bank_pb2_grpc


class BankHost(bank_pb2_grpc.BankServiceServicer):
    """BankService over several BankServicers, by bank name.

    An empty `bank` means the only bank of a one-bank host; on a host of
    several it is refused (INVALID_ARGUMENT BANK_REQUIRED), and a bank not
    hosted here is NOT_FOUND BANK_NOT_FOUND: for a single call as its status,
    for a batch item as that item's outcome.
    """

    def __init__(
        self, banks: Mapping[str, BankServicer], *, check_coordinator: bool = True
    ) -> None:
        if not banks or "" in banks:
            raise ValueError("a bank host needs at least one bank, each with a name")
        self.banks = dict(banks)
        self._check_coordinator = check_coordinator
        self._several = len(banks) > 1
        self._hosted = ", ".join(sorted(banks))
        # The whole routing decision is one dict lookup: "" is an alias of a lone bank.
        self._route: dict[str, BankServicer] = dict(banks)
        if not self._several:
            self._route[""] = next(iter(banks.values()))

    # ------------------------------------------------------------ single calls

    async def AuthenticateCustomer(
        self,
        request: bank_pb2.AuthenticateCustomerRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.AuthenticateCustomerRequest, bank_pb2.AuthenticateCustomerResponse
        ],
    ) -> bank_pb2.AuthenticateCustomerResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.AuthenticateCustomer(request, context)

    async def ValidateAccount(
        self,
        request: bank_pb2.ValidateAccountRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.ValidateAccountRequest, bank_pb2.ValidateAccountResponse
        ],
    ) -> bank_pb2.ValidateAccountResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.ValidateAccount(request, context)

    async def GetAccountBalance(
        self,
        request: bank_pb2.GetAccountBalanceRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.GetAccountBalanceRequest, bank_pb2.GetAccountBalanceResponse
        ],
    ) -> bank_pb2.GetAccountBalanceResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.GetAccountBalance(request, context)

    async def GetTransactionHistory(
        self,
        request: bank_pb2.BankHistoryRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.BankHistoryRequest, bank_pb2.BankHistoryResponse
        ],
    ) -> bank_pb2.BankHistoryResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.GetTransactionHistory(request, context)

    async def ProcessTransaction(
        self,
        request: bank_pb2.ProcessTransactionRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.ProcessTransactionRequest, bank_pb2.ProcessTransactionResponse
        ],
    ) -> bank_pb2.ProcessTransactionResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.ProcessTransaction(request, context)

    async def Prepare(
        self,
        request: bank_pb2.PrepareRequest,
        context: grpc.aio.ServicerContext[bank_pb2.PrepareRequest, bank_pb2.PrepareResponse],
    ) -> bank_pb2.PrepareResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.Prepare(request, context)

    async def Commit(
        self,
        request: bank_pb2.CommitRequest,
        context: grpc.aio.ServicerContext[bank_pb2.CommitRequest, bank_pb2.CommitResponse],
    ) -> bank_pb2.CommitResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.Commit(request, context)

    async def Abort(
        self,
        request: bank_pb2.AbortRequest,
        context: grpc.aio.ServicerContext[bank_pb2.AbortRequest, bank_pb2.AbortResponse],
    ) -> bank_pb2.AbortResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.Abort(request, context)

    async def GetTransfer(
        self,
        request: bank_pb2.GetTransferRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.GetTransferRequest, bank_pb2.GetTransferResponse
        ],
    ) -> bank_pb2.GetTransferResponse:
        bank = self._pick(request.bank) or await self._unrouted(context, request.bank)
        return await bank.GetTransfer(request, context)

    # ----------------------------------------------------------------- batches

    async def PrepareTransfers(
        self,
        request: bank_pb2.PrepareTransfersRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.PrepareTransfersRequest, bank_pb2.PrepareTransfersResponse
        ],
    ) -> bank_pb2.PrepareTransfersResponse:
        """Prepares in one call, voted on one by one: a NO for one leaves the rest.

        Items may name different banks of this host, and one transfer id may
        appear once per bank (the debit at alpha, the credit at beta). All
        items reach their banks' writers in the same loop turn, so each
        bank's PREPARED records share one fsync, as concurrent single
        Prepares under load would.
        """
        await failpoint_async("bank.before_prepare", *(p.transfer_id for p in request.prepares))
        prepares = list(request.prepares)
        routes = await self._routes(context, prepares, "prepare")
        if len({p.coordinator for p in prepares}) != 1:
            await invalid(context, "all prepares of one call name the same coordinator")
        if self._check_coordinator:
            await require_coordinator(context, prepares[0].coordinator)
        legs = [LEGS.get(p.leg) for p in prepares]
        if None in legs:
            await invalid(context, "leg must be LEG_DEBIT or LEG_CREDIT")
        request_context.note(prepares=len(prepares))
        results = await asyncio.gather(
            *(
                bank.prepare(p, leg)
                for bank, p, leg in zip(routes, prepares, legs, strict=True)
                if bank is not None
            ),
            return_exceptions=True,
        )
        await storage_failure(context, results)
        done = iter(results)
        outcomes = [
            transfer_outcome(p.transfer_id, next(done), refuse_aborted=True)
            if bank is not None
            else self._unrouted_outcome(p.transfer_id, p.bank)
            for bank, p in zip(routes, prepares, strict=True)
        ]
        return bank_pb2.PrepareTransfersResponse(outcomes=outcomes)

    async def DecideTransfers(
        self,
        request: bank_pb2.DecideTransfersRequest,
        context: grpc.aio.ServicerContext[
            bank_pb2.DecideTransfersRequest, bank_pb2.DecideTransfersResponse
        ],
    ) -> bank_pb2.DecideTransfersResponse:
        """Commit/Abort for several transfers at once; each answered on its own.

        The decisions reach each bank's writer together, so they share one
        group commit there; a refusal of one (say, a COMMIT of an aborted
        transfer, or a bank not hosted here) is reported in its outcome and
        does not touch the others.
        """
        await decision_failpoints(request.decisions)
        coordinator = request.coordinator
        if self._check_coordinator:
            await require_coordinator(context, coordinator)
        decisions = list(request.decisions)
        routes = await self._routes(context, decisions, "decision")
        if any(d.commit for d in decisions):
            failpoint("bank.before_commit")
        request_context.note(decisions=len(decisions))
        results = await asyncio.gather(
            *(
                bank.decide(d.transfer_id, d.commit, coordinator)
                for bank, d in zip(routes, decisions, strict=True)
                if bank is not None
            ),
            return_exceptions=True,
        )
        await storage_failure(context, results)
        done = iter(results)
        outcomes = [
            transfer_outcome(d.transfer_id, next(done), refuse_aborted=d.commit)
            if bank is not None
            else self._unrouted_outcome(d.transfer_id, d.bank)
            for bank, d in zip(routes, decisions, strict=True)
        ]
        return bank_pb2.DecideTransfersResponse(outcomes=outcomes)

    # ----------------------------------------------------------------- helpers

    def _pick(self, bank: str) -> BankServicer | None:
        servicer = self._route.get(bank)
        if self._several and servicer is not None:
            request_context.note(bank=bank)  # which of the banks, in the call's log line
        return servicer

    async def _routes(
        self,
        context: AnyContext,
        items: Sequence[bank_pb2.PrepareRequest | bank_pb2.TransferDecision],
        noun: str,
    ) -> list[BankServicer | None]:
        """Each item's bank (None: not routable here), after the batch checks:
        1 to MAX_BATCH items, and each transfer id non-empty and at most once per bank."""
        if not items or len(items) > MAX_BATCH:
            await invalid(context, f"send 1 to {MAX_BATCH} of them, not {len(items)}")
        ids = [item.transfer_id for item in items]
        if not all(ids):
            await invalid(context, f"each {noun} needs its own, non-empty transfer_id")
        routes = [self._route.get(item.bank) for item in items]
        if len(set(ids)) != len(ids) and len(
            {
                (bank.name if bank else item.bank, item.transfer_id)
                for bank, item in zip(routes, items, strict=True)
            }
        ) != len(ids):
            await invalid(context, f"each {noun} needs its own transfer_id at each bank")
        return routes

    def _refusal(self, bank: str) -> tuple[grpc.StatusCode, Reason, str]:
        if not bank:
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.BANK_REQUIRED,
                f"this server hosts several banks ({self._hosted}); name one in `bank`",
            )
        return (
            grpc.StatusCode.NOT_FOUND,
            Reason.BANK_NOT_FOUND,
            f"bank {bank!r} is not hosted here (hosted: {self._hosted})",
        )

    async def _unrouted(self, context: AnyContext, bank: str) -> NoReturn:
        code, reason, message = self._refusal(bank)
        await abort(context, code, reason, message, {"bank": bank})

    def _unrouted_outcome(self, transfer_id: str, bank: str) -> bank_pb2.TransferOutcome:
        code, reason, message = self._refusal(bank)
        return bank_pb2.TransferOutcome(
            transfer_id=transfer_id,
            error_reason=reason,
            error_code=code.value[0],
            error_message=message,
        )
