"""Broker outage + kill -9 of the agent while three devices stream: no reading is lost.

The agent runs as a real ``rpm edge run`` child process against emulated BlueZ (real bleak) and a
real Mosquitto. While a heart-rate strap, a glucose meter and a CGM stream:

1. the broker is stopped for ``RPM_TEST_BROKER_OUTAGE_S`` seconds (default 30, the issue's scenario;
   set it lower for a quicker local run);
2. during the outage the meter gets a new record and hangs up (it is re-synced into the outbox),
   and the agent is killed with SIGKILL and started again, with readings waiting in its outbox;
3. the broker comes back on the same port (with its persisted sessions).

Then the readings in MQTT must equal the readings the devices produced, count and values, in
order per device. Duplicates (a message whose PUBACK was lost with the connection or with the
agent) are recognisable by message id; they are counted, logged (``chaos: … duplicate(s)``),
and must repeat their first copy exactly.

The broker is stopped with SIGTERM: Mosquitto acknowledges a QoS 1 message before writing it to
disk, so a SIGKILLed broker can lose messages it acknowledged (its autosave runs every 5 s). That
is the broker's durability limit, not the agent's, and it is not what this test is about.

The strap has no memory: a notification that BlueZ delivered to an agent process that dies before
committing it is gone. So the strap is paused (between two notifications) before the kill and the
test waits until the agent committed all it sent; the CGM keeps streaming through the kill, and
the agent recovers what it missed by RACP backfill after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.gatt import HeartRateMeasurement, SensorContact
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry, RegistryStore
from simulators.ble_devices import CgmRecord, ContinuousGlucoseMonitor, GlucoseMeter, GlucoseRecord, HeartRateStrap
from simulators.bluez import EmulatedBluez

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.usefixtures("edge_bluez_prerequisites")]

_LOGGER = logging.getLogger(__name__)
OUTAGE_S = float(os.environ.get("RPM_TEST_BROKER_OUTAGE_S", "30"))
PATIENT = "p0001"


class AgentProcess:
    """``rpm edge run`` as a child of this event loop, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rpm_app.cli", "edge", "run", env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )

    async def signal(self, sig: int) -> int:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            return await self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def outbox_count(state: Path, device: str, metric: str) -> int:
    """Readings of ``device`` committed in the agent's outbox (read by the test, beside the agent)."""
    path = state / "outbox.sqlite3"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM readings WHERE device = ? AND metric = ?",
                              (device, metric)).fetchone()[0])
    finally:
        db.close()


def expected_beats(sent: list[bytes]) -> tuple[list[float], list[float]]:
    bpm: list[float] = []
    rr: list[float] = []
    for value in sent:
        m = HeartRateMeasurement.from_bytes(value)
        bpm.append(float(m.bpm))
        rr.extend(m.rr_intervals_s)
    return bpm, rr


def in_order(samples: list[list[float]]) -> bool:
    times = [s[1] for s in samples]
    return times == sorted(times)


