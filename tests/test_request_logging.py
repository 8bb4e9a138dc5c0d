"""One JSON line per RPC with the agreed fields; secrets never reach the log."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from strife.observability.logging import configure_logging, log_line, redact_secrets
from strife.rpc.channels import ChannelPool
from strife.v1 import coordinator_pb2, coordinator_pb2_grpc, gateway_pb2, gateway_pb2_grpc

from .conftest import Pki
from .support import running_server

PASSWORD = "hunter2-correct-horse"
TOKEN = "eyJhbGciOiJFZERTQSJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    yield stream
    configure_logging("json")


def rpc_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "rpc"]


async def test_one_line_per_rpc_with_fields(pki: Pki, log_stream: io.StringIO) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("bank", "alpha")) as pool,
    ):
        stub = coordinator_pb2_grpc.CoordinatorStub(pool.get(server.address))
        await stub.GetDecision(
            coordinator_pb2.GetDecisionRequest(transfer_id="c-1"),
            timeout=5,
            metadata=(("x-request-id", "req-abc"),),
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetDecision(coordinator_pb2.GetDecisionRequest(), timeout=5)

    lines = rpc_lines(log_stream)
    assert len(lines) == 2
    ok, failed = lines
    assert ok["method"] == "/strife.v1.Coordinator/GetDecision"
    assert ok["peer"] == "spiffe://strife.local/bank/alpha"
    assert ok["request_id"] == "req-abc"
    assert ok["code"] == "OK"
    assert ok["reason"] is None
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] >= 0
    assert str(ok["peer_address"]).startswith("ipv4:127.0.0.1:")
    assert failed["code"] == "INVALID_ARGUMENT"
    assert failed["reason"] == "INVALID_REQUEST"
    assert failed["request_id"] != "req-abc" and len(str(failed["request_id"])) == 16


async def test_password_and_bearer_token_never_logged(pki: Pki, log_stream: io.StringIO) -> None:
    async with (
        running_server(pki.identity("gateway", "gw-1")) as server,
        ChannelPool(pki.identity("client", "default")) as pool,
    ):
        stub = gateway_pb2_grpc.PaymentGatewayStub(pool.get(server.address))
        reply = await stub.Login(
            gateway_pb2.LoginRequest(username="ada", password="right", bank="alpha"),
            timeout=5,
            metadata=(("authorization", f"Bearer {TOKEN}"),),
        )
        assert reply.customer_id == "cust-42"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Login(
                gateway_pb2.LoginRequest(username="ada", password=PASSWORD, bank="alpha"),
                timeout=5,
                metadata=(("authorization", f"Bearer {TOKEN}"),),
            )
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

    text = log_stream.getvalue()
    assert PASSWORD not in text
    assert TOKEN not in text
    assert "[REDACTED]" in text
    assert "ada" in text  # the careless handler's line was written, only scrubbed
    lines = rpc_lines(log_stream)
    assert [line["code"] for line in lines] == ["OK", "UNAUTHENTICATED"]
    assert all(line["customer"] == "cust-42" and line["amount_minor"] == 1234 for line in lines)
    assert lines[1]["reason"] == "INVALID_CREDENTIALS"


def test_redaction_reaches_nested_values_and_card_numbers() -> None:
    event = {
        "event": "x",
        "request": {"user": "ada", "Password": "p", "nested": [{"api_key": "k"}]},
        "Authorization": "Bearer abc",
        "text": "paid with 4111 1111 1111 1111 and Bearer xyz.abc",
        "amount_minor": 4111111111111111,
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["request"] == {
        "user": "ada",
        "Password": "[REDACTED]",
        "nested": [{"api_key": "[REDACTED]"}],
    }
    assert out["Authorization"] == "[REDACTED]"
    assert "4111 1111" not in out["text"] and out["text"].count("1111") == 1
    assert "xyz.abc" not in out["text"]
    assert out["amount_minor"] == 4111111111111111  # integers are amounts, not cards


def test_redaction_is_case_blind_for_bearer_tokens() -> None:
    out = redact_secrets(None, "info", {"note": "sent bEaReR abc.def.ghi", "n": 5, "none": None})
    assert "abc.def.ghi" not in out["note"]
    assert out["n"] == 5 and out["none"] is None


def test_the_per_rpc_line_scrubs_what_callers_sent(log_stream: io.StringIO) -> None:
    log_line(
        "strife.rpc",
        "info",
        "rpc",
        {"method": "/strife.v1.PaymentGateway/ProcessPayment", "code": "OK"},
        {
            "request_id": f"Bearer {TOKEN}",
            "password": PASSWORD,
            "note": "4111 1111 1111 1111",
            "amount_minor": 1234,
        },
    )
    log_line("strife.rpc", "debug", "rpc", {"method": "/x"}, {})  # below the level: dropped
    [line] = [json.loads(raw) for raw in log_stream.getvalue().splitlines()]
    assert line["method"] == "/strife.v1.PaymentGateway/ProcessPayment"
    assert line["event"] == "rpc" and line["level"] == "info" and line["ts"].endswith("Z")
    assert line["password"] == "[REDACTED]"
    assert TOKEN not in log_stream.getvalue() and PASSWORD not in log_stream.getvalue()
    assert line["note"] == "************1111"
    assert line["amount_minor"] == 1234


def test_the_per_rpc_line_follows_a_console_configuration() -> None:
    stream = io.StringIO()
    configure_logging("console", "warning", stream=stream)
    try:
        log_line("strife.rpc", "info", "rpc", {"method": "/a"}, {})
        log_line("strife.rpc", "error", "rpc", {"method": "/b"}, {"password": PASSWORD})
    finally:
        configure_logging("json")
    text = stream.getvalue()
    assert "/a" not in text and "/b" in text and PASSWORD not in text
    assert not text.lstrip().startswith("{")


def test_an_unconfigured_process_keeps_info_out_of_stdout() -> None:
    """Used as a library, Strife must not print into the application's output."""
    code = (
        "from strife.observability.logging import get_logger\n"
        "log = get_logger('strife.client')\n"
        "log.info('routine', detail=1)\n"
        "log.warning('gateway_unreachable', token='t0ps3cret')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "gateway_unreachable" in done.stderr and "routine" not in done.stderr
    assert "t0ps3cret" not in done.stderr
