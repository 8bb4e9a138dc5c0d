"""OM(m) played out over gRPC: each general a grpc.aio server on 127.0.0.1.

A general's messages are oral, but its voice is its own: every general holds
a certificate from a CA made for the run, calls its peers over mutual TLS, and
a receiver takes the sender from the verified peer certificate, never from the
message. That is the paper's A2 (the receiver knows who sent a message); what
the sender claims to have heard stays unproven, so a traitor can still lie.

The rounds are synchronous in the paper's sense (A3: a missing message is
detected): in each round a general sends every peer one batch of the values
it relays (even an empty one, when it holds back all it had for that peer),
and a receiver closes the round once every peer's batch is in, or after
`round_timeout_s` for a general that sent none. A general silent for a whole
round therefore costs that round its timeout; nothing else waits.

`run_in_loop` runs the n generals as tasks of one event loop, each with its
own server and channels; `run_processes` runs each in its own process
(`python -m strife.bft.generals_net`). Both give the same `Outcome` as
`generals.run` for the same setup, since a traitor's choices are a function of
its seed and the message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import grpc

from strife.bft.generals import (
    COMMANDER,
    DEFAULT,
    STRATEGIES,
    Message,
    Order,
    Outcome,
    Path,
    Setup,
    Vote,
    by_round,
    decide,
    expected_paths,
    outgoing,
    slots,
)
from strife.security import certs
from strife.security.identity import identity_from_auth_context
from strife.security.tls import TlsMaterial

SERVICE = "strife.bft.Generals"
METHOD = f"/{SERVICE}/Tell"
# The run's own trust domain: these certificates mean nothing to a Strife cluster.
TRUST_DOMAIN = "generals.strife.local"
# Strife has no role for a general; a service role gives the certificate both
# server and client use, which is what a general needs.
ROLE = "bank"
ROUND_TIMEOUT_S = 2.0
RPC_TIMEOUT_S = 10.0
# A process run that has not finished by then (plus its rounds' timeouts) is killed.
PROCESS_DEADLINE_S = 60.0


def general_name(general: int) -> str:
    return f"general-{general}"


def general_of(name: str) -> int | None:
    prefix = "general-"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        return None
    return int(name[len(prefix) :])


def issue_identities(n: int) -> tuple[certs.Authority, dict[int, TlsMaterial]]:
    """A CA for this run and one mTLS identity per general."""
    ca = certs.create_ca(common_name="Strife generals CA", trust_domain=TRUST_DOMAIN)
    tls = {}
    for g in range(n):
        issued = certs.issue(ca, role=ROLE, name=general_name(g), trust_domain=TRUST_DOMAIN)
        tls[g] = TlsMaterial(
            ca=certs.cert_to_pem(ca.cert),
            cert=certs.cert_to_pem(issued.cert),
            key=certs.key_to_pem(issued.key),
        )
    return ca, tls


def encode_batch(round_: int, messages: Iterable[Message]) -> bytes:
    """One round's values for one receiver; the sender is left out on purpose."""
    values = [
        {"path": list(msg.path[:-1]), "value": msg.value.value}
        for msg in messages
        if msg.value is not None
    ]
    return json.dumps({"round": round_, "values": values}).encode()


@dataclass(frozen=True)
class Report:
    """What a general heard, by path, and its decision (None: the commander)."""

    heard: dict[Path, Order]
    vote: Vote | None

    def to_json(self) -> dict[str, Any]:
        vote = None
        if self.vote is not None:
            vote = {
                "direct": self.vote.direct.value,
                "relayed": {str(g): v.value for g, v in self.vote.relayed.items()},
                "decision": self.vote.decision.value,
            }
        heard = [{"path": list(p), "value": v.value} for p, v in sorted(self.heard.items())]
        return {"heard": heard, "vote": vote}

    @classmethod
    def from_json(cls, general: int, body: Mapping[str, Any]) -> Report:
        heard = {tuple(item["path"]): Order(item["value"]) for item in body["heard"]}
        raw = body["vote"]
        vote = None
        if raw is not None:
            vote = Vote(
                lieutenant=general,
                direct=Order(raw["direct"]),
                relayed={int(g): Order(v) for g, v in raw["relayed"].items()},
                decision=Order(raw["decision"]),
            )
        return cls(heard, vote)