async def test_broker_outage_and_kill_9_lose_no_reading(
    broker, watcher, wait_until, quiesce, tmp_path: Path
) -> None:
    strap = HeartRateStrap(
        samples=[HeartRateMeasurement(70 + i, SensorContact.DETECTED, None, (800 + i, 790 + i)) for i in range(9)],
        interval_s=0.1,
    )
    base = datetime_local()
    meter = GlucoseMeter(records=[GlucoseRecord(s, base + timedelta(minutes=s), 100 + s) for s in (1, 2, 3)])
    cgm = ContinuousGlucoseMonitor(history=[CgmRecord(o, 90 + o) for o in range(0, 50, 5)], e2e_crc=True,
                                   interval_s=0.2)
    hr_id, bgm_id, cgm_id = f"hr-{strap.address}", f"bgm-{meter.address}", f"cgm-{cgm.address}"
    state = tmp_path / "state"
    RegistryStore(state / "pairings.json").save(Registry(patient=PATIENT, devices=tuple(
        PairedDevice(address=d.address, kind=k, name=d.advertisement.local_name, info=DeviceInfo(serial=d.info.serial),
                     bonded=True)
        for d, k in ((strap, DeviceKind.HEART_RATE), (meter, DeviceKind.GLUCOSE_METER), (cgm, DeviceKind.CGM))
    )))

    async with EmulatedBluez() as bz:
        for device in (strap, meter, cgm):
            await bz.add_device(device)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
        env.update(
            DBUS_SYSTEM_BUS_ADDRESS=bz.bus_address, RPM_EDGE_STATE=str(state), RPM_MQTT_URL=broker.url(),
            RPM_EDGE_MQTT_BACKOFF_MAX_S="1", RPM_EDGE_BLE_BACKOFF_MAX_S="1", PYTHONUNBUFFERED="1",
        )
        agent = AgentProcess(env, tmp_path / "agent.log")
        await agent.start()
        try:
            await wait_until(lambda: all(watcher.samples(d) for d in (hr_id, bgm_id, cgm_id)), timeout=60,
                             what="readings of all three devices")

            broker.stop()
            outage_started = time.monotonic()
            meter.add_record(150, base + timedelta(minutes=40))
            await bz.disconnect(meter)
            await wait_until(lambda: len(meter.notified_values(const.GLUCOSE_MEASUREMENT_UUID)) == 4,
                             what="the new meter record read during the outage")
            await wait_until(lambda: outbox_count(state, bgm_id, "glucose") >= 1, what="the new record committed")

            await quiesce(strap)
            sent_before_kill = len(strap.sent)
            committed = lambda: len(watcher.samples(hr_id, "heart_rate")) + outbox_count(state, hr_id, "heart_rate")  # noqa: E731
            await wait_until(lambda: committed() >= sent_before_kill, what="every heart rate committed before the kill")
            assert await agent.signal(signal.SIGKILL) == -signal.SIGKILL
            await agent.start()
            await wait_until(lambda: len(strap.sent) > sent_before_kill + 5, what="streaming into the new agent")

            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))  # the outage itself
            broker.start()

            cgm_before = len(cgm.records)
            await wait_until(lambda: len(watcher.samples(cgm_id)) > cgm_before, timeout=60,
                             what="CGM readings after the outage")
            await quiesce(strap)
            await quiesce(cgm)
            bpm, rr = expected_beats(strap.sent)
            await wait_until(
                lambda: (len(watcher.samples(hr_id, "heart_rate")), len(watcher.samples(hr_id, "rr_interval")),
                         len(watcher.samples(cgm_id)), len(watcher.samples(bgm_id)))
                >= (len(bpm), len(rr), len(cgm.records), 4),
                timeout=60, what="every reading in MQTT",
            )
        except BaseException:
            print(agent.tail(), file=sys.stderr)  # noqa: T201 - the agent's log, for the failure report
            raise
        finally:
            if agent.alive():
                assert await agent.signal(signal.SIGTERM) == 0, agent.tail()

    duplicates = watcher.duplicates()  # also asserts that each copy repeats its first exactly
    _LOGGER.warning("chaos: outage %.0f s, %d messages, %d duplicate(s)", OUTAGE_S, len(watcher.messages()), duplicates)
    assert [s[2] for s in watcher.samples(hr_id, "heart_rate")] == bpm
    assert [s[2] for s in watcher.samples(hr_id, "rr_interval")] == rr
    assert [s[2] for s in watcher.samples(cgm_id)] == [float(r.mg_dl) for r in cgm.records]
    assert [s[2] for s in watcher.samples(bgm_id)] == [101.0, 102.0, 103.0, 150.0]
    # In order per device: the value sequences above are in the devices' order; times must rise too
    # (not for RR intervals: the strap here sends 1.6 s of beats every 0.1 s, so they overlap).
    for device in (hr_id, bgm_id, cgm_id):
        for metric in ("heart_rate", "glucose"):
            assert in_order(watcher.samples(device, metric)), f"{device} {metric} out of order"
    assert agent.log.read_text().count("edge agent for patient") == 2  # killed once, started twice


def datetime_local():
    from datetime import datetime

    return datetime.now().replace(microsecond=0) - timedelta(hours=2)
