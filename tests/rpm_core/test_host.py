"""The ports rpm hands to servers it starts (rpm_core/host.py)."""

from __future__ import annotations

import random
import socket

import pytest

from rpm_core import host


def _ephemeral() -> range:
    low, high = host._ephemeral_range()
    return range(low, high + 1)


def test_a_free_port_lies_outside_the_range_outgoing_connections_take() -> None:
    """A port from the kernel's ephemeral range can be taken by any client connecting before the
    server binds (the nurse station once failed with "address already in use" that way)."""
    ports = {host.free_port() for _ in range(50)}
    assert not ports & set(_ephemeral())
    assert len(ports) > 40  # drawn at random, so parallel test workers do not agree on one


def test_seeding_the_shared_generator_does_not_make_two_processes_pick_the_same_ports() -> None:
    random.seed(7)
    first = [host.free_port() for _ in range(5)]
    random.seed(7)
    assert [host.free_port() for _ in range(5)] != first


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as spare:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        spare.bind(("127.0.0.1", 0))
        port, other = taken.getsockname()[1], spare.getsockname()[1]
        spare.close()
        picks = iter([port, port, other])
        monkeypatch.setattr(host._PICK, "randint", lambda _lo, _hi: next(picks))
        assert host.free_port() == other


def test_a_crowded_range_falls_back_to_the_kernels_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "_binds", lambda _port: False)
    port = host.free_port()
    assert port in _ephemeral()  # the kernel's own pick, once 64 draws found nothing free
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))  # and free: this raises if it is not
