"""HOST:PORT parsing shared by servers, channels and the metrics endpoint."""

from __future__ import annotations

import socket


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; the port must be 0-65535."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {address!r}")
    return host.strip("[]") or "0.0.0.0", port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port() -> int:
    """A loopback port nobody listens on right now, for a process that must be
    told its port up front. Another process may take it before the child binds;
    Strife servers refuse a shared port (`so_reuseport` 0), so that child exits
    loudly instead of sharing it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