class General:
    """One general: a server that hears its peers and a loop that relays."""

    def __init__(self, me: int, tls: TlsMaterial) -> None:
        self.me = me
        self.tls = tls
        self.heard: dict[Path, Order] = {}
        self.rejected = 0
        self.send_failures = 0
        self._setup: Setup | None = None
        self.round_timeout_s = ROUND_TIMEOUT_S
        self._expected: dict[int, set[Path]] = {}
        self._batches: dict[int, set[int]] = {}
        self._complete: dict[int, asyncio.Event] = {}
        # Batches that came before the setup did (a peer told its start first).
        self._early: list[tuple[int, bytes]] = []
        self._server: grpc.aio.Server | None = None
        self.address = ""

    @property
    def setup(self) -> Setup:
        assert self._setup is not None, "configure() first"
        return self._setup

    def configure(self, setup: Setup, round_timeout_s: float = ROUND_TIMEOUT_S) -> None:
        self._setup = setup
        self.round_timeout_s = round_timeout_s
        rounds = range(1, setup.m + 2)
        self._expected = {k: set(expected_paths(setup.n, setup.m, self.me, k)) for k in rounds}
        self._batches = {k: set() for k in rounds}
        self._complete = {k: asyncio.Event() for k in rounds}
        early, self._early = self._early, []
        for sender, batch in early:
            self.hear(sender, batch)

    def senders(self, round_: int) -> set[int]:
        """Who owes this general a batch in a round: the commander in the first,
        every other lieutenant after it."""
        if self.me == COMMANDER:
            return set()
        if round_ == 1:
            return {COMMANDER}
        return {g for g in self.setup.lieutenants if g != self.me}

    async def start(self) -> str:
        server = grpc.aio.server()
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self._tell
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Tell": handler}),)
        )
        credentials = self.tls.server_credentials()
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None

    async def _tell(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        auth = {key: list(values) for key, values in context.auth_context().items()}
        peer = identity_from_auth_context(auth, TRUST_DOMAIN)
        sender = None if peer is None else general_of(peer.name)
        if sender is None or sender == self.me:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a general of this run")
        assert sender is not None
        self.hear(sender, request)
        return b""

    def hear(self, sender: int, batch: bytes) -> None:
        """Keep what a sender may say in this round; a value for a path it is not
        on the end of, or a second value for one path, is dropped."""
        if self._setup is None:
            self._early.append((sender, batch))
            return
        try:
            body = json.loads(batch)
            round_ = int(body["round"])
            values = list(body["values"])
        except (ValueError, KeyError, TypeError):
            self.rejected += 1
            return
        if round_ not in self._batches or sender not in self.senders(round_):
            self.rejected += 1
            return
        for item in values:
            try:
                path = (*(int(g) for g in item["path"]), sender)
                value = Order(item["value"])
            except (ValueError, KeyError, TypeError):
                self.rejected += 1
                continue
            if path not in self._expected[round_] or path in self.heard:
                self.rejected += 1
                continue
            self.heard[path] = value
        self._batches[round_].add(sender)
        if self._batches[round_] >= self.senders(round_):
            self._complete[round_].set()

    async def play(self, peers: Mapping[int, str]) -> Report:
        """Send and relay for m + 1 rounds, then decide (a lieutenant)."""
        channels = {
            g: grpc.aio.secure_channel(address, self.tls.channel_credentials())
            for g, address in peers.items()
            if g != self.me
        }
        try:
            if self.me == COMMANDER:
                await self._send(channels, 1, outgoing(self.setup, COMMANDER, (), self.setup.order))
                return Report({}, None)
            for k in range(1, self.setup.m + 2):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._complete[k].wait(), self.round_timeout_s)
                if k <= self.setup.m:
                    relays = [
                        relay
                        for path in sorted(self._expected[k])
                        for relay in outgoing(
                            self.setup, self.me, path, self.heard.get(path, DEFAULT)
                        )
                    ]
                    await self._send(channels, k + 1, relays)
            heard = dict(self.heard)
            return Report(heard, decide(self.setup.n, self.setup.m, self.me, heard))
        finally:
            await asyncio.gather(*(c.close() for c in channels.values()))

    async def _send(
        self, channels: Mapping[int, grpc.aio.Channel], round_: int, messages: Sequence[Message]
    ) -> None:
        """One batch per receiver, even an empty one, so that the receiver can
        close the round; a general with nothing at all to say this round sends
        nothing (and its receivers wait the round out)."""
        if all(msg.value is None for msg in messages):
            return
        batches: dict[int, list[Message]] = {}
        for msg in messages:
            batches.setdefault(msg.receiver, []).append(msg)
        calls = [_tell(channels[r], encode_batch(round_, batch)) for r, batch in batches.items()]
        results = await asyncio.gather(*calls, return_exceptions=True)
        self.send_failures += sum(1 for r in results if isinstance(r, BaseException))


async def _tell(channel: grpc.aio.Channel, batch: bytes) -> bytes:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
    return await call(batch, timeout=RPC_TIMEOUT_S)


def outcome_from_reports(setup: Setup, reports: Mapping[int, Report]) -> Outcome:
    """The message tree as the receivers got it, and each loyal lieutenant's
    decision as it made it."""
    messages = [
        Message(path, r, reports[r].heard.get(path) if r in reports else None)
        for path, r in slots(setup.n, setup.m)
    ]
    votes = {
        g: vote
        for g in setup.loyal_lieutenants
        if g in reports and (vote := reports[g].vote) is not None
    }
    return Outcome(setup, by_round(setup, messages), votes)


