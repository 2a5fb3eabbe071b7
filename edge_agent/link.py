"""The BLE boundary: finding and connecting devices with bleak + bleak-retry-connector, GATT I/O
with bleak's errors translated into :mod:`edge_agent.errors`, and the reconnect policy.

Why bleak-retry-connector: ``establish_connection`` already knows BlueZ's transient failures
(``le-connection-abort-by-local``, a D-Bus connection dying under us, stale connections left by a
crashed process, a services cache out of sync) and how long to back off for each
(``calculate_backoff_time``). We use it for *one* connection (a few quick attempts), and put our
own slower loop around it (:func:`reconnect_delay_s`) for devices that are away for minutes or
hours. Each device has exactly one session task running that loop, so there is never more than one
connection attempt per device at a time (and :func:`connect` holds a per-address lock in case
anything else in the process tries).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from edge_agent import const
from edge_agent.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceNotFoundError,
    DeviceProtocolError,
    RacpError,
)

if TYPE_CHECKING:  # bleak is imported lazily, so `rpm --help` stays light
    from bleak import BleakClient
    from bleak.backends.characteristic import BleakGATTCharacteristic
    from bleak.backends.device import BLEDevice

_LOGGER = logging.getLogger(__name__)

NotifyCallback = Callable[["BleakGATTCharacteristic", bytearray], None]
# After a link that worked drops (a meter hanging up, a remote disconnect), reconnect promptly.
_AFTER_LINK_LOSS_S: Final = 0.5
_CONNECT_LOCKS: dict[str, asyncio.Lock] = {}


def _equal_jitter(ceiling: float, rng: random.Random | None) -> float:
    uniform = rng.uniform if rng is not None else random.uniform
    return float(ceiling / 2 + uniform(0, ceiling / 2))


def reconnect_delay_s(
    error: BaseException | None, attempt: int, *, cap_s: float, rng: random.Random | None = None
) -> float:
    """How long a device session waits before connecting again (pure policy, jittered).

    - ``None`` (the link worked and then dropped): half a second;
    - :class:`DeviceNotFoundError` (out of range, switched off): exponential from 2 s to the cap;
    - :class:`DeviceConnectionError`: bleak-retry-connector's per-error backoff, plus exponential;
    - :class:`DeviceProtocolError` (e.g. not paired) / :class:`RacpError`: slow, it won't fix itself soon;
    - anything else (a bug, logged with its traceback): exponential.
    """
    exponential = 2.0 * 2 ** min(attempt, 30)
    if error is None:
        return _equal_jitter(_AFTER_LINK_LOSS_S, rng)
    if isinstance(error, DeviceProtocolError | RacpError):
        return _equal_jitter(min(cap_s, max(const.BLE_PROTOCOL_ERROR_BACKOFF_S, exponential)), rng)
    if isinstance(error, DeviceConnectionError) and error.__cause__ is not None:
        from bleak_retry_connector import calculate_backoff_time

        cause = error.__cause__
        base = calculate_backoff_time(cause) if isinstance(cause, Exception) else 0.0
        return base + _equal_jitter(min(cap_s, exponential / 2), rng)
    return _equal_jitter(min(cap_s, exponential), rng)


async def find_device(address: str, *, scan_timeout_s: float = const.BLE_SCAN_TIMEOUT_S) -> BLEDevice:
    """The device as BlueZ knows it (bonded or recently seen), else from a scan of ``scan_timeout_s``."""
    from bleak import BleakScanner
    from bleak.exc import BleakError
    from bleak_retry_connector import get_device

    try:
        device = await get_device(address)
        if device is None:
            device = await BleakScanner.find_device_by_address(address, timeout=scan_timeout_s)
    except (BleakError, EOFError, BrokenPipeError, OSError) as exc:
        raise DeviceConnectionError(address, f"scan failed: {exc}") from exc
    if device is None:
        raise DeviceNotFoundError(address)
    return device


async def connect(
    device: BLEDevice, *, name: str, on_disconnect: Callable[[], None], pair: bool = False
) -> BleakClient:
    """Connect (and with ``pair``, bond) through bleak-retry-connector's ``establish_connection``."""
    from bleak.exc import BleakError
    from bleak_retry_connector import BleakClientWithServiceCache, BleakNotFoundError, establish_connection

    lock = _CONNECT_LOCKS.setdefault(device.address, asyncio.Lock())
    async with lock:
        try:
            return await establish_connection(
                BleakClientWithServiceCache,
                device,
                name,
                disconnected_callback=lambda _client: on_disconnect(),
                max_attempts=const.BLE_CONNECT_ATTEMPTS,
                pair=pair,
            )
        except BleakNotFoundError as exc:
            raise DeviceNotFoundError(device.address) from exc
        except (BleakError, TimeoutError, EOFError, BrokenPipeError, OSError) as exc:
            raise DeviceConnectionError(device.address, str(exc) or type(exc).__name__) from exc


