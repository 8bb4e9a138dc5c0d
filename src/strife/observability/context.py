"""Per-RPC facts that handlers learn and the logging interceptor reports.

A handler knows things the interceptor cannot see (the customer behind a
token, an amount, whether a key was replayed); it records them here and the
interceptor writes them into the one log line of the call.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestInfo:
    request_id: str
    method: str
    peer: str = ""
    role: str = ""
    peer_name: str = ""
    peer_address: str = ""
    # RFC 8705 `x5t#S256` of the verified client certificate ("" without one).
    peer_cert_sha256: str = ""
    customer: str = ""
    error_reason: str = ""
    # Who the caller is beyond its certificate (a customer's verified token claims).
    principal: Any = None
    fields: dict[str, Any] = field(default_factory=dict)


_current: ContextVar[RequestInfo | None] = ContextVar("strife_request", default=None)


def current() -> RequestInfo | None:
    """The RequestInfo of the RPC being served by this task, if any."""
    return _current.get()


def begin(info: RequestInfo) -> None:
    _current.set(info)


def note(**fields: Any) -> None:
    """Attach fields (amount, replay, ...) to the current RPC's log line."""
    info = _current.get()
    if info is not None:
        info.fields.update(fields)
