"""A PBFT client over gRPC: send a request to every replica, believe f + 1 of them.

`Invoker.invoke(operation)` signs a request, sends it to every replica of the
group (`Invoke`, over mTLS to each replica's own certificate) and feeds every
signed reply to the pure `strife.bft.client.Client`, which accepts a result
only when f + 1 distinct replicas vouch for the same one. A replica that does
not answer in time is asked again until the caller's deadline; when the
deadline comes first, `NoQuorumError`: the client never settles for fewer
vouchers, whatever arrived. A request the replicas refuse to take at all (a
client asking what its certificate does not allow) fails with their status
once f + 1 of them refused alike.

The paper's client has one request outstanding. Concurrency comes from lanes:
lane k is client `<identity>#k` with its own timestamps (the wall clock in
nanoseconds, so they keep growing across restarts of the client process),
signing with the identity's one key.

`Invoker.survey(operation)` is the auditor's variant: it settles on the same
f + 1 rule, then keeps listening until every replica answered (or the
deadline), so it can name the replicas whose signed reply contradicted the
agreed result. A dissent proves that replica faulty only because f + 1
replicas, one of them honest, vouched for the other result.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.bft.certificates import signed_by
from strife.bft.client import Client
from strife.bft.group import Group, lane_identity
from strife.bft.messages import Reply, Request
from strife.bft.node import INVOKE
from strife.bft.signing import Ed25519Signer
from strife.bft.wire import WireError, decode, encode
from strife.rpc.channels import ChannelPool, Peer

__all__ = ["Invoker", "NoQuorumError", "Survey"]

RETRY_S = 2.0
"""How long one call to a replica waits before it is asked again."""


class NoQuorumError(TimeoutError):
    """The deadline came before f + 1 replicas agreed on a result."""

    def __init__(self, message: str, votes: dict[int, bytes]) -> None:
        super().__init__(message)
        self.votes = votes
        """What each replica that answered said (for diagnosis; proves nothing)."""


@dataclass(frozen=True)
class Survey:
    """An agreed result and what every replica that answered in time said."""

    result: bytes
    vouchers: tuple[int, ...]
    votes: dict[int, bytes]

    @property
    def dissenters(self) -> tuple[int, ...]:
        """The replicas whose signed reply differs from the agreed result."""
        return tuple(sorted(r for r, vote in self.votes.items() if vote != self.result))


class Invoker:
    def __init__(
        self,
        group: Group,
        identity: str,
        key: Ed25519PrivateKey,
        pool: ChannelPool,
        *,
        lanes: int = 32,
        retry_s: float = RETRY_S,
    ) -> None:
        self.group = group
        self.retry_s = retry_s
        verifier = self._verifier = group.verifier()
        self._lanes: asyncio.Queue[Client] = asyncio.Queue()
        for k in range(lanes):
            signer = Ed25519Signer(lane_identity(identity, k), key)
            self._lanes.put_nowait(Client(group.config, signer, verifier))
        self._calls: list[Any] = [
            pool.get(entry.address, Peer("bank", entry.name)).unary_unary(INVOKE)
            for entry in group.replicas
        ]

    async def invoke(self, operation: bytes, timeout_s: float) -> bytes:
        """The agreed result of `operation`; NoQuorumError when `timeout_s` passes first."""
        return (await self._call(operation, timeout_s, everyone=False)).result

    async def survey(self, operation: bytes, timeout_s: float) -> Survey:
        """The agreed result, and every replica's vote heard before all answered or
        `timeout_s` passed; NoQuorumError when no result was agreed in time."""
        return await self._call(operation, timeout_s, everyone=True)

    async def _call(self, operation: bytes, timeout_s: float, *, everyone: bool) -> Survey:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):  # every lane busy: the deadline still holds
                client = await self._lanes.get()
        except TimeoutError:
            raise NoQuorumError(f"no free lane to {self.group.bank} in time", {}) from None
        try:
            client.current = None  # an earlier call that timed out is given up
            client.timestamp = max(client.timestamp, time.time_ns())
            data = encode(client.request(operation))
            return await self._collect(client, data, deadline, everyone)
        finally:
            client.current = None
            self._lanes.put_nowait(client)

    async def _collect(
        self, client: Client, data: bytes, deadline: float, everyone: bool
    ) -> Survey:
        loop = asyncio.get_running_loop()
        calls: dict[asyncio.Task[bytes], int] = {}
        retry_at: dict[int, float] = dict.fromkeys(range(len(self._calls)), loop.time())
        votes: dict[int, bytes] = {}
        refusals: dict[int, tuple[grpc.StatusCode, str]] = {}
        weak = self.group.config.weak
        request = client.current
        assert request is not None
        agreed: Survey | None = None
        try:
            while True:
                now = loop.time()
                if agreed is not None and (now >= deadline or len(votes) == len(self._calls)):
                    return Survey(agreed.result, agreed.vouchers, dict(votes))
                if now >= deadline:
                    raise NoQuorumError(
                        f"no {self.group.config.weak} matching replies from {self.group.bank}",
                        votes,
                    )
                for replica, at in list(retry_at.items()):
                    if at <= now:
                        del retry_at[replica]
                        wait = min(self.retry_s, deadline - now)
                        task = asyncio.ensure_future(self._calls[replica](data, timeout=wait))
                        calls[task] = replica
                wake = min([deadline, *retry_at.values()])
                if not calls:
                    await asyncio.sleep(max(0.0, wake - loop.time()))
                    continue
                done, _ = await asyncio.wait(
                    calls, timeout=max(0.0, wake - loop.time()), return_when="FIRST_COMPLETED"
                )
                for task in done:
                    replica = calls.pop(task)
                    refusal = _refusal_of(task)
                    if refusal is not None:
                        # Unsigned, but f + 1 alike include an honest replica's.
                        refusals[replica] = (refusal.code(), refusal.details() or "")
                        if list(refusals.values()).count(refusals[replica]) >= weak:
                            raise refusal
                        retry_at[replica] = loop.time() + self.retry_s
                        continue
                    reply = _reply_of(task)
                    # Nothing yet, or not this replica's own answer: ask again later. A
                    # survey names dissenters, so it counts only this request's signed
                    # replies; `invoke` keeps what it heard for diagnosis alone.
                    if (
                        reply is None
                        or reply.replica != replica
                        or (everyone and not self._genuine(reply, request))
                    ):
                        retry_at[replica] = loop.time() + min(0.2, self.retry_s)
                        continue
                    votes.setdefault(replica, reply.result)
                    accepted = client.on_reply(reply) if agreed is None else None
                    if accepted is not None:
                        agreed = Survey(accepted.result, accepted.vouchers, {})
                        if not everyone:
                            return agreed
        finally:
            for task in calls:
                task.cancel()

    def _genuine(self, reply: Reply, request: Request) -> bool:
        """Signed by the replica it names, and answering `request`."""
        ours = (reply.client, reply.timestamp) == (request.client, request.timestamp)
        return ours and signed_by(self._verifier, reply)


_REFUSALS = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


def _refusal_of(task: asyncio.Task[Any]) -> grpc.aio.AioRpcError | None:
    """A replica's refusal to take the request at all (not a failure to answer)."""
    if task.cancelled():
        return None
    error = task.exception()
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in _REFUSALS:
        return error
    return None


def _reply_of(task: asyncio.Task[Any]) -> Reply | None:
    try:
        data = task.result()
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        return None
    if not data:
        return None
    try:
        reply = decode(data)
    except WireError:
        return None
    return reply if isinstance(reply, Reply) else None