def _translate(address: str, what: str, exc: Exception) -> DeviceError:
    from bleak.exc import BleakDBusError, BleakGATTProtocolError

    if isinstance(exc, BleakGATTProtocolError):
        return DeviceProtocolError(address, f"{what}: {exc}", int(exc.code))
    if isinstance(exc, BleakDBusError) and exc.dbus_error.startswith("org.bluez.Error.Not"):
        # NotPermitted "Not paired", NotAuthorized, NotSupported: the device refuses, not the link.
        return DeviceProtocolError(address, f"{what}: {exc.dbus_error} {exc.dbus_error_details or ''}".strip())
    return DeviceConnectionError(address, f"{what}: {exc}")


async def read(client: BleakClient, uuid: str) -> bytes:
    """Read a characteristic; bleak errors become :mod:`edge_agent.errors`."""
    from bleak.exc import BleakError

    try:
        return bytes(await client.read_gatt_char(uuid))
    except (BleakError, TimeoutError, EOFError, BrokenPipeError) as exc:
        raise _translate(client.address, f"read {uuid[4:8]}", exc) from exc


async def write(client: BleakClient, uuid: str, data: bytes) -> None:
    """Write with response (control points); bleak errors become :mod:`edge_agent.errors`."""
    from bleak.exc import BleakError

    try:
        await client.write_gatt_char(uuid, data, response=True)
    except (BleakError, TimeoutError, EOFError, BrokenPipeError) as exc:
        raise _translate(client.address, f"write {uuid[4:8]}", exc) from exc


async def subscribe(client: BleakClient, uuid: str, callback: NotifyCallback) -> None:
    """Enable notifications/indications; bleak errors become :mod:`edge_agent.errors`."""
    from bleak.exc import BleakError

    try:
        await client.start_notify(uuid, callback)
    except (BleakError, TimeoutError, EOFError, BrokenPipeError) as exc:
        raise _translate(client.address, f"subscribe {uuid[4:8]}", exc) from exc


def has_characteristic(client: BleakClient, uuid: str, prop: str | None = None) -> bool:
    """Whether the device has ``uuid`` (with property ``prop``, e.g. ``"notify"``)."""
    char = client.services.get_characteristic(uuid)
    return char is not None and (prop is None or prop in char.properties)


async def read_optional(client: BleakClient, uuid: str) -> bytes | None:
    """Read ``uuid`` if the device has it; None if it does not or refuses."""
    if not has_characteristic(client, uuid, "read"):
        return None
    try:
        return await read(client, uuid)
    except DeviceProtocolError as exc:
        _LOGGER.debug("%s", exc)
        return None


async def disconnect(client: BleakClient) -> None:
    """Disconnect, bounded in time, never raising (used on the way out)."""
    try:
        async with asyncio.timeout(const.BLE_DISCONNECT_TIMEOUT_S):
            await client.disconnect()
    except Exception as exc:
        _LOGGER.debug("%s: disconnect: %r", client.address, exc)
