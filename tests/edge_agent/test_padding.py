"""Padded notifications decode; the trailing bytes are ignored and counted (issue 14, item 4)."""

from __future__ import annotations

import pytest

from edge_agent import const
from edge_agent.errors import GattDecodeError, OverlongPayloadError
from edge_agent.gatt import (
    HeartRateMeasurement,
    SensorContact,
    decode_padded,
    parse_battery_level,
    parse_glucose_context,
    parse_glucose_measurement,
)
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry
from edge_agent.session import HeartRateSession
from simulators.ble_devices import HeartRateStrap
from simulators.bluez import EmulatedBluez

GLUCOSE_VECTOR = bytes.fromhex("0201 00e8 0703 0f08 1e00 64b0 11".replace(" ", ""))


@pytest.mark.parametrize(("data", "bpm", "rr", "trailing"), [
    ("00 48 00", 72, None, 1),  # the example: 72 bpm plus one byte
    ("00 48 00 00 00", 72, None, 3),
    ("10 3c 00 04 00", 60, (1024,), 1),  # RR present: an odd byte after the intervals is padding
    ("16 48 00 04 02 03", 72, (1024, 770), 0),  # a spec vector decodes as before, nothing ignored
])
def test_heart_rate_padding(data: str, bpm: int, rr: tuple[int, ...] | None, trailing: int) -> None:
    m, ignored = decode_padded(HeartRateMeasurement.from_bytes, bytes.fromhex(data))
    assert (m.bpm, m.rr_intervals, ignored) == (bpm, rr, trailing)


def test_strict_decoding_still_refuses_padding_and_padding_never_hides_truncation() -> None:
    with pytest.raises(OverlongPayloadError) as info:
        HeartRateMeasurement.from_bytes(bytes.fromhex("00 48 00"))
    assert info.value.field == "length" and info.value.consumed == 2
    with pytest.raises(GattDecodeError, match="truncated"):
        decode_padded(HeartRateMeasurement.from_bytes, bytes.fromhex("01 48"))  # u16 heart rate, one byte


def test_glucose_context_and_battery_padding() -> None:
    m, ignored = decode_padded(parse_glucose_measurement, GLUCOSE_VECTOR + b"\x00\x00")
    assert (m.sequence_number, round(m.glucose_mg_dl or 0), ignored) == (1, 100, 2)
    ctx, ignored = decode_padded(parse_glucose_context, bytes.fromhex("02 2a 00 03 ff"))
    assert (ctx.sequence_number, ignored) == (42, 1)
    assert decode_padded(parse_battery_level, b"\x40\x00") == (64, 1)


@pytest.mark.services
@pytest.mark.usefixtures("edge_bluez_prerequisites")
async def test_a_strap_that_pads_its_notifications_loses_no_reading(agent_in_process, watcher, wait_until) -> None:
    strap = HeartRateStrap(samples=[HeartRateMeasurement(70, SensorContact.DETECTED)], interval_s=3600)
    device = f"hr-{strap.address}"
    registry = Registry(patient="p0001", devices=(PairedDevice(
        address=strap.address, kind=DeviceKind.HEART_RATE, info=DeviceInfo(serial="HR-1"), bonded=True),))
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        async with agent_in_process(registry) as agent:
            await wait_until(lambda: len(watcher.samples(device, "heart_rate")) == 1, what="the first reading")
            for value in ("00 48 00", "10 3c 00 04 00", "00 4b"):
                assert await bz.notify(strap, const.HEART_RATE_MEASUREMENT_UUID, bytes.fromhex(value))
            await wait_until(lambda: len(watcher.samples(device, "heart_rate")) == 4, what="the padded readings")
            session = agent.sessions[0]
            assert isinstance(session, HeartRateSession)
            assert session.problems.counts == {"padded notification (trailing bytes ignored)": 2}
    assert [s[2] for s in watcher.samples(device, "heart_rate")] == [70.0, 72.0, 60.0, 75.0]
    assert [s[2] for s in watcher.samples(device, "rr_interval")] == [1.0]
