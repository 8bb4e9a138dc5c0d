"""A pool's channels take messages up to the size it was made for, and no larger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from strife.rpc.channels import MAX_MESSAGE_BYTES, ChannelPool

BIG = 16 * 1024 * 1024
_ECHO = "/test.Echo/Echo"


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(echo)
    return grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler})


@pytest.fixture
async def server() -> AsyncIterator[str]:
    options = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
    srv = grpc.aio.server(options=options)
    srv.add_generic_rpc_handlers((_echo_handler(),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await srv.stop(None)


async def test_a_pool_made_for_larger_messages_carries_them_both_ways(server: str) -> None:
    payload = bytes(6 * 1024 * 1024)
    async with ChannelPool(None, insecure=True, max_message_bytes=BIG) as pool:
        call: Any = pool.get(server).unary_unary(_ECHO)
        assert await call(payload, timeout=20) == payload
    async with ChannelPool(None, insecure=True) as default:
        call = default.get(server).unary_unary(_ECHO)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(payload, timeout=20)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(payload) > MAX_MESSAGE_BYTES
