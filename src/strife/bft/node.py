"""The grpc.aio shell around one pure `Replica`: real timers, real peers, a journal.

The replica decides everything; the node only carries it out. Each incoming
message and each timer expiry is one `handle` call, run to completion on the
event loop (no await inside), so the replica needs no locks. Its outputs are
carried out in order: what executed is journalled first (one SQLite
transaction), then messages leave, replies reach their waiting clients and
timers are set.

Three methods on one generic service (no protobuf: the payload is the core's
canonical encoding, `strife.bft.wire`), behind the same mTLS, authorization and
logging as every Strife server:

- `Deliver` (replica to replica, role bank): a stream of protocol messages
  from one peer (`strife.bft.links`). Every message's claimed sender must be
  the replica whose certificate opened the stream (the group file names each
  replica's certificate), so a replica cannot speak in another's name even
  before the signature is checked, and a replayed message of another replica
  is dropped here. (A NEW-VIEW, which proves itself, may be passed on.)
- `Invoke` (client to replica: gateways, admins, and replicas voting on an
  in-doubt transfer): one signed request; the answer is this replica's signed
  reply once it executed the request, or an empty answer when the call's
  deadline comes first (the client asks again). Only the certificate named by
  the request's client id may send it.
- `Status` (admin): the replica's view, sequence numbers and state digest, as JSON.

What a client may ask is the application's rule (`admit`). It is part of
what makes a request valid, next to its client's signature, so the node
checks it wherever the replica checks a request's signature: a request
arriving by itself, and every request inside a pre-prepare, a view change's
prepared certificates and a new view. A faulty primary therefore cannot get
a request the rule refuses prepared at an honest replica, even one its
client sent to that primary alone.

Messages to peers go on one stream per peer, never waited for: PBFT
tolerates loss, and a slow or dead peer must not hold anything up. What loss
can cost is a replica that never hears of a checkpoint it is behind (it was
restarting while the group moved on, and the group went quiet): so every
`CHECKPOINT_RESEND_S` a node sends its own latest checkpoint again, and a
replica that is behind sees 2f+1 of them and fetches the state.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from strife.bft.byzantine import Behaviour, Wire
from strife.bft.effects import (
    Broadcast,
    CancelTimer,
    CheckpointTaken,
    Executed,
    Output,
    Receive,
    Send,
    SendReply,
    SetTimer,
    StateInstalled,
    TimerExpired,
    ViewEntered,
)
from strife.bft.group import Group, client_base
from strife.bft.journal import Journal
from strife.bft.links import Link
from strife.bft.messages import (
    DOMAIN,
    Checkpoint,
    Message,
    NewView,
    Reply,
    Request,
    state_digest,
)
from strife.bft.recovery import resume, stable_state
from strife.bft.replica import Replica
from strife.bft.signing import Signer, Verifier
from strife.bft.statemachine import StateMachine
from strife.bft.wire import WireError, decode, encode
from strife.errors import AnyContext, Reason, abort
from strife.observability import context as request_context
from strife.observability.logging import get_logger
from strife.rpc.authz import AuthzTable
from strife.rpc.channels import ChannelPool, Peer

__all__ = ["AUTHZ", "DELIVER", "INVOKE", "SERVICE", "STATUS", "ReplicaNode"]

SERVICE = "strife.bft.Replica"
DELIVER = f"/{SERVICE}/Deliver"
INVOKE = f"/{SERVICE}/Invoke"
STATUS = f"/{SERVICE}/Status"
AUTHZ = AuthzTable({DELIVER: ("bank",), INVOKE: ("gateway", "admin", "bank"), STATUS: ("admin",)})
CHECKPOINT_RESEND_S = 2.0
MAX_INVOKE_WAIT_S = 30.0
_log = get_logger("strife.bft")


Admit = Callable[[str, bytes], bool]
"""Whether client `client` (`role/name#lane`) may ask for `operation`; deterministic."""


class AdmittingVerifier:
    """A verifier that also refuses the requests `admit` refuses (see the module's docstring)."""

    def __init__(self, inner: Verifier, admit: Admit) -> None:
        self._inner = inner
        self._admit = admit

    def verify(self, identity: str, payload: bytes, signature: bytes) -> bool:
        if not self._inner.verify(identity, payload, signature):
            return False
        if not payload.startswith(_REQUEST_PAYLOAD):
            return True
        try:
            body = json.loads(payload[len(_REQUEST_PAYLOAD) :])
            operation = bytes.fromhex(body["operation"])
        except (ValueError, KeyError, TypeError):
            return False
        return body.get("client") == identity and self._admit(identity, operation)


_REQUEST_PAYLOAD = DOMAIN + Request.KIND.encode() + b"\n"


def _may_send(sender: int, message: Message) -> bool:
    """A replica speaks only for itself, with one exception: a NEW-VIEW, which
    proves itself (its primary's signature over 2f+1 signed view-changes), is
    passed on by replicas already in that view to one that missed it. Requests
    come from their clients (Invoke), never from a replica."""
    if isinstance(message, Request):
        return False
    return isinstance(message, NewView) or message.replica == sender


class ReplicaNode:
    """Replica `index` of `group`, executing into `app`; build it inside the running loop."""

    def __init__(
        self,
        group: Group,
        index: int,
        signer: Signer,
        app: StateMachine,
        journal: Journal,
        pool: ChannelPool,
        behaviour: Behaviour | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.group = group
        self.index = index
        self.journal = journal
        self.behaviour = behaviour
        self._admit = admit
        verifier: Verifier = group.verifier()
        if admit is not None:
            verifier = AdmittingVerifier(verifier, admit)
        self.replica = Replica(group.config, index, signer, verifier, app)
        self.dropped: Counter[str] = Counter()
        self._pool = pool
        self._links = {
            i: Link(pool.get(entry.address, Peer("bank", entry.name)).stream_unary(DELIVER),
                    self.dropped)
            for i, entry in enumerate(group.replicas)
            if i != index
        }  # fmt: skip
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waiting: dict[tuple[str, int], list[asyncio.Future[bytes]]] = {}
        self._saved_seq = -1
        self._loop = asyncio.get_running_loop()
        self._checkpoint: Checkpoint | None = None
        self._resend = self._loop.call_later(CHECKPOINT_RESEND_S, self._resend_checkpoint)

    # -- life cycle ----------------------------------------------------------

    def recover(self) -> None:
        """Come back from the journal (or write the genesis checkpoint on a first start)."""
        self.journal.identity(self.group.bank, self.index)
        saved = self.journal.load()
        if saved is None:
            genesis = stable_state(self.replica)
            assert genesis is not None
            self.journal.write([], genesis)
            self._saved_seq = 0
            _log.info("replica_initialised", replica=self.index, digest=genesis.digest.hex())
            return
        outputs = resume(self.replica, saved)
        self._saved_seq = saved.seq
        # Re-execution is already journalled and nobody waits for its replies; a
        # checkpoint it took goes out again (peers take the same one as a duplicate).
        self._carry([o for o in outputs if isinstance(o, Broadcast)])
        _log.info(
            "replica_recovered",
            replica=self.index,
            checkpoint=saved.seq,
            replayed=len(saved.log),
            last_executed=self.replica.last_executed,
        )

    def register(self, server: grpc.aio.Server) -> None:
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "Deliver": grpc.stream_unary_rpc_method_handler(self._deliver),
            "Invoke": grpc.unary_unary_rpc_method_handler(self._invoke),
            "Status": grpc.unary_unary_rpc_method_handler(self._status),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    async def close(self) -> None:
        self._resend.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for waiters in self._waiting.values():
            for future in waiters:
                future.cancel()
        await asyncio.gather(*(link.close() for link in self._links.values()))

    # -- the three methods -------------------------------------------------------

    async def _deliver(self, stream: AsyncIterator[bytes], context: AnyContext) -> bytes:
        sender = self._peer_replica()
        async for data in stream:
            try:
                message = decode(data, self.group.config.largest_message_bytes)
            except WireError:
                self.dropped["malformed"] += 1
                continue
            if sender is None or not _may_send(sender, message):
                self.dropped["wrong-sender"] += 1
                continue
            self._receive(message)
        return b""

    async def _invoke(self, data: bytes, context: AnyContext) -> bytes:
        try:
            request = decode(data)
        except WireError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, str(exc))
        if not isinstance(request, Request):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST,
                "Invoke takes a request",
            )  # fmt: skip
        info = request_context.current()
        caller = f"{info.role}/{info.peer_name}" if info is not None else ""
        if client_base(request.client) != caller:
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_COORDINATOR,
                f"peer {caller!r} may not send requests of client {request.client!r}",
            )  # fmt: skip
        if self._admit is not None and not self._admit(request.client, request.operation):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, Reason.METHOD_NOT_ALLOWED,
                f"client {request.client!r} may not ask for this operation",
            )  # fmt: skip
        key = (request.client, request.timestamp)
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        try:
            self._receive(request)
            remaining = context.time_remaining()
            wait = MAX_INVOKE_WAIT_S if remaining is None else max(0.0, remaining - 0.05)
            async with asyncio.timeout(min(wait, MAX_INVOKE_WAIT_S)):
                return await future
        except TimeoutError:
            return b""
        finally:
            waiters = self._waiting.get(key, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(key, None)

    async def _status(self, data: bytes, context: AnyContext) -> bytes:
        r = self.replica
        digest = state_digest(r.app.digest(), tuple(r.clients.values()))
        status: dict[str, Any] = {
            "replica": self.index,
            "view": r.view,
            "active": r.active,
            "last_executed": r.last_executed,
            "stable": r.stable.seq,
            "state_digest": digest.hex(),
            "app_digest": r.app.digest().hex(),
            "behaviour": self.behaviour.name if self.behaviour is not None else "honest",
            "dropped": dict(r.dropped + self.dropped),
        }
        return json.dumps(status, sort_keys=True).encode()

    # -- driving the replica -----------------------------------------------------

    def _peer_replica(self) -> int | None:
        info = request_context.current()
        if info is None or info.role != "bank":
            return None
        return self.group.index_of(info.peer_name)

    def _receive(self, message: Message) -> None:
        if self.behaviour is not None and not self.behaviour.hears(message):
            return
        self._carry(self.replica.handle(Receive(message)))

    def _expire(self, kind: str) -> None:
        self._timers.pop(kind, None)
        if self.behaviour is not None and self.behaviour.name == "silent":
            return
        self._carry(self.replica.handle(TimerExpired(kind)))

    def _carry(self, outputs: Sequence[Output]) -> None:
        """Journal, then send, reply and set timers, in the replica's order."""
        self._journal(outputs)
        wires: list[Wire] = []
        n = self.group.config.n
        for o in outputs:
            match o:
                case Send():
                    wires.append(Wire(o.to, o.message))
                case Broadcast():
                    wires += [Wire(to, o.message) for to in range(n) if to != self.index]
                    if isinstance(o.message, Checkpoint) and o.message.replica == self.index:
                        self._checkpoint = o.message
                case SendReply():
                    wires.append(Wire(o.reply.client, o.reply))
                case SetTimer():
                    self._set_timer(o.kind, o.after)
                case CancelTimer():
                    handle = self._timers.pop(o.kind, None)
                    if handle is not None:
                        handle.cancel()
                case ViewEntered():
                    _log.info("view_entered", replica=self.index, view=o.view)
                case StateInstalled():
                    _log.info("state_installed", replica=self.index, seq=o.seq)
                case CheckpointTaken():
                    _log.debug("checkpoint_taken", replica=self.index, seq=o.seq)
                case _:
                    pass
        if self.behaviour is not None:
            wires = self.behaviour.speaks(wires)
        for wire in wires:
            if wire.delay > 0:
                self._loop.call_later(wire.delay, self._send, wire)
            else:
                self._send(wire)

    def _journal(self, outputs: Sequence[Output]) -> None:
        executed = [
            (o.seq, tuple(request for request, _ in o.results))
            for o in outputs
            if isinstance(o, Executed)
        ]
        installed = any(isinstance(o, StateInstalled) for o in outputs)
        stable = None
        if self.replica.stable.seq > self._saved_seq:
            stable = stable_state(self.replica)
        if not executed and stable is None and not installed:
            return
        self.journal.write(executed, stable, reset_log=installed)
        if stable is not None:
            self._saved_seq = stable.seq
            _log.info("checkpoint_stable", replica=self.index, seq=stable.seq)

    def _resend_checkpoint(self) -> None:
        self._resend = self._loop.call_later(CHECKPOINT_RESEND_S, self._resend_checkpoint)
        if self._checkpoint is not None:
            self._carry([Broadcast(self._checkpoint)])

    def _set_timer(self, kind: str, after: float) -> None:
        handle = self._timers.pop(kind, None)
        if handle is not None:
            handle.cancel()
        self._timers[kind] = self._loop.call_later(after, self._expire, kind)

    def _send(self, wire: Wire) -> None:
        if isinstance(wire.to, str):
            assert isinstance(wire.message, Reply), wire
            self._answer(wire.message)
            return
        link = self._links.get(wire.to)
        if link is not None:
            link.send(encode(wire.message))

    def _answer(self, reply: Reply) -> None:
        data = encode(reply)
        for future in self._waiting.pop((reply.client, reply.timestamp), []):
            if not future.done():
                future.set_result(data)
