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
import signal
from collections.abc import Mapping
from typing import Final

from edge_agent import const
from edge_agent.commands import CommandSubscriber
from edge_agent.config import AgentSettings
from edge_agent.errors import AgentConfigError
from edge_agent.outbox import AsyncOutbox, OutboxWriter
from edge_agent.pairing import Registry
from edge_agent.publisher import Publisher
from edge_agent.session import DeviceSession, SessionContext, make_session
from edge_agent.status import OUTBOX_FULL_ALARM, StatusBoard

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

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then stop gracefully."""
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
                writer=writer, outbox=outbox, board=self.board, backoff_max_s=self.settings.ble_backoff_max_s
            )
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
            devices = [tg.create_task(s.run(), name=f"session {s.device_id}") for s in self.sessions]
            _LOGGER.info("edge agent for patient %s: %d device(s)", self.patient, len(devices))
            await stop.wait()
            _LOGGER.info("stopping: disconnecting devices")
            await _cancel(*devices, housekeeping, commands)
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

    async def _housekeeping(self) -> None:
        assert self._outbox is not None
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            stats = await self._outbox.stats()
            _LOGGER.info("outbox: %d reading(s) waiting %s", stats.total, dict(stats.pending))
            cleared = stats.total < stats.capacity * const.OUTBOX_FULL_CLEARED_FRACTION
            if self.board.alarm_active(OUTBOX_FULL_ALARM) and cleared:
                self.board.alarm(OUTBOX_FULL_ALARM, active=False, message="outbox back under its budget")


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
