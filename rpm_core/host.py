"""The machine rpm runs on: free ports, open ports, required programs."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket

from rpm_core.errors import ServiceError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
