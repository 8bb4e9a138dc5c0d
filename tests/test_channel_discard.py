"""A pooled channel discarded while others have calls on it.

Closing a grpc.aio channel at once cancels every call on it, and each caller
sees `asyncio.CancelledError`, as if it had been cancelled itself. A gateway
whose balancer client discarded the balancer's channel lost its heartbeat
and its settler that way: both loops ended without a word, the registry
forgot the gateway, and a bank in doubt could no longer find its
coordinator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from strife.rpc.cancellation import cancelled_itself
from strife.rpc.channels import ChannelPool

METHOD = "/test.Slow/Call"


@pytest.fixture
async def slow_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    release = asyncio.Event()

    async def call(request: bytes, context: object) -> bytes:
        await release.wait()
        return b"done"

    handler = grpc.method_handlers_generic_handler(
        "test.Slow", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", release
    finally:
        release.set()
        await server.stop(None)


async def test_a_call_in_flight_survives_its_channel_being_discarded(
    slow_server: tuple[str, asyncio.Event],
) -> None:
    target, release = slow_server
    pool = ChannelPool(None, insecure=True)
    try:
        # No serializers: requests and responses are the raw bytes.
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = pool.get(target).unary_unary(METHOD)
        in_flight = asyncio.ensure_future(call(b"", timeout=10))
        await asyncio.sleep(0)  # let it start; ordering, not a wait for time
        for _ in range(50):
            if in_flight.done():
                break
            await asyncio.sleep(0)
        await pool.discard(target)
        again: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = pool.get(target).unary_unary(METHOD)
        fresh = again(b"", timeout=10)
        release.set()
        assert await asyncio.wait_for(in_flight, 10) == b"done"
        assert await asyncio.wait_for(fresh, 10) == b"done"
    finally:
        await pool.close()


async def test_a_loop_tells_its_own_cancellation_from_a_calls() -> None:
    """A call cancelled from outside (its channel closed) raises CancelledError
    in the caller; `cancelled_itself` is false there and true once the task
    itself is asked to stop."""
    seen: list[bool] = []
    go_on = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                raise asyncio.CancelledError  # what a call cancelled under us raises
            except asyncio.CancelledError:
                seen.append(cancelled_itself())
                if cancelled_itself():
                    raise
            go_on.set()
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(loop())
    await asyncio.wait_for(go_on.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [False]
