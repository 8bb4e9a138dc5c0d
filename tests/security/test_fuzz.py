"""Hypothesis fuzzing of every public RPC's request message, through the real
processes: never UNKNOWN or INTERNAL, every refusal carries an ErrorInfo reason,
no process dies, and a refused call that could write changes nothing.

Bounded and deterministic: `derandomize=True`, a few examples per RPC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strife.errors import from_rpc_error
from strife.v1 import balancer_pb2, bank_pb2, coordinator_pb2, gateway_pb2

from .harness import TIMEOUT_S, Session, State

EXAMPLES = 12
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
WORDS = [
    "",
    "alpha",
    "beta",
    "gamma",
    "ada",
    "ada-usd",
    "bob-usd",
    "cy-usd",
    "c-ada",
    "gw-1",
    "gw-2",
    "bank",
    "gateway",
    "USD",
    "EUR",
    "127.0.0.1:1",
    "' OR 1=1 --",
    "\0",
    "ÜSD",
    "x" * 300,
    "attack-fuzz-key-000001",
]
strings = st.one_of(st.sampled_from(WORDS), st.text(max_size=24))


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=48)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64)
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None  # an enum field always has its enum
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(*INT32))
    bounds = INT64 if t == FieldDescriptor.TYPE_INT64 else INT32
    edges = [bounds[0], bounds[1], -1, 0, 1, 100]
    return st.one_of(st.sampled_from(edges), st.integers(*bounds))


def message(descriptor: Descriptor) -> st.SearchStrategy[Any]:
    """Any request of this type: each field present or not, at its bounds or random."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            fields[field.name] = st.dictionaries(strings, strings, max_size=3)
        elif sub is not None:
            one = message(sub)
            fields[field.name] = st.lists(one, max_size=3) if _repeated(field) else one
        else:
            one = scalar(field)
            fields[field.name] = st.lists(one, max_size=3) if _repeated(field) else one

    def build(values: dict[str, Any]) -> Any:
        built = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(built, name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target.update(value)
            elif _repeated(field) and field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            elif _repeated(field):
                target.extend(value)
            elif field.message_type is not None:
                target.CopyFrom(value)
            else:
                setattr(built, name, value)
        return built

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@dataclass(frozen=True)
class Target:
    service: str  # gateway, bank, coordinator, balancer
    method: str
    request: Any  # the message class
    caller: tuple[str, str]
    writes: bool  # may write: a refusal must leave the state as it was (reads cannot change it)


TARGETS = [
    Target("gateway", "Login", gateway_pb2.LoginRequest, ("client", "default"), False),
    Target(
        "gateway", "ProcessPayment", gateway_pb2.ProcessPaymentRequest, ("client", "default"), True
    ),
    Target("gateway", "GetPayment", gateway_pb2.GetPaymentRequest, ("client", "default"), False),
    Target("gateway", "GetBalance", gateway_pb2.GetBalanceRequest, ("client", "default"), False),
    Target(
        "gateway",
        "GetTransactionHistory",
        gateway_pb2.GetTransactionHistoryRequest,
        ("client", "default"),
        False,
    ),
    Target(
        "coordinator", "GetDecision", coordinator_pb2.GetDecisionRequest, ("bank", "alpha"), False
    ),
    *[
        Target("bank", m, getattr(bank_pb2, r), ("gateway", "gw-1"), w)
        for m, r, w in [
            ("AuthenticateCustomer", "AuthenticateCustomerRequest", False),
            ("ValidateAccount", "ValidateAccountRequest", False),
            ("GetAccountBalance", "GetAccountBalanceRequest", False),
            ("GetTransactionHistory", "BankHistoryRequest", False),
            ("ProcessTransaction", "ProcessTransactionRequest", True),
            ("Prepare", "PrepareRequest", True),
            ("Commit", "CommitRequest", True),
            ("Abort", "AbortRequest", True),
            ("DecideTransfers", "DecideTransfersRequest", True),
            ("PrepareTransfers", "PrepareTransfersRequest", True),
            ("GetTransfer", "GetTransferRequest", False),
        ]
    ],
    *[
        Target("balancer", m, getattr(balancer_pb2, f"{m}Request"), ("bank", "fuzz"), w)
        for m, w in [
            ("Register", True),
            ("Deregister", True),
            ("ReportServerLoad", True),
            ("GetBestServer", False),
            ("ListServers", False),
        ]
    ],
]


def without_own_lease(state: State) -> State:
    """The fuzzing identity (bank/fuzz) may register itself; nobody else may change."""
    return State(
        state.accounts, state.ledger_lines, tuple(r for r in state.registry if r[1] != "fuzz")
    )


def stub_for(s: Session, target: Target) -> Callable[..., Any]:
    pool = s.as_role(*target.caller)
    stub = {
        "gateway": lambda: s.gateway_stub(pool, "gw-2"),
        "coordinator": lambda: s.coordinator_stub(pool),
        "bank": lambda: s.bank_stub(pool),
        "balancer": lambda: s.balancer_stub(pool),
    }[target.service]()
    method: Callable[..., Any] = getattr(stub, target.method)
    return method


def examples(target: Target) -> list[Any]:
    """The requests Hypothesis draws for this RPC: the same ones on every run."""
    drawn: list[Any] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=message(target.request.DESCRIPTOR))
    def draw(request: Any) -> None:
        drawn.append(request)

    draw()
    return drawn


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t.service}-{t.method}")
async def test_fuzzed_requests_are_answered_or_refused_cleanly(target: Target, s: Session) -> None:
    call = stub_for(s, target)
    metadata = await s.auth("ada") if target.service == "gateway" else ()
    for request in examples(target):
        before = without_own_lease(await s.snapshot()) if target.writes else None
        try:
            await call(request, timeout=TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            assert error.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
                error,
                request,
            )
            assert error.reason, f"a refusal without an ErrorInfo reason: {error} for {request}"
            if before is not None:
                assert without_own_lease(await s.snapshot()) == before, request
    for process in [
        *s.world.cluster.banks.values(),
        *s.world.cluster.gateways.values(),
        s.world.balancer,
    ]:
        assert process.proc is not None and process.proc.poll() is None, process.script
