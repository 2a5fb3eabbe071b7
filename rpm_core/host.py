"""The machine rpm runs on: free ports, open ports, required programs."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
from pathlib import Path
from typing import Final

from rpm_core.errors import ServiceError

_EPHEMERAL_FALLBACK: Final = (32768, 60999)  # Linux's default ip_local_port_range
_LOWEST: Final = 10000
_PICK: Final = random.SystemRandom()  # not the shared generator: a test seeding it must not make workers agree


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (and to ``bind(0)``)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _EPHEMERAL_FALLBACK
    return low, high


def _binds(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, for a server started next.

    The port is drawn at random from below the kernel's ephemeral range: a port from ``bind(0)``
    lies inside it, where any outgoing connection made before the server binds may take it (CI
    once saw the nurse station fail with "address already in use" that way). Above that range
    when it leaves too little room below.
    """
    low, high = _ephemeral_range()
    lo, hi = (_LOWEST, low - 1) if low - _LOWEST >= 4096 else (high + 1, 65535)
    for _ in range(64):
        port = _PICK.randint(lo, hi)
        if _binds(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded machine: the kernel's pick
        sock.bind(("127.0.0.1", 0))
        picked: int = sock.getsockname()[1]
        return picked


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def require_binary(name: str, package: str) -> str:
    """The path of ``name``, or a :class:`ServiceError` that says which Debian package to install."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise ServiceError(f"{name} not found; install it with: sudo apt-get install -y {package}")
    return path
