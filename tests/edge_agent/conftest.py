"""Fixtures of the edge agent tests: a real Mosquitto with per-agent ACLs, an MQTT watcher, the
emulated BlueZ (``simulators.bluez``) and the agent, in-process or as a real ``rpm edge run``.

Helpers that several test modules use are handed out by fixtures (``wait_until``, ``watcher``,
``agent_in_process``), because test modules here cannot import each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentSettings
from edge_agent.pairing import Registry
from rpm_app.services import MqttCredentials, ServiceProcess, start_mosquitto
from rpm_core.mqtt_users import ADMIN_USER
from simulators.bluez import DEBIAN_PYTHON

PATIENT = "p0001"
AGENT_USER = f"agent-{PATIENT}"
REPO = Path(__file__).resolve().parents[2]
EDGE_ACL = f"""\
user {AGENT_USER}
topic write rpm/v1/p/{PATIENT}/#
topic read rpm/v1/p/{PATIENT}/cmd

user {ADMIN_USER}
topic readwrite #
"""
_INSTALL_HINT = "install them with: apt-get install dbus-daemon python3-dbusmock (scripts/setup does)"


@pytest.fixture(scope="session")
def edge_bluez_prerequisites() -> None:
    """Fail early, with the fix, when the BlueZ emulation cannot run (skip only off Linux)."""
    if sys.platform != "linux":
        pytest.skip("bleak uses BlueZ only on Linux")
    if shutil.which("dbus-daemon") is None:
        pytest.fail(f"dbus-daemon not found; {_INSTALL_HINT}")
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-I", "-c", "import dbus, dbus.mainloop.glib, gi.repository.GLib"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.fail(f"{DEBIAN_PYTHON} lacks python3-dbus/python3-gi; {_INSTALL_HINT}")


# --- the broker --------------------------------------------------------------------------------------


@dataclass
class Broker:
    """A Mosquitto of this test, with the agent's and the admin's users; restartable on its port."""

    workdir: Path
    creds: MqttCredentials
    svc: ServiceProcess

    @property
    def port(self) -> int:
        return self.svc.port

    def url(self, user: str = AGENT_USER) -> str:
        return self.creds.url(user, "127.0.0.1", self.port)

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file (queued QoS 1 messages, sessions)."""
        self.svc.stop()

    def start(self) -> None:
        self.svc = start_mosquitto(self.workdir, creds=self.creds, port=self.port, acl_text=EDGE_ACL)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto on a free port with auth and the edge ACL (agent-p0001 writes only its own tree)."""
    workdir = tmp_path / "mosquitto"
    creds = MqttCredentials.generate([AGENT_USER, ADMIN_USER, "agent-p0002"])
    b = Broker(workdir, creds, start_mosquitto(workdir, creds=creds, acl_text=EDGE_ACL))
    try:
        yield b
    finally:
        b.svc.stop()


# --- watching MQTT -----------------------------------------------------------------------------------


@dataclass
class MqttWatcher:
    """A persistent-session QoS 1 subscriber (rpm-admin) that records every readings/status message."""

    broker: Broker
    readings_msgs: list[dict[str, Any]] = field(default_factory=list)
    status_msgs: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{ADMIN_USER}:watcher-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)
        client.username_pw_set(ADMIN_USER, self.broker.creds.passwords[ADMIN_USER].get())
        client.reconnect_delay_set(0.1, 0.5)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_a: self.subscribed.set()
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # survives our and the broker's restarts
        client.connect("127.0.0.1", self.broker.port, keepalive=5, clean_start=False, properties=props)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(10), "watcher not subscribed"

    def _on_connect(self, client: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        client.subscribe([(f"rpm/v1/p/{PATIENT}/readings", 1), (f"rpm/v1/p/{PATIENT}/status", 1)])

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        doc = orjson.loads(message.payload)
        with self.lock:
            if message.topic.endswith("/readings"):
                self.readings_msgs.append(doc)
            else:
                self.status_msgs.append((doc, bool(message.retain)))

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.readings_msgs)

    def distinct(self, device: str | None = None) -> list[dict[str, Any]]:
        """Messages with their first copy only (by message id), in arrival order."""
        seen: set[str] = set()
        out = []
        for m in self.messages():
            if m["id"] in seen:
                continue
            seen.add(m["id"])
            if device is None or m["device"] == device:
                out.append(m)
        return out

    def samples(self, device: str, metric: str | None = None) -> list[list[Any]]:
        """Samples of ``device`` (each message counted once), in arrival order."""
        return [s for m in self.distinct(device) for s in m["samples"] if metric is None or s[0] == metric]

    def duplicates(self) -> int:
        """Messages received more than once (same id); asserts each copy carries the same samples."""
        first: dict[str, Any] = {}
        dups = 0
        for m in self.messages():
            if m["id"] in first:
                assert first[m["id"]] == m, "a redelivered message id with different samples"
                dups += 1
            else:
                first[m["id"]] = m
        return dups

    def statuses(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [d for d, _r in self.status_msgs if kind is None or d["kind"] == kind]


@pytest.fixture
def watcher(broker: Broker) -> Iterator[MqttWatcher]:
    w = MqttWatcher(broker)
    w.start()
    try:
        yield w
    finally:
        w.stop()


# --- waiting -----------------------------------------------------------------------------------------


# A deadline for a condition, like tests/support/procs.eventually (not an operation timeout).
async def _wait_until(
    predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition", interval: float = 0.05  # noqa: ASYNC109
) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail naming ``what`` at the deadline.

    The timeout is a deadline for a condition, never an assertion about speed.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[None]]:
    """``await wait_until(predicate, timeout=…, what=…)``."""
    return _wait_until


async def _quiesce(device: Any) -> None:
    """Stop a streaming peripheral between two notifications, never in the middle of one.

    Cancelling its task while a notification is on its way could deliver a value that the
    peripheral never recorded as sent. So: stretch its interval, wait for the notification that
    ends the current short sleep, then cancel it (now asleep for an hour) and restore the interval,
    so that the next subscription streams as before.
    """
    interval, sent = device.interval_s, len(device.sent)
    device.interval_s = 3600.0
    await _wait_until(lambda: len(device.sent) > sent, what=f"{device!r} to finish its current interval")
    device.stop_task("measure")
    device.interval_s = interval


@pytest.fixture
def quiesce() -> Callable[[Any], Awaitable[None]]:
    """``await quiesce(strap_or_cgm)``: no more notifications, and none half sent."""
    return _quiesce


# --- the agent ---------------------------------------------------------------------------------------


def agent_settings(state_dir: Path, broker: Broker) -> AgentSettings:
    """Settings for a test agent: quick reconnects, so the tests wait for conditions, not backoffs."""
    return AgentSettings(state_dir=state_dir, mqtt_url=broker.url(), mqtt_backoff_max_s=1.0, ble_backoff_max_s=1.0)


@pytest.fixture
def agent_in_process(
    broker: Broker, tmp_path: Path
) -> Callable[[Registry], contextlib.AbstractAsyncContextManager[Agent]]:
    """``async with agent_in_process(registry[, **settings]) as agent:`` — the real agent on this event loop
    (``settings``: :class:`AgentSettings` fields to change, e.g. ``battery_low_pct=30``)."""

    @contextlib.asynccontextmanager
    async def run(registry: Registry, **settings: Any) -> AsyncIterator[Agent]:
        agent = Agent(dataclasses.replace(agent_settings(tmp_path / "state", broker), **settings), registry)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name="agent")
        try:
            yield agent
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task

    return run
