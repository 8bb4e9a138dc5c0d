"""Run a local cluster as supervised child processes on 127.0.0.1.

Children are spawned (fork+exec, so no gRPC state is inherited) in their own
sessions: Ctrl-C reaches only the supervisor, which stops them in order
(gateways, banks, balancer) with SIGTERM and a grace period. A child that
dies on its own is restarted on the same port with capped exponential
backoff. `cluster.json` in the data folder lets `strife cluster status` and
`strife cluster down` work from another terminal. Every child serves
Prometheus /metrics on its own ephemeral port, kept across restarts too;
`prometheus-targets.json` beside it lists them for Prometheus's file-based
discovery (deploy/prometheus/prometheus.yml).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from strife.backoff import Backoff
from strife.bft.cluster import (
    GroupPlan,
    gateway_key_args,
    plan_group,
    replica_names,
    write_seed,
)
from strife.cluster.seeds import generated_rows, seed_file
from strife.cluster.topology import ReplicatedBankSpec, Topology
from strife.rpc.channels import ChannelPool, Peer, health_stub
from strife.rpc.server import install_stop_signals
from strife.security import certs

STATE_FILE = "cluster.json"
TARGETS_FILE = "prometheus-targets.json"
START_TIMEOUT_S = 30.0
GRACE_S = 5.0
# A crashing child is restarted after 0.5 s, then 1 s, 2 s, ... up to 30 s;
# one that ran for STABLE_AFTER_S starts again from 0.5 s.
RESTART_BACKOFF = Backoff(0.5, 30.0)
STABLE_AFTER_S = 30.0

Say = Callable[[str], None]


@dataclass
class Child:
    name: str
    script: str
    args: list[str]
    listen: str
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    address: str = ""
    restarts: int = 0
    started_at: float = 0.0
    stopping: bool = False
    # Arguments of the first start only (a bank's --init).
    first_args: list[str] = field(default_factory=list)
    # Where /metrics is served: any free port at first, the same one after.
    metrics_listen: str = "127.0.0.1:0"
    metrics: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


class ClusterError(RuntimeError):
    pass


def _peer_of(child: Child) -> Peer:
    """Whom a child's address must answer as: `bank-east` is bank/east, and so on."""
    role, _, name = child.name.partition("-")
    return Peer(role, name or None)


def _bin(script: str) -> str:
    candidate = Path(sys.executable).parent / script
    return str(candidate) if candidate.exists() else script


