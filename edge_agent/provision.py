"""Pairing a device: scan for health devices, bond, read Device Information and Battery.

Used by ``rpm edge pair``. Bonding may need a passkey (CGMs typically show one): BlueZ asks the
registered ``org.bluez.Agent1`` for it, and bleak registers none, so the CLI registers
:func:`edge_agent.bluez_agent.passkey_agent` for the duration of the pairing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from edge_agent import const, link
from edge_agent.errors import DeviceError, GattDecodeError, PairingError
from edge_agent.gatt import decode_dis_string, parse_battery_level
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, kind_from_service_uuids, now_iso

if TYPE_CHECKING:
    from bleak import BleakClient

_LOGGER = logging.getLogger(__name__)

HEALTH_SERVICE_UUIDS: Final = [const.HEART_RATE_SERVICE_UUID, const.GLUCOSE_SERVICE_UUID, const.CGM_SERVICE_UUID]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A health device heard during a scan."""

    address: str
    name: str | None
    rssi: int | None
    kind: DeviceKind


async def scan(timeout_s: float = const.DEFAULT_PAIR_SCAN_TIMEOUT_S) -> list[Candidate]:
    """Devices advertising HRS 0x180D, GLS 0x1808 or CGMS 0x181F, strongest signal first."""
    from bleak import BleakScanner
    from bleak.exc import BleakError

    try:
        found = await BleakScanner.discover(timeout=timeout_s, return_adv=True, service_uuids=HEALTH_SERVICE_UUIDS)
    except (BleakError, OSError, EOFError) as exc:
        raise DeviceError(f"scan failed: {exc}") from exc
    candidates = []
    for device, adv in found.values():
        kind = kind_from_service_uuids(adv.service_uuids)
        if kind is not None:
            candidates.append(Candidate(device.address.upper(), adv.local_name or device.name, adv.rssi, kind))
    return sorted(candidates, key=lambda c: -(c.rssi if c.rssi is not None else -999))


async def pair_device(address: str, *, timeout_s: float = const.DEFAULT_PAIR_SCAN_TIMEOUT_S) -> PairedDevice:
    """Find ``address``, connect, bond, and read what identifies it; the device is left disconnected."""
    device = await link.find_device(address, scan_timeout_s=timeout_s)
    client = await link.connect(device, name=device.name or address, on_disconnect=lambda: None)
    try:
        await _bond(client)
        kind = _kind(client, device.details)
        info = await read_device_information(client)
        battery = await _battery(client)
    finally:
        await link.disconnect(client)
    _LOGGER.info("paired %s (%s, serial %s)", address, kind.value, info.serial)
    return PairedDevice(
        address=device.address.upper(),
        kind=kind,
        name=device.name,
        info=info,
        battery_pct=battery,
        bonded=True,
        paired_at=now_iso(),
    )


async def _bond(client: BleakClient) -> None:
    from bleak.exc import BleakError

    try:
        await client.pair()
    except BleakError as exc:  # AuthenticationFailed/Rejected/Canceled, or the link dropped
        raise PairingError(client.address, str(exc)) from exc


def _kind(client: BleakClient, details: object) -> DeviceKind:
    uuids = [s.uuid for s in client.services]
    kind = kind_from_service_uuids(uuids)
    if kind is None:
        raise PairingError(client.address, "it is not a heart-rate strap, glucose meter or CGM")
    return kind


async def read_device_information(client: BleakClient) -> DeviceInfo:
    """Device Information strings (absent ones are None)."""
    fields = {
        "manufacturer": const.MANUFACTURER_NAME_UUID,
        "model": const.MODEL_NUMBER_UUID,
        "serial": const.SERIAL_NUMBER_UUID,
        "firmware": const.FIRMWARE_REVISION_UUID,
    }
    values: dict[str, str | None] = {}
    for name, uuid in fields.items():
        data = await link.read_optional(client, uuid)
        try:
            values[name] = decode_dis_string(data) or None if data is not None else None
        except GattDecodeError as exc:
            _LOGGER.warning("%s: malformed %s: %s", client.address, name, exc)
            values[name] = None
    return DeviceInfo(**values)


async def _battery(client: BleakClient) -> int | None:
    data = await link.read_optional(client, const.BATTERY_LEVEL_UUID)
    try:
        return None if data is None else parse_battery_level(data)
    except GattDecodeError:
        return None


async def unpair(address: str) -> bool:
    """Remove the bond from BlueZ (best effort); False if BlueZ does not know the device."""
    from bleak import BleakClient
    from bleak.exc import BleakError

    device = await link.find_device(address, scan_timeout_s=const.BLE_SCAN_TIMEOUT_S)
    try:
        await BleakClient(device).unpair()
    except BleakError as exc:
        _LOGGER.info("%s: unpair: %s", address, exc)
        return False
    return True
