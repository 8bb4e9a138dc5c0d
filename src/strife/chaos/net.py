"""Network namespaces for the cluster's processes, joined by veth pairs and a bridge.

Each node gets a namespace with `eth0` at 10.77.<net>.<n>/24; the root
namespace holds the bridge at 10.77.<net>.254, so the runner reaches every
node and the nodes reach each other through it. A partition takes a node's
root-side veth down (it is cut off from everyone) and a heal brings it up.
Only private addresses in 10.77.0.0/16, inside namespaces made here, are used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid

SUBNET = "10.77"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"strife-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


def _free_net() -> int:
    used = _ip("-4", "-o", "addr", "show").stdout
    for n in range(10, 250):
        if f" {SUBNET}.{n}." not in used:
            return n
    raise RuntimeError(f"no free /24 in {SUBNET}.0.0/16")


class Network:
    """One bridge and a namespace per node; `close()` removes everything it made."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.net = _free_net()
        self.bridge = f"sbr{self.tag}"
        self.gateway_ip = f"{SUBNET}.{self.net}.254"
        self._nodes: dict[str, tuple[str, str, str]] = {}  # node -> (netns, veth, ip)
        self._cut: set[str] = set()
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def add(self, node: str) -> str:
        """A namespace for `node`; returns its address."""
        n = len(self._nodes) + 1
        netns, veth, ip = f"strife-{self.tag}-{n}", f"sv{self.tag}{n}", f"{SUBNET}.{self.net}.{n}"
        self._nodes[node] = (netns, veth, ip)
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "route", "add", "default", "via", self.gateway_ip)
        return ip

    def prefix(self, node: str) -> list[str]:
        """The command prefix that runs a program inside the node's namespace."""
        return ["ip", "netns", "exec", self._nodes[node][0]]

    def address(self, node: str) -> str:
        return self._nodes[node][2]

    def cut(self, node: str) -> None:
        _ip("link", "set", self._nodes[node][1], "down")
        self._cut.add(node)

    def heal(self, node: str) -> None:
        _ip("link", "set", self._nodes[node][1], "up")
        self._cut.discard(node)

    def heal_all(self) -> None:
        for node in list(self._cut):
            self.heal(node)

    def names(self) -> list[str]:
        """The namespaces made, for a leak check."""
        return [netns for netns, _, _ in self._nodes.values()]

    def close(self) -> None:
        """Delete every namespace (their veths go with them) and the bridge."""
        for netns, veth, _ in self._nodes.values():
            _ip("link", "del", veth, check=False)
            _ip("netns", "del", netns, check=False)
        self._nodes.clear()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _ip("link", "del", self.bridge, check=False)


def leftovers(tag: str) -> list[str]:
    """Namespaces of this network still present (should be none after close)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"strife-{tag}-")]
