"""Every attack of the table in `cases.py`: its status and ErrorInfo reason, and that
nothing changed (balances and holds, ledger lines, the registry, logins granted)."""

from __future__ import annotations

import grpc
import pytest

from strife.errors import from_rpc_error

from .cases import CASES, Case
from .harness import Session


def param(c: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
    return pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", [param(c) for c in CASES])
async def test_attack_is_refused_and_changes_nothing(case: Case, s: Session) -> None:
    if case.setup is not None:
        await case.setup(s)
    before = await s.snapshot()
    logins = s.logins_granted() if case.category == "login" else 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await case.run(s)
    error = from_rpc_error(caught.value)
    assert (error.code, error.reason) == (case.code, case.reason), error
    assert await s.snapshot() == before
    if case.category == "login":
        assert s.logins_granted() == logins, "a session was issued"
