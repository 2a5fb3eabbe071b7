"""Pins the bleak and dbus-fast internals the BlueZ emulation relies on, so an upgrade fails here first.

- ``bleak.backends.bluezdbus.manager._global_instances[loop]._bus``: the per-loop D-Bus connection
  that ``EmulatedBluez`` waits on at exit (``_wait_until_bleak_sees_bus_loss``);
- dbus-fast resolving the system bus from ``DBUS_SYSTEM_BUS_ADDRESS`` whenever a bus is created;
- bleak deriving a device path from a characteristic path by length, which only works with
  BlueZ's ``serviceXXXX/charYYYY`` naming (four hex digits), which the fake reproduces.
"""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakScanner
from bleak.backends.bluezdbus import manager as bluez_manager
from bleak.backends.bluezdbus.utils import device_path_from_characteristic_path
from dbus_fast import BusType
from dbus_fast._private.address import get_bus_address
from dbus_fast.aio import MessageBus

from simulators.ble_devices import HeartRateStrap
from simulators.bluez import EmulatedBluez


@pytest.mark.usefixtures("bluez_prerequisites")
async def test_bleak_keeps_one_bluez_connection_per_event_loop() -> None:
    strap = HeartRateStrap()
    async with EmulatedBluez() as bz, asyncio.timeout(30):
        await bz.add_device(strap)
        assert await BleakScanner.find_device_by_address(strap.address, timeout=10) is not None
        bus = bluez_manager._global_instances[asyncio.get_running_loop()]._bus
        assert isinstance(bus, MessageBus)
        assert bus.connected
    assert not bus.connected  # the emulation let bleak see its bus go away


def test_dbus_fast_reads_the_system_bus_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/rpm-test/bus")
    assert get_bus_address(BusType.SYSTEM) == "unix:path=/run/rpm-test/bus"


def test_bleak_derives_the_device_path_from_bluez_characteristic_paths() -> None:
    device = "/org/bluez/hci0/dev_C0_FF_EE_00_00_01"
    assert device_path_from_characteristic_path(f"{device}/service0010/char0011") == device