class Supervisor:
    def __init__(self, topology: Topology, say: Say = print) -> None:
        self.topology = topology
        self.say = say
        self.root = topology.data_dir.resolve()
        self.certs_dir = self.root / "certs"
        self.children: list[Child] = []
        self._pool: ChannelPool | None = None
        self._stop = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    # ----------------------------------------------------------------- start

    def prepare_files(self) -> None:
        """Certificates (kept if present), seeds and folders."""
        for sub in ("data", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        processes = self.topology.bank_processes()
        replicas = [
            name for r in self.topology.replicated for name in replica_names(r.name, r.replicas)
        ]
        certs.dev(
            self.certs_dir,
            # One identity per bank, and one per host serving several, which
            # also names the banks it serves (gateways dial them by bank name);
            # one per replica of a replicated bank.
            banks=(*(b.name for b in self.topology.banks), *processes, *replicas),
            gateways=self.topology.gateways,
            clients=("default",),
            serves={p: banks for p, banks in processes.items() if banks != (p,)},
        )

    def _plan(self) -> list[Child]:
        t, root = self.topology.timeouts, self.root
        balancer = self.topology.balancer_listen
        children = [
            Child(
                "balancer",
                "strife-balancer",
                [
                    "--certs",
                    str(self.certs_dir / "balancer"),
                    "--policy",
                    self.topology.policy,
                    "--heartbeat-interval",
                    str(t.heartbeat_s),
                    "--lease-ttl",
                    str(t.lease_ttl_s),
                ],
                balancer,
                root / "logs" / "balancer.log",
            )
        ]
        for process, banks in self.topology.bank_processes().items():
            hosted = [] if banks == (process,) else [a for b in banks for a in ("--bank", b)]
            seeds = [a for b in banks for a in ("--seed", str(seed_file(self.topology, b)))]
            # Banks are created (--init) on their first start only: a bank
            # restarted after a crash must find its database, not a new one.
            children.append(
                Child(
                    f"bank-{process}",
                    "strife-bank",
                    [
                        "--name",
                        process,
                        *hosted,
                        "--data-dir",
                        str(root / "data"),
                        *seeds,
                        "--certs",
                        str(self.certs_dir / f"bank-{process}"),
                        "--bank-certs",
                        str(self.certs_dir),
                        "--balancer",
                        balancer,
                        "--in-doubt-timeout",
                        str(t.in_doubt_s),
                    ],
                    "127.0.0.1:0",
                    root / "logs" / f"bank-{process}.log",
                    first_args=["--init"],
                )
            )
        groups = [self._replicated(spec, children) for spec in self.topology.replicated]
        for name in self.topology.gateways:
            replicated = [plan.gateway_arg() for plan in groups]
            replicated += gateway_key_args(self.root / "bft", name, groups)
            children.append(
                Child(
                    f"gateway-{name}",
                    "strife-gateway",
                    [
                        "--name",
                        name,
                        "--db",
                        str(root / "data" / f"gateway-{name}.db"),
                        "--certs",
                        str(self.certs_dir / f"gateway-{name}"),
                        "--token-key",
                        str(root / "token-signing.key"),
                        "--balancer",
                        balancer,
                        "--prepare-timeout",
                        str(t.prepare_s),
                        *replicated,
                    ],
                    "127.0.0.1:0",
                    root / "logs" / f"gateway-{name}.log",
                )
            )
        return children

    def _replicated(self, spec: ReplicatedBankSpec, children: list[Child]) -> GroupPlan:
        """A replicated bank's group (made once, then kept) and its replicas' children."""
        plan = plan_group(self.root / "bft", spec.name, spec.replicas, self.topology.gateways)
        seed = spec.seed or write_seed(
            self.root / "seeds" / f"{spec.name}.json", generated_rows(spec.name, spec.customers)
        )
        byzantine = dict(spec.byzantine)
        for i, replica in enumerate(plan.group.replicas):
            faulty = ["--byzantine", byzantine[i]] if i in byzantine else []
            children.append(
                Child(
                    f"bank-{replica.name}",
                    "strife-bank-replica",
                    [
                        "--group",
                        str(plan.group_file),
                        "--replica",
                        replica.name,
                        "--signing-key",
                        str(plan.replica_keys[replica.name]),
                        "--db",
                        str(self.root / "data" / f"replica-{replica.name}.db"),
                        "--seed",
                        str(seed),
                        "--certs",
                        str(self.certs_dir / f"bank-{replica.name}"),
                        "--balancer",
                        self.topology.balancer_listen,
                        "--in-doubt-timeout",
                        str(self.topology.timeouts.in_doubt_s),
                        *faulty,
                    ],
                    replica.address,
                    self.root / "logs" / f"bank-{replica.name}.log",
                )
            )
        return plan

    async def up(self) -> None:
        """Start everything and wait until every child answers health checks."""
        existing = read_state(self.root)
        if existing and _alive(existing.get("supervisor_pid", 0)):
            raise ClusterError(
                f"a cluster is already running from {self.root} (pid {existing['supervisor_pid']})"
            )
        self.prepare_files()
        self._pool = ChannelPool(self.certs_dir / "admin")
        self.children = self._plan()
        try:
            for child in self.children:
                await self._spawn(child)
                await self._wait_healthy(child)
                child.first_args = []
        except BaseException:
            await self.down()
            raise
        self._write_state()

    async def _spawn(self, child: Child) -> None:
        await spawn(child, "--metrics-listen", child.metrics_listen)

    async def _wait_healthy(self, child: Child) -> None:
        assert self._pool is not None
        stub = health_stub(self._pool.get(child.address, _peer_of(child)))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(Exception):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"{child.name} never became healthy; see {child.log_path}")
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------- supervise

    async def supervise(self) -> None:
        """Restart children that die, until stop() (or SIGTERM/SIGINT)."""
        install_stop_signals(self._stop)  # only when `strife cluster up` is the program
        self._watchers = [asyncio.create_task(self._watch(child)) for child in self.children]
        await self._stop.wait()
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.down()

    def stop(self) -> None:
        self._stop.set()

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    async def pause(self, name: str) -> None:
        """Stop one child on purpose (SIGTERM, no restart) until `resume`."""
        child = self.child(name)
        child.stopping = True
        if child.proc is not None and child.proc.returncode is None:
            child.proc.terminate()
            await child.proc.wait()

    async def resume(self, name: str) -> None:
        """Start a paused child again on its old address, and supervise it."""
        child = self.child(name)
        child.stopping = False
        await self._spawn(child)
        await self._wait_healthy(child)
        self._watchers.append(asyncio.create_task(self._watch(child)))
        self._write_state()

    async def _watch(self, child: Child) -> None:
        failures = 0
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if child.stopping:
                return
            lived_s = time.monotonic() - child.started_at
            failures = 1 if lived_s > STABLE_AFTER_S else failures + 1
            backoff_s = RESTART_BACKOFF.delay_s(failures)
            self.say(f"{child.name} exited with {code}; restarting in {backoff_s:.1f}s")
            await asyncio.sleep(backoff_s)
            try:
                await self._spawn(child)
                await self._wait_healthy(child)
            except ClusterError as exc:
                self.say(str(exc))
                continue
            child.restarts += 1
            self._write_state()
            self.say(f"{child.name} is back at {child.address}")

    # ------------------------------------------------------------------ stop

    async def down(self) -> None:
        """SIGTERM in reverse start order, wait the grace period, then SIGKILL."""
        for child in reversed(self.children):
            child.stopping = True
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
                try:
                    await asyncio.wait_for(child.proc.wait(), GRACE_S)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                    await child.proc.wait()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        with contextlib.suppress(FileNotFoundError):
            (self.root / STATE_FILE).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.root / TARGETS_FILE).unlink()

    # ----------------------------------------------------------------- state

    def _write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "root": str(self.root),
            "balancer": self.children[0].address if self.children else "",
            "children": [
                {
                    "name": c.name,
                    "pid": c.pid,
                    "address": c.address,
                    "log": str(c.log_path),
                    "restarts": c.restarts,
                    "metrics": c.metrics,
                }
                for c in self.children
            ],
        }
        targets = [
            {"targets": [c.metrics], "labels": {"role": _peer_of(c).role, "process": c.name}}
            for c in self.children
            if c.metrics
        ]
        _replace(self.root / STATE_FILE, json.dumps(state, indent=1))
        _replace(self.root / TARGETS_FILE, json.dumps(targets, indent=1))

    def table(self) -> list[tuple[str, str, int, str]]:
        return [(c.name, c.address, c.pid, str(c.log_path)) for c in self.children]


