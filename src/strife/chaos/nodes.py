"""The cluster under test: real processes, each optionally inside its own namespace.

The processes and their arguments are the local cluster's (`strife.cluster`):
one balancer, banks with generated customers, gateways. Unlike the
supervisor, nothing restarts a process by itself: the nemesis kills, pauses
and restarts them, and the runner brings them all back before the checks.
A bank restarted after a SIGKILL gets no `--init`: it must find its database.

With `disks`, each bank process keeps its database on a small tmpfs of its
own, which the `disk` fault fills up and then gives back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from grpc_health.v1 import health_pb2

from strife.chaos.net import Network
from strife.cluster.supervisor import Child, ClusterError, Supervisor, _peer_of, spawn
from strife.cluster.topology import BankSpec, Timeouts, Topology
from strife.rpc.channels import ChannelPool, health_stub
from strife.security import certs

HEALTHY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
BALANCER_PORT = 7400
DISK_SIZE = "128m"
FILLER = "filler"


class NodeError(RuntimeError):
    pass


def chaos_topology(root: Path, banks: int, gateways: int, customers: int) -> Topology:
    per_bank = -(-customers // banks)
    names = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
    return Topology(
        data_dir=root,
        banks=tuple(BankSpec(name, customers=per_bank) for name in names[:banks]),
        gateways=tuple(f"gw-{i + 1}" for i in range(gateways)),
        timeouts=Timeouts(prepare_s=2.0, in_doubt_s=5.0, heartbeat_s=0.5, lease_ttl_s=2.0),
    )


class Nodes:
    """Start, kill, pause, restart and stop the cluster's processes."""

    def __init__(self, topology: Topology, network: Network | None, disks: bool = False) -> None:
        self.network = network
        self.disks: dict[str, Path] = {}  # bank process -> its tmpfs
        self._want_disks = disks
        self.stopping = False  # once stop() began, nothing is started again
        self.root = topology.data_dir.resolve()
        if network is not None:
            ip = network.add("balancer")
            topology = replace(topology, balancer_listen=f"{ip}:{BALANCER_PORT}")
        self.topology = topology
        self.certs_dir = self.root / "certs"
        self.children: dict[str, Child] = {}
        self.prefix: dict[str, list[str]] = {}
        self.paused: set[str] = set()
        self._pool: ChannelPool | None = None

    @property
    def balancer(self) -> str:
        return self.topology.balancer_listen

    def names(self, kind: str | None = None) -> list[str]:
        return [n for n in self.children if kind is None or n.startswith(kind)]

    def bank_databases(self) -> dict[str, Path]:
        databases = {}
        for process, banks in self.topology.bank_processes().items():
            folder = self.disks.get(f"bank-{process}", self.root / "data")
            databases.update({b: folder / f"bank-{b}.db" for b in banks})
        return databases

    def gateway_addresses(self) -> dict[str, str]:
        return {n: c.address for n, c in self.children.items() if n.startswith("gateway-")}

    async def start(self) -> None:
        for sub in ("data", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        supervisor = Supervisor(self.topology)
        plan = supervisor._plan()
        hosts = ["127.0.0.1", "localhost"]
        for child in plan:
            self.children[child.name] = child
            self.prefix[child.name] = []
            if self._want_disks and child.name.startswith("bank-"):
                disk = self.root / "disks" / child.name
                disk.mkdir(parents=True, exist_ok=True)
                _mount_tmpfs(disk)
                self.disks[child.name] = disk
                child.args[child.args.index("--data-dir") + 1] = str(disk)
            if self.network is not None:
                if child.name != "balancer":
                    self.network.add(child.name)
                ip = self.network.address(child.name)
                hosts.append(ip)
                self.prefix[child.name] = self.network.prefix(child.name)
                if child.name != "balancer":
                    child.listen = f"{ip}:0"
        certs.dev(
            self.certs_dir,
            banks=tuple(b.name for b in self.topology.banks),
            gateways=self.topology.gateways,
            clients=("default",),
            hosts=hosts,
        )
        self._pool = ChannelPool(self.certs_dir / "admin")
        for child in plan:
            await self._spawn(child)
            await self.wait_healthy(child.name)
            child.first_args = []  # a restart finds its database: no --init

    async def _spawn(self, child: Child) -> None:
        try:
            await spawn(child, prefix=self.prefix[child.name])
        except ClusterError as exc:
            raise NodeError(str(exc)) from exc

    async def wait_healthy(self, name: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> None:
        assert self._pool is not None
        child = self.children[name]
        stub = health_stub(self._pool.get(child.address, _peer_of(child)))
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if child.proc is not None and child.proc.returncode is not None:
                raise NodeError(f"{name} exited with {child.proc.returncode}; see {child.log_path}")
            if time.monotonic() > deadline:
                raise NodeError(f"{name} never became healthy; see {child.log_path}")
            await asyncio.sleep(0.1)

    def alive(self, name: str) -> bool:
        proc = self.children[name].proc
        return proc is not None and proc.returncode is None

    async def kill(self, name: str) -> None:
        """SIGKILL: no flush, no goodbye."""
        proc = self.children[name].proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self.paused.discard(name)

    async def restart(self, name: str) -> None:
        """Start a stopped process again on its old address, and wait until it serves."""
        if self.alive(name) or self.stopping:
            return
        await self._spawn(self.children[name])
        await self.wait_healthy(name)

    def fill_disk(self, name: str) -> int:
        """Take every free byte of the process's tmpfs; returns how many were taken."""
        filler = self.disks[name] / FILLER
        taken = 0
        with filler.open("ab") as out, contextlib.suppress(OSError):
            chunk = b"\0" * (1 << 20)
            while True:
                out.write(chunk)
                out.flush()
                taken += len(chunk)
        return taken

    def free_disk(self, name: str) -> None:
        (self.disks[name] / FILLER).unlink(missing_ok=True)

    def release_disks(self, keep: Path) -> None:
        """Copy the databases out (for the checker and post-mortems), then unmount."""
        for name, disk in self.disks.items():
            self.free_disk(name)
            target = keep / name
            target.mkdir(parents=True, exist_ok=True)
            for path in disk.iterdir():
                if path.is_file():
                    shutil.copy2(path, target / path.name)
            subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True)
        self.disks = {name: keep / name for name in self.disks}

    def pause(self, name: str) -> None:
        proc = self.children[name].proc
        if proc is not None and proc.returncode is None:
            os.kill(proc.pid, signal.SIGSTOP)
            self.paused.add(name)

    def resume(self, name: str) -> None:
        proc = self.children[name].proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
        self.paused.discard(name)

    async def heal(self) -> list[str]:
        """Every process running and serving again; returns the ones that had died."""
        for name in list(self.paused):
            self.resume(name)
        if self.network is not None:
            self.network.heal_all()
        revived = []
        for name in self.children:
            if not self.alive(name):
                revived.append(name)
                await self.restart(name)
        for name in self.children:
            await self.wait_healthy(name)
        return revived

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM in reverse order; a process still there after the grace period is hung.

        Returns each process's exit status; None for one that had to be killed.
        """
        self.stopping = True
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.children)):
            proc = self.children[name].proc
            if proc is None:
                continue
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.terminate()
                try:
                    codes[name] = await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
                except TimeoutError:
                    codes[name] = None
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            else:
                codes[name] = proc.returncode
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        return codes


def _mount_tmpfs(folder: Path) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "strife-chaos", str(folder)],
        check=True,
        capture_output=True,
        timeout=10,
    )
