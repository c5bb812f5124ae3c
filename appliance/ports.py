"""Free loopback ports: for a child server the appliance starts (llama.cpp behind the upstream gateway), the
benchmarks' spawned appliances and the test harnesses. A port is free when asked; whoever binds it next wins."""

from __future__ import annotations

import socket


def free_ports(count: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """``count`` distinct ports on 127.0.0.1, free for ``kind`` (TCP by default) when asked."""
    socks = [socket.socket(socket.AF_INET, kind) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    return free_ports(1, kind)[0]
