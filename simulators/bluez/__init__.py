"""BlueZ emulated on a private D-Bus system bus, so the real bleak BlueZ backend runs in tests.

- :mod:`simulators.bluez.bus`: a private ``dbus-daemon`` (:class:`PrivateSystemBus`);
- :mod:`simulators.bluez.fake_bluez`: the fake ``bluetoothd``, run under Debian's Python with
  python3-dbus/python3-gi (its module docstring documents the JSON-lines control protocol);
- :mod:`simulators.bluez.emulation`: :class:`EmulatedBluez`, which starts both, sets
  ``DBUS_SYSTEM_BUS_ADDRESS`` and plays the virtual peripherals of :mod:`simulators.ble_devices`.

Usage (inside a coroutine; every process started is stopped by PID when the block exits)::

    from bleak import BleakClient, BleakScanner

    from edge_agent import const
    from simulators.ble_devices import GlucoseMeter, GlucoseRecord, HeartRateStrap
    from simulators.bluez import EmulatedBluez

    async with EmulatedBluez() as bz:
        strap = HeartRateStrap(interval_s=0.1)
        await bz.add_device(strap)
        device = await BleakScanner.find_device_by_address(strap.address, timeout=10)
        async with BleakClient(device, disconnected_callback=on_disconnect) as client:
            await client.start_notify(const.HEART_RATE_MEASUREMENT_UUID, on_measurement)
            await strap.wait_for(lambda _: len(strap.sent) >= 3)  # what reached the client
            await bz.disconnect(strap)  # the strap drops the link: on_disconnect runs
"""

from __future__ import annotations

from simulators.bluez.bus import PrivateSystemBus
from simulators.bluez.emulation import (
    ADAPTER_PATH,
    DEBIAN_PYTHON,
    FAKE_BLUEZ_PATH,
    EmulatedBluez,
    EmulationError,
    GattLayout,
    gatt_layout,
)

__all__ = [
    "ADAPTER_PATH",
    "DEBIAN_PYTHON",
    "FAKE_BLUEZ_PATH",
    "EmulatedBluez",
    "EmulationError",
    "GattLayout",
    "PrivateSystemBus",
    "gatt_layout",
]
