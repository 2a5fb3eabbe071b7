"""The supervisor: one TaskGroup of device sessions, the outbox writer, the MQTT publisher and the
command subscriber (messages from the care team, :mod:`edge_agent.commands`).

Start-up opens the outbox, then everything runs concurrently::

    device sessions ──Entry──▶ OutboxWriter ──SQLite──▶ Publisher ──MQTT QoS 1──▶ broker
         │                                                   ▲
         └──────────── StatusBoard (battery, link state, alarms) ┘

A session never ends by itself (it reconnects forever); the writer and the publisher neither. If
one of them raises anyway (a bug, a disk that failed), the TaskGroup cancels the rest and the
agent exits with an error, and systemd (``Restart=always``) starts it again: nothing is lost,
everything that mattered was committed.

Graceful stop (SIGTERM / SIGINT): the sessions are cancelled first (they disconnect their devices),
then what they queued is committed, then the publisher says ``offline`` and disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from edge_agent import const
from edge_agent.commands import CommandSubscriber
from edge_agent.config import AgentSettings
from edge_agent.errors import AgentConfigError, EdgeAgentError
from edge_agent.outbox import AsyncOutbox, OutboxWriter
from edge_agent.pairing import PairedDevice, Registry, RegistryStore
from edge_agent.publisher import Publisher
from edge_agent.session import DEVICE_SILENT_ALARM, DeviceSession, SessionContext, make_session
from edge_agent.status import OUTBOX_FULL_ALARM, StatusBoard
from rpm_core.files import write_atomic

_LOGGER = logging.getLogger(__name__)

# How often the agent looks at the outbox to clear a "full" alarm and log a summary.
HOUSEKEEPING_INTERVAL_S: Final = 30.0


class Agent:
    """The edge agent of one patient; :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: AgentSettings, registry: Registry) -> None:
        if registry.patient is None or not registry.devices:
            raise AgentConfigError(
                f"no devices are paired in {settings.registry_path}; run: rpm edge pair --patient ID"
            )
        self.settings = settings
        self.registry = registry
        self.patient: str = registry.patient
        self.board = StatusBoard(self.patient)
        self.sessions: list[DeviceSession] = []
        self.publisher: Publisher | None = None
        self.commands: CommandSubscriber | None = None
        self.writer: OutboxWriter | None = None
        self._outbox: AsyncOutbox | None = None
        self._evicted_total = 0
        self._ctx: SessionContext | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # session task per device address
        self._registry_mtime: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then stop gracefully; refuse to if another agent runs on this
        state directory (:class:`edge_agent.lock.AgentAlreadyRunningError`)."""
        from edge_agent.lock import AgentLock

        with AgentLock(self.settings.ensure_state_dir()):
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        mqtt = self.settings.mqtt()
        outbox = await AsyncOutbox.open(
            self.settings.ensure_state_dir() / self.settings.outbox_path.name,
            budget_bytes=self.settings.outbox_budget_bytes,
        )
        self._outbox = outbox
        try:
            publisher = Publisher(
                mqtt=mqtt,
                patient=self.patient,
                outbox=outbox,
                board=self.board,
                backoff_max_s=self.settings.mqtt_backoff_max_s,
            )
            writer = OutboxWriter(outbox, on_stored=publisher.wake, on_evicted=self._on_evicted)
            self.publisher, self.writer = publisher, writer
            self.commands = CommandSubscriber(mqtt=mqtt, patient=self.patient)
            ctx = SessionContext(
                writer=writer, outbox=outbox, board=self.board, backoff_max_s=self.settings.ble_backoff_max_s,
                battery_low_pct=self.settings.battery_low_pct, set_device_clock=self.settings.set_device_clock,
            )
            self._ctx = ctx
            self.sessions = [make_session(device, ctx) for device in self.registry.devices]
            await self._supervise(stop, publisher, writer)
        finally:
            await outbox.close()

    async def _supervise(self, stop: asyncio.Event, publisher: Publisher, writer: OutboxWriter) -> None:
        async with asyncio.TaskGroup() as tg:
            writing = tg.create_task(writer.run(), name="outbox-writer")
            publishing = tg.create_task(publisher.run(), name="publisher")
            housekeeping = tg.create_task(self._housekeeping(), name="housekeeping")
            assert self.commands is not None
            commands = tg.create_task(self.commands.run(), name="commands")
            watching = tg.create_task(self._watch(), name="registry and device checks")
            for session in self.sessions:
                self._tasks[session.device.address] = tg.create_task(session.run(), name=f"session {session.device_id}")
            self._tg = tg
            _LOGGER.info("edge agent for patient %s: %d device(s)", self.patient, len(self.sessions))
            await stop.wait()
            _LOGGER.info("stopping: disconnecting devices")
            await _cancel(*self._tasks.values(), housekeeping, commands, watching)
            await _cancel(writing)
            await writer.flush()
            await _cancel(publishing)

    def _on_evicted(self, evicted: Mapping[str, int]) -> None:
        """The outbox hit its disk budget: say so loudly (log and status alarm)."""
        self._evicted_total += sum(evicted.values())
        details = ", ".join(f"{count} {metric}" for metric, count in sorted(evicted.items()))
        message = (
            f"outbox full ({self.settings.outbox_budget_bytes // 2**20} MiB budget): dropped the oldest unsent "
            f"{details} readings to keep the newest and the glucose; is the broker reachable?"
        )
        _LOGGER.error("%s", message)
        self.board.alarm(OUTBOX_FULL_ALARM, active=True, message=message, evicted=dict(evicted), severity="critical",
                         remedy="check the patient's internet connection and that the MQTT broker is reachable")

    async def _watch(self) -> None:
        """Every few seconds: pairings added or removed while running, silent devices, the status file;
        now and then, the active alarms again (a watchdog that subscribed after they were raised
        would otherwise hear of them only when this agent reconnects)."""
        refreshed = time.monotonic()
        while True:
            try:
                self._reload_registry()
                self._check_silence(time.time())
                if time.monotonic() - refreshed >= const.ALARM_REFRESH_INTERVAL_S:
                    refreshed = time.monotonic()
                    self.board.resend_alarms()
                await asyncio.to_thread(write_status_file, self.settings.status_path, self.status_snapshot())
            except (EdgeAgentError, OSError) as exc:  # a half-written registry, a full disk: next round
                _LOGGER.warning("housekeeping: %s", exc)
            await asyncio.sleep(const.DEVICE_CHECK_INTERVAL_S)

    def _reload_registry(self) -> None:
        """A device paired (or forgotten) while the agent runs is read (or dropped) without a restart."""
        path = self.settings.registry_path
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._registry_mtime:
            return
        first = self._registry_mtime is None
        self._registry_mtime = mtime
        if first:
            return  # the registry the agent started with
        registry = RegistryStore(path).load()
        if registry.patient not in (None, self.patient):
            _LOGGER.error("%s now names patient %s; this agent serves %s: restart it", path, registry.patient,
                          self.patient)
            return
        wanted = {d.address: d for d in registry.devices}
        for address in [a for a in self._tasks if a not in wanted]:
            self._drop_session(address)
        for address, device in wanted.items():
            if address not in self._tasks:
                self._add_session(device)

    def _add_session(self, device: PairedDevice) -> None:
        assert self._tg is not None
        assert self._ctx is not None
        session = make_session(device, self._ctx)
        self.sessions.append(session)
        self._tasks[device.address] = self._tg.create_task(session.run(), name=f"session {session.device_id}")
        _LOGGER.info("%s: newly paired, reading it", session.device_id)

    def _drop_session(self, address: str) -> None:
        task = self._tasks.pop(address)
        task.cancel()
        session = next(s for s in self.sessions if s.device.address == address)
        self.sessions.remove(session)
        self.board.forget(session.device_id)
        _LOGGER.info("%s: forgotten, no longer read", session.device_id)

    def _check_silence(self, now: float) -> None:
        """``device_silent`` for a paired device that gave no reading for too long; cleared by the next."""
        for session in self.sessions:
            limit = self.settings.silent_after_s or const.DEVICE_SILENT_AFTER_S[session.device.kind.value]
            last = session.last_contact_t or session.started_t
            silent = now - last > limit
            active = self.board.alarm_active(DEVICE_SILENT_ALARM, session.device_id)
            what = session.device.kind.value.replace("_", " ")
            if silent and not active:
                since = datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%d %H:%M UTC")
                self.board.alarm(
                    DEVICE_SILENT_ALARM, active=True, device=session.device_id, severity="warning",
                    message=f"no reading from the patient's {what} since {since}", last_contact=last,
                    remedy=f"ask the patient whether the {what} is worn/used, switched on and near the home hub",
                )
            elif active and not silent:
                self.board.alarm(DEVICE_SILENT_ALARM, active=False, device=session.device_id,
                                 message=f"the {what} sends readings again")

    def status_snapshot(self) -> dict[str, Any]:
        """What ``rpm edge status`` shows: per device link state, last reading, battery; alarms; broker."""
        devices = {}
        for session in self.sessions:
            status = self.board.devices.get(session.device_id)
            devices[session.device_id] = {
                "kind": session.device.kind.value, "address": session.device.address, "name": session.device.name,
                "state": status.state if status else "disconnected", "error": status.error if status else None,
                "battery_pct": status.battery_pct if status else None, "last_reading_t": session.last_reading_t,
                "last_contact_t": session.last_contact_t,
            }
        publisher = self.publisher
        return {
            "v": 1, "t": time.time(), "pid": os.getpid(), "patient": self.patient,
            "broker_connected": bool(publisher and publisher.connected.is_set()),
            "devices": devices, "alarms": [orjson.loads(a) for a in self.board.alarms.values()],
        }

    async def _housekeeping(self) -> None:
        assert self._outbox is not None
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            stats = await self._outbox.stats()
            _LOGGER.info("outbox: %d reading(s) waiting %s", stats.total, dict(stats.pending))
            cleared = stats.total < stats.capacity * const.OUTBOX_FULL_CLEARED_FRACTION
            if self.board.alarm_active(OUTBOX_FULL_ALARM) and cleared:
                self.board.alarm(OUTBOX_FULL_ALARM, active=False, message="outbox back under its budget")


def write_status_file(path: Path, snapshot: Mapping[str, Any]) -> None:
    """Replace the agent's status file atomically (mode 0600: it names the patient's devices)."""
    # Rewritten every few seconds and rebuilt at start: atomic, but not worth two fsyncs each time.
    write_atomic(path, orjson.dumps(snapshot), mode=0o600, durable=False)


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_until_signalled(agent: Agent) -> None:
    """Run ``agent`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
