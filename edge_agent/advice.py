"""Plain-language errors for the people who run ``rpm edge`` at home: what went wrong, and what to do.

A patient (or the clinic pairing for them) reads these, so no Python exception names, no
tracebacks: :func:`plain_error` walks an exception and its causes (our errors wrap bleak's and
dbus-fast's, ``raise … from exc``) and picks the first cause it can explain, with the next step.
Passkeys typed on a keyboard are parsed by :func:`parse_passkey`, which never raises.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from typing import Final

from edge_agent.errors import DeviceNotFoundError, EdgeAgentError, PairingError, RegistryError
from rpm_core.errors import RpmError

BLUETOOTH_OFF: Final = (
    "Bluetooth is switched off. Turn it on with:  bluetoothctl power on\n"
    "(if it stays off, it may be blocked: run  rfkill list  and  sudo rfkill unblock bluetooth)"
)
NO_ADAPTER: Final = (
    "This computer has no working Bluetooth adapter. Plug in (or enable) the Bluetooth adapter, then try again."
)
BLUEZ_NOT_RUNNING: Final = (
    "The Bluetooth service (BlueZ) is not running. Start it with:  sudo systemctl start bluetooth\n"
    "(and  sudo systemctl enable bluetooth  so that it starts with the computer)"
)
NO_SYSTEM_BUS: Final = (
    "The system message bus (D-Bus) is not running, so Bluetooth cannot be used. Start it with:  "
    "sudo systemctl start dbus  (or restart the computer)"
)
NOT_ALLOWED: Final = (
    "This user may not use Bluetooth. Add it to the bluetooth group:  sudo usermod -aG bluetooth $USER  "
    "then log out and in again (the rpm-edge service user is set up this way by the install steps)"
)
# Passkeys are six decimal digits (Bluetooth Core, Security Manager "Passkey Entry": 000000-999999).
PASSKEY_MAX: Final = 999_999
# Six digits as shown, or in two groups of three ("123 456", "123-456").
_PASSKEY: Final = re.compile(r"[0-9]{3}[ -]?[0-9]{3}|[0-9]{1,6}")


def parse_passkey(text: str) -> int | None:
    """The passkey a person typed (``123456``, ``123 456``, ``123-456``), or None if it is not one."""
    match = _PASSKEY.fullmatch(text.strip())
    return None if match is None else int(re.sub(r"[ -]", "", match.group(0)))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _bluetooth_unavailable(exc: BaseException) -> str | None:
    """Advice for bleak's "Bluetooth not available" and D-Bus errors, if ``exc`` is one."""
    from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError
    from bleak.exc import BleakBluetoothNotAvailableReason as Reason

    if isinstance(exc, BleakBluetoothNotAvailableError):
        reason = exc.reason
        if reason is Reason.POWERED_OFF:
            return BLUETOOTH_OFF
        if reason in (Reason.NO_BLUETOOTH, Reason.NO_BLE_CENTRAL_ROLE):
            return NO_ADAPTER
        if reason in (Reason.DENIED_BY_SYSTEM, Reason.DENIED_BY_USER, Reason.DENIED_BY_UNKNOWN):
            return NOT_ALLOWED
    if isinstance(exc, BleakDBusError):
        if exc.dbus_error in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
            return BLUEZ_NOT_RUNNING
        if exc.dbus_error == "org.bluez.Error.NotReady":
            return BLUETOOTH_OFF
        if exc.dbus_error == "org.freedesktop.DBus.Error.AccessDenied":
            return NOT_ALLOWED
    return None


def _explain_one(exc: BaseException, *, timeout_s: float | None) -> str | None:
    if isinstance(exc, DeviceNotFoundError):
        looked = f" within {timeout_s:g} s" if timeout_s else ""
        return (
            f"No device with address {exc.address} answered{looked}. Put the device in pairing mode (its "
            "manual says how; often: hold its button until a light blinks), bring it within a metre of this "
            "computer, and try again (add  --timeout 30  to look for longer)."
        )
    if isinstance(exc, PairingError) and any(
        word in exc.reason for word in ("AuthenticationFailed", "AuthenticationRejected", "Canceled", "cancelled")
    ):
        return (
            f"Pairing with {exc.address} did not finish: the passkey was wrong, pairing was cancelled, or the "
            "device left pairing mode. Put it in pairing mode again and retry; if it was paired before, remove "
            "the old pairing on the device first."
        )
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ECONNREFUSED)
    ):
        return NO_SYSTEM_BUS
    if isinstance(exc, PermissionError):
        return NOT_ALLOWED
    if "org.freedesktop.DBus.Error.ServiceUnknown" in str(exc) and "org.bluez" in str(exc):
        return BLUEZ_NOT_RUNNING
    try:
        return _bluetooth_unavailable(exc)
    except ImportError:  # bleak not installed: nothing of it can have failed
        return None


def bluetooth_unavailable(exc: BaseException) -> str | None:
    """Advice if ``exc`` (or a cause) means this computer's Bluetooth cannot be used at all (switched
    off, no adapter, BlueZ or D-Bus not running), else None: then no device can be reached."""
    for link in _chain(exc):
        advice = _explain_one(link, timeout_s=None)
        if advice in (BLUETOOTH_OFF, NO_ADAPTER, BLUEZ_NOT_RUNNING, NO_SYSTEM_BUS, NOT_ALLOWED):
            return advice
    return None


def plain_error(exc: BaseException, *, timeout_s: float | None = None) -> str:
    """What went wrong, in plain language, with the next step; never a traceback."""
    for link in _chain(exc):
        advice = _explain_one(link, timeout_s=timeout_s)
        if advice is not None:
            return advice
    if isinstance(exc, EdgeAgentError | RegistryError | RpmError):
        return str(exc)  # our own errors already say what is wrong and what to do (file, fix)
    return (
        f"Something unexpected went wrong ({type(exc).__name__}). Nothing was changed. Try again; if it keeps "
        "happening, run the same command with RPM_LOG_LEVEL=debug and send the output to the clinic."
    )
