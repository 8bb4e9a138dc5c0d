"""How a storage failure reaches the caller: one mapping for every server.

A full write queue is load the caller may retry shortly (RESOURCE_EXHAUSTED
with a RetryInfo); a failing writer is UNAVAILABLE, so the caller goes to
another replica or waits while this process stops and recovers from disk.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from strife.errors import AnyContext, Reason, abort
from strife.storage.sqlite import QueueFullError, WriterFailedError

StorageFailure = QueueFullError | WriterFailedError
STORAGE_FAILURES = (QueueFullError, WriterFailedError)


async def abort_storage_failure(context: AnyContext, exc: StorageFailure, owner: str) -> NoReturn:
    """End the RPC with the status `exc` stands for; `owner` ("bank", "gateway") names whose."""
    if isinstance(exc, QueueFullError):
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            Reason.QUEUE_FULL,
            f"the {owner}'s write queue is full; retry with backoff",
            retry_delay_s=0.05,
        )
    await abort(
        context, grpc.StatusCode.UNAVAILABLE, Reason.INTERNAL, f"{owner} storage is failing"
    )