def _replace(path: Path, text: str) -> None:
    """Write `path` whole or not at all: readers poll it from other processes."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def spawn(child: Child, *extra: str, prefix: Sequence[str] = ()) -> None:
    """Start `child` (under `prefix`, e.g. `ip netns exec NS`) and learn the
    address it bound; a restart comes back on the same port.

    The child writes its log file itself: copying every line through a pipe
    cost the supervisor about 0.1 ms of CPU per payment under load.
    """
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    start_offset = child.log_path.stat().st_size if child.log_path.exists() else 0
    with child.log_path.open("ab") as log:
        child.proc = await asyncio.create_subprocess_exec(
            *prefix,
            _bin(child.script),
            *child.args,
            *child.first_args,
            "--listen",
            child.listen,
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    child.started_at = time.monotonic()
    try:
        child.address = await _bound_address(child, start_offset)
    except ClusterError as exc:
        raise ClusterError(f"{child.name} did not start; see {child.log_path}: {exc}") from exc
    child.listen = child.address


async def _bound_address(child: Child, offset: int) -> str:
    """The address the child reports in its `server_started` log line; the
    port of its `metrics_listening` line before it becomes `child.metrics`.

    Read from the log file it writes, from where this start began; bounded by
    START_TIMEOUT_S and by the child exiting first.
    """
    assert child.proc is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = b""
    with child.log_path.open("rb") as log:
        log.seek(offset)
        while True:
            pending += log.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if b'"metrics_listening"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        port = int(json.loads(line)["port"])
                        child.metrics = child.metrics_listen = f"127.0.0.1:{port}"
                if b'"server_started"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        return str(json.loads(line)["address"])
            if child.proc.returncode is not None:
                log.seek(offset)
                why = _last_words(log.read())
                raise ClusterError(
                    f"exited with {child.proc.returncode}" + (f": {why}" * bool(why))
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"no server_started line within {START_TIMEOUT_S:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.proc.wait()), 0.05)


def _last_words(log: bytes, limit: int = 300) -> str:
    """Why a child that exited at start said it stopped: its `Error:` line (a
    refused option, a taken port), else its last error event, else its last line."""
    lines = [line.strip() for line in log.decode(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error: "):
            return line.removeprefix("Error: ")[:limit]
    for line in reversed(lines):
        with contextlib.suppress(ValueError, AttributeError):
            event = json.loads(line)
            if event.get("level") in ("error", "critical"):
                detail = event.get("detail") or event.get("error") or ""
                return f"{event.get('event')}{': ' if detail else ''}{detail}"[:limit]
    return lines[-1][:limit] if lines else ""


def read_state(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_from_outside(root: Path, timeout_s: float = 30.0) -> list[str]:
    """`strife cluster down`: ask the supervisor to stop; clean up if it is gone."""
    state = read_state(root)
    if state is None:
        return []
    supervisor = int(state.get("supervisor_pid", 0))
    if _alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
    leftovers = []
    for child in state.get("children", []):
        pid = int(child.get("pid", 0))
        if _alive(pid):
            leftovers.append(str(child["name"]))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (root / STATE_FILE).unlink()
    return leftovers