async def run_in_loop(setup: Setup, round_timeout_s: float = ROUND_TIMEOUT_S) -> Outcome:
    """The n generals as tasks of this event loop, each with its own server."""
    _, tls = issue_identities(setup.n)
    generals = [General(g, tls[g]) for g in range(setup.n)]
    for general in generals:
        general.configure(setup, round_timeout_s)
    try:
        peers = {g.me: await g.start() for g in generals}
        reports = await asyncio.gather(*(g.play(peers) for g in generals))
    finally:
        await asyncio.gather(*(g.stop() for g in generals))
    return outcome_from_reports(setup, dict(enumerate(reports)))


# --------------------------------------------------------------------- processes


def setup_to_json(setup: Setup) -> dict[str, Any]:
    for strategy in setup.traitors.values():
        if STRATEGIES.get(strategy.name) != strategy:
            raise ValueError(f"strategy {strategy.name!r} cannot be sent to another process")
    return {
        "n": setup.n,
        "m": setup.m,
        "order": setup.order.value,
        "seed": setup.seed,
        "traitors": {str(g): s.name for g, s in setup.traitors.items()},
    }


def setup_from_json(body: Mapping[str, Any]) -> Setup:
    return Setup(
        n=int(body["n"]),
        m=int(body["m"]),
        order=Order(body["order"]),
        seed=int(body["seed"]),
        traitors={int(g): STRATEGIES[s] for g, s in body["traitors"].items()},
    )


class _Children:
    """The generals' processes, killed together by the deadline's timer thread
    or when the run ends; one started after the deadline is killed at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.expired = False

    def add(self, general: int, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self.procs[general] = proc
            if self.expired:
                _kill(proc)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for proc in self.procs.values():
                _kill(proc)

    def kill(self) -> None:
        with self._lock:
            for proc in self.procs.values():
                _kill(proc)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _read_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"general exited early (status {proc.wait()})")
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def run_processes(
    setup: Setup, round_timeout_s: float = ROUND_TIMEOUT_S, deadline_s: float | None = None
) -> Outcome:
    """One process per general: each starts its server and says where; then
    each is told its peers, plays its rounds and reports what it heard and
    decided. Past `deadline_s` (by default a minute more than the rounds'
    timeouts) every general is killed and TimeoutError raised."""
    body = setup_to_json(setup)
    _, tls = issue_identities(setup.n)
    if deadline_s is None:
        deadline_s = PROCESS_DEADLINE_S + (setup.m + 1) * round_timeout_s
    children = _Children()
    # A general that hangs would block the reads below: past the deadline all
    # are killed, their pipes close and the read fails.
    watchdog = threading.Timer(deadline_s, children.expire)
    watchdog.start()
    with tempfile.TemporaryDirectory(prefix="strife-generals-") as tmp:
        try:
            for g in range(setup.n):
                folder = FsPath(tmp) / general_name(g)
                folder.mkdir(mode=0o700)
                for filename, pem in (
                    (certs.CA_CERT, tls[g].ca),
                    (certs.TLS_CERT, tls[g].cert),
                    (certs.TLS_KEY, tls[g].key),
                ):
                    (folder / filename).write_bytes(pem)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "strife.bft.generals_net", str(g), str(folder)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                children.add(g, proc)
            procs = children.procs
            peers = {str(g): _read_line(p)["address"] for g, p in procs.items()}
            start = json.dumps({"setup": body, "peers": peers, "round_timeout_s": round_timeout_s})
            for p in procs.values():
                assert p.stdin is not None
                p.stdin.write(start + "\n")
                p.stdin.close()
            reports = {g: _read_line(p) for g, p in procs.items()}
        except (RuntimeError, OSError) as exc:
            if children.expired:
                raise TimeoutError(f"the generals did not finish in {deadline_s:g} s") from exc
            raise
        finally:
            watchdog.cancel()
            children.kill()
    return outcome_from_reports(setup, {g: Report.from_json(g, r) for g, r in reports.items()})


async def _serve(me: int, folder: str) -> None:
    """A general's process: listen, say where, wait for the start, play, report."""
    general = General(me, TlsMaterial.load(folder))
    print(json.dumps({"address": await general.start()}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = json.loads(line)
    general.configure(setup_from_json(start["setup"]), float(start["round_timeout_s"]))
    try:
        peers = {int(g): a for g, a in start["peers"].items()}
        report = await general.play(peers)
    finally:
        await general.stop()
    print(json.dumps(report.to_json()), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One general of a Byzantine generals run.")
    parser.add_argument("general", type=int)
    parser.add_argument("certs", help="the general's identity folder (ca.crt, tls.crt, tls.key)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.general, args.certs))


if __name__ == "__main__":
    main()
