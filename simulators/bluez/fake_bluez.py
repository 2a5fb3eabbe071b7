# mypy: ignore-errors
"""A fake ``bluetoothd``: BlueZ's D-Bus API with virtual peripherals, driven over a JSON-lines link.

Run it with Debian's Python (it needs python3-dbus and python3-gi from apt, nothing from the
project venv)::

    /usr/bin/python3 -I simulators/bluez/fake_bluez.py --address unix:path=/tmp/x/bus --control -

It owns ``org.bluez`` on the given bus and exports what bleak's BlueZ backend uses
(bleak ``backends/bluezdbus/{manager,client,scanner}.py``; object layout as in BlueZ
``doc/org.bluez.*.rst`` and dbusmock's ``bluez5`` template):

- ``/`` ``org.freedesktop.DBus.ObjectManager``: ``GetManagedObjects``, ``InterfacesAdded``,
  ``InterfacesRemoved`` (emitted for every object that appears or goes away);
- ``/org/bluez`` ``AgentManager1`` (``RegisterAgent``, ``UnregisterAgent``, ``RequestDefaultAgent``)
  and a stub ``ProfileManager1``;
- ``/org/bluez/hci0`` ``Adapter1``: ``StartDiscovery``/``StopDiscovery`` (per D-Bus client, like
  bluetoothd), ``SetDiscoveryFilter`` (``UUIDs`` honoured), ``GetDiscoveryFilters``,
  ``RemoveDevice``; ``Roles`` contains ``central`` (bleak requires it);
- ``…/dev_XX_XX_XX_XX_XX_XX`` ``Device1``: ``Connect``, ``Disconnect``, ``Pair``,
  ``CancelPairing``; properties as bluetoothd publishes them (``ManufacturerData`` ``a{qv}``,
  ``ServiceData`` ``a{sv}``, ``RSSI`` only while discovering);
- ``…/serviceXXXX``, ``…/charYYYY``, ``…/descZZZZ`` (handles in hex, as BlueZ names them)
  ``GattService1``, ``GattCharacteristic1`` (``ReadValue``, ``WriteValue``, ``StartNotify``,
  ``StopNotify``; notifications and indications arrive as ``PropertiesChanged`` on ``Value``)
  and ``GattDescriptor1``.

Behaviour that mirrors bluetoothd, because code under test depends on it:

- a device object appears (``InterfacesAdded``) when discovery first "hears" it, and while
  anyone is discovering its ``RSSI`` is re-published every advertising interval: bleak's scanner
  only reports devices whose properties change while it scans. Stopping discovery invalidates
  ``RSSI``/``TxPower``; devices that were paired stay (bluetoothd keeps bonded devices);
- ``Connect`` sets ``Connected``, exports the GATT tree (once; bluetoothd's default ``Cache=always``
  keeps it across disconnections), adds the service UUIDs to ``UUIDs`` and sets
  ``ServicesResolved``, then replies. ``Pair`` connects first when needed, then sets ``Paired`` and
  ``Bonded``. A peripheral out of range leaves ``Connect`` pending until it comes back in range,
  ``Disconnect`` cancels it, or ``--connect-timeout`` passes (then
  ``org.bluez.Error.Failed: le-connection-abort-by-local``);
- ATT errors map to D-Bus errors exactly as bluetoothd's ``create_gatt_dbus_error()``: 0x05/0x0C/0x0F
  become ``org.bluez.Error.NotPermitted: Not paired``, 0x02/0x03 ``NotPermitted: Read/Write not
  permitted``, 0x06 ``NotSupported``, 0x08 ``NotAuthorized``, anything else
  ``org.bluez.Error.Failed: Operation failed with ATT error: 0xNN`` (which bleak turns into
  ``BleakGATTProtocolError``). A characteristic marked ``encrypted`` answers 0x05 until paired;
- a read updates the cached ``Value`` and emits ``PropertiesChanged`` like bluetoothd does, so a
  subscribed client also sees read values in its notification callback (bleak documents this);
- a notify session belongs to the D-Bus client that started it and ends when that client leaves
  the bus or the link drops (``Notifying`` goes false).

Control link
============
One JSON object per line, UTF-8, in both directions, over stdin/stdout (``--control -``) or a
unix stream socket the controller listens on (``--control unix:PATH``). Bytes travel as
lower-case hex strings; characteristics are named by their handle (the ``charYYYY`` number).

Controller → fake, commands (each answered by ``{"id": N, "ok": true, "result": …}`` or
``{"id": N, "ok": false, "error": "…"}``):

- ``{"id": N, "op": "add_device", "device": SPEC, "bonded": false}`` → ``{"path": "/org/bluez/…"}``.
  ``SPEC``: ``address``, ``address_type`` (``public``/``random``), ``name`` (or null), ``rssi``,
  ``tx_power`` (or null), ``uuids`` (advertised), ``manufacturer_data`` (``{"<company id>": hex}``),
  ``service_data`` (``{uuid: hex}``), ``appearance`` (or null), ``pairing`` (``just-works`` |
  ``passkey`` | ``reject``), ``passkey`` (int or null), ``mtu``, ``services``:
  ``[{"handle", "uuid", "characteristics": [{"handle", "uuid", "flags": [BlueZ flag names],
  "encrypted": bool, "value": hex, "descriptors": [{"handle", "uuid", "flags", "value"}]}]}]``.
  With ``bonded`` the device is known to BlueZ from the start (exported, ``Paired``/``Bonded``).
- ``remove_device {address}``: the peripheral disappears (disconnected, removed from D-Bus).
- ``notify {address, handle, value}`` → ``{"delivered": bool}``: a notification or indication
  from the peripheral; delivered only while connected and someone is subscribed.
- ``disconnect {address}``: the peripheral drops the link (remote disconnect).
- ``set_rssi {address, rssi}``; ``set_in_range {address, in_range}`` (out of range: no
  advertising, ``Connect`` stays pending, a live link drops).
- ``fail_connects {address, count}``: the next ``count`` connection attempts fail the way a
  flaky radio does: ``Connected`` flips true then false and ``Connect`` fails with
  ``org.bluez.Error.Failed: le-connection-abort-by-local`` (bleak retries those by itself).
- ``state {address}`` → ``{"connected", "paired", "trusted", "exported", "notifying": [handles]}``.
- ``shutdown``: reply, then exit.

If the link reaches EOF without a ``shutdown`` (the controller died), the fake exits too, and
with ``--bus-pid`` it first sends SIGTERM to that ``dbus-daemon``, so that a killed test run
leaves no processes behind.

Controller → fake, answers to requests (no reply): ``{"op": "answer", "req": N, "value": hex}``
or ``{"op": "answer", "req": N, "att_error": CODE}``.

Fake → controller:

- requests the controller must answer: ``{"req": N, "op": "read", "address", "handle"}`` and
  ``{"req": N, "op": "write", "address", "handle", "value": hex, "with_response": bool}``
  (write commands are not waited for, but are still sent, in order);
- events: ``{"event": "ready", "adapter": PATH}``, ``{"event": "connected", "address"}``,
  ``{"event": "disconnected", "address", "reason": "local" | "remote" | "removed"}``,
  ``{"event": "paired", "address"}``, ``{"event": "subscribed", "address", "handle",
  "enabled": bool}``, ``{"event": "discovering", "enabled": bool}``.

Everything on the link is processed in order, so a reply to a write request sent before a
``notify`` command reaches D-Bus before that notification.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from types import MappingProxyType

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

_LOGGER = logging.getLogger("fake_bluez")

BUS_NAME = "org.bluez"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
AGENT_MANAGER_IFACE = "org.bluez.AgentManager1"
PROFILE_MANAGER_IFACE = "org.bluez.ProfileManager1"
AGENT_IFACE = "org.bluez.Agent1"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"
DESCRIPTOR_IFACE = "org.bluez.GattDescriptor1"

CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
ABORT_BY_LOCAL = "le-connection-abort-by-local"

# ATT error codes (Core Vol 3 Part F 3.4.1.1) that bluetoothd maps to dedicated D-Bus errors.
ATT_READ_NOT_PERMITTED = 0x02
ATT_WRITE_NOT_PERMITTED = 0x03
ATT_INSUFFICIENT_AUTHENTICATION = 0x05
ATT_REQUEST_NOT_SUPPORTED = 0x06
ATT_INVALID_OFFSET = 0x07
ATT_INSUFFICIENT_AUTHORIZATION = 0x08
ATT_INSUFFICIENT_ENCRYPTION_KEY_SIZE = 0x0C
ATT_INVALID_ATTRIBUTE_VALUE_LENGTH = 0x0D
ATT_INSUFFICIENT_ENCRYPTION = 0x0F


class BluezError(dbus.DBusException):
    """An ``org.bluez.Error.*`` reply; the message is the reply body's only string, as in BlueZ."""

    include_traceback = False

    def __init__(self, name, message=""):
        super().__init__(message, name=f"org.bluez.Error.{name}")


def att_error(code):
    """The D-Bus error bluetoothd replies for ATT error ``code`` (src/gatt-client.c)."""
    if code == ATT_READ_NOT_PERMITTED:
        return BluezError("NotPermitted", "Read not permitted")
    if code == ATT_WRITE_NOT_PERMITTED:
        return BluezError("NotPermitted", "Write not permitted")
    if code in (ATT_INSUFFICIENT_AUTHENTICATION, ATT_INSUFFICIENT_ENCRYPTION, ATT_INSUFFICIENT_ENCRYPTION_KEY_SIZE):
        return BluezError("NotPermitted", "Not paired")
    if code == ATT_INVALID_OFFSET:
        return BluezError("InvalidArguments", "Invalid offset")
    if code == ATT_INVALID_ATTRIBUTE_VALUE_LENGTH:
        return BluezError("InvalidArguments", "Invalid Length")
    if code == ATT_INSUFFICIENT_AUTHORIZATION:
        return BluezError("NotAuthorized", "Operation Not Authorized")
    if code == ATT_REQUEST_NOT_SUPPORTED:
        return BluezError("NotSupported", "Operation is not supported")
    if code == 0:
        return BluezError("Failed", "Operation failed")
    return BluezError("Failed", f"Operation failed with ATT error: 0x{code:02x}")


def byte_array(data):
    return dbus.Array([dbus.Byte(b) for b in data], signature="y")


def string_array(items):
    return dbus.Array([dbus.String(s) for s in items], signature="s")


# ---------------------------------------------------------------------------------------------
# control link


class ControlLink:
    """JSON lines over a pair of file descriptors, read from the GLib main loop."""

    def __init__(self, read_fd, write_fd, on_message, on_eof):
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._on_message = on_message
        self._on_eof = on_eof
        self._buffer = b""
        self._next_req = 0
        self._pending = {}
        GLib.io_add_watch(read_fd, GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, self._readable)

    def send(self, message):
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        while data:
            written = os.write(self._write_fd, data)
            data = data[written:]

    def event(self, name, **fields):
        self.send({"event": name, **fields})

    def request(self, message, on_answer, timeout_s):
        """Send a request; ``on_answer(answer_dict)`` runs once, with ``{"timeout": True}`` if late."""
        self._next_req += 1
        req = self._next_req
        timer = GLib.timeout_add(int(timeout_s * 1000), self._expire, req)
        self._pending[req] = (on_answer, timer)
        self.send({"req": req, **message})

    def _expire(self, req):
        entry = self._pending.pop(req, None)
        if entry is not None:
            _LOGGER.warning("controller did not answer request %d", req)
            entry[0]({"timeout": True})
        return False

    def _readable(self, _fd, condition):
        data = os.read(self._read_fd, 65536) if condition & GLib.IO_IN else b""
        if not data:
            self._on_eof()
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._dispatch(json.loads(line))
        return True

    def _dispatch(self, message):
        if message.get("op") != "answer":
            self._on_message(message)
            return
        entry = self._pending.pop(message["req"], None)
        if entry is None:
            return  # answered after its timeout, or a write command nobody waits for
        on_answer, timer = entry
        GLib.source_remove(timer)
        on_answer(message)


# ---------------------------------------------------------------------------------------------
# D-Bus objects


class BluezObject(dbus.service.Object):
    """An exported object with ``org.freedesktop.DBus.Properties`` over ``self.props``."""

    WRITABLE = MappingProxyType({})

    def __init__(self, daemon, path, props, *, export=True):
        self.daemon = daemon
        self.path = path
        self.props = props
        super().__init__(daemon.bus if export else None, path if export else None)

    def managed(self):
        return {iface: dbus.Dictionary(p, signature="sv") for iface, p in self.props.items()}

    def update(self, iface, invalidated=(), **changes):
        """Change properties and emit one ``PropertiesChanged``."""
        props = self.props[iface]
        props.update(changes)
        for name in invalidated:
            props.pop(name, None)
        self.PropertiesChanged(iface, dbus.Dictionary(changes, signature="sv"), string_array(invalidated))

    @dbus.service.method(PROPERTIES_IFACE, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        try:
            return self.props[iface][name]
        except KeyError:
            raise dbus.DBusException(
                f"No such property {name}", name="org.freedesktop.DBus.Error.InvalidArgs"
            ) from None

    @dbus.service.method(PROPERTIES_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        return dbus.Dictionary(self.props.get(iface, {}), signature="sv")

    @dbus.service.method(PROPERTIES_IFACE, in_signature="ssv", out_signature="")
    def Set(self, iface, name, value):
        if name not in self.props.get(iface, {}):
            raise dbus.DBusException(f"No such property {name}", name="org.freedesktop.DBus.Error.InvalidArgs")
        if name not in self.WRITABLE.get(iface, ()):
            raise dbus.DBusException(
                f"Property {name} is read-only", name="org.freedesktop.DBus.Error.PropertyReadOnly"
            )
        self.set_property(iface, name, value)

    def set_property(self, iface, name, value):
        self.update(iface, **{name: value})

    @dbus.service.signal(PROPERTIES_IFACE, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass


class Root(dbus.service.Object):
    """``/``: the object manager."""

    def __init__(self, daemon):
        self.daemon = daemon
        super().__init__(daemon.bus, "/")

    @dbus.service.method(OBJECT_MANAGER_IFACE, in_signature="", out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        return {dbus.ObjectPath(path): obj.managed() for path, obj in self.daemon.objects.items()}

    @dbus.service.signal(OBJECT_MANAGER_IFACE, signature="oa{sa{sv}}")
    def InterfacesAdded(self, path, interfaces):
        pass

    @dbus.service.signal(OBJECT_MANAGER_IFACE, signature="oas")
    def InterfacesRemoved(self, path, interfaces):
        pass


class AgentManager(BluezObject):
    """``/org/bluez``: agents are remembered so that passkey pairing can ask the default one."""

    def __init__(self, daemon):
        super().__init__(daemon, "/org/bluez", {AGENT_MANAGER_IFACE: {}, PROFILE_MANAGER_IFACE: {}})
        self.agents = {}  # (sender, path) -> capability
        self.default = None
        self._watches = {}

    @dbus.service.method(AGENT_MANAGER_IFACE, in_signature="os", out_signature="", sender_keyword="sender")
    def RegisterAgent(self, agent, capability, sender=None):
        key = (str(sender), str(agent))
        if key in self.agents:
            raise BluezError("AlreadyExists", "Already Exists")
        self.agents[key] = str(capability)
        if sender not in self._watches:
            self._watches[sender] = self.daemon.bus.watch_name_owner(sender, self._owner_changed(sender))

    @dbus.service.method(AGENT_MANAGER_IFACE, in_signature="o", out_signature="", sender_keyword="sender")
    def UnregisterAgent(self, agent, sender=None):
        key = (str(sender), str(agent))
        if self.agents.pop(key, None) is None:
            raise BluezError("DoesNotExist", "Does Not Exist")
        if self.default == key:
            self.default = None

    @dbus.service.method(AGENT_MANAGER_IFACE, in_signature="o", out_signature="", sender_keyword="sender")
    def RequestDefaultAgent(self, agent, sender=None):
        key = (str(sender), str(agent))
        if key not in self.agents:
            raise BluezError("DoesNotExist", "Does Not Exist")
        self.default = key

    @dbus.service.method(PROFILE_MANAGER_IFACE, in_signature="osa{sv}", out_signature="")
    def RegisterProfile(self, profile, uuid, options):
        pass

    @dbus.service.method(PROFILE_MANAGER_IFACE, in_signature="o", out_signature="")
    def UnregisterProfile(self, profile):
        pass

    def agent_for_pairing(self):
        """The default agent, else the most recently registered one (bluetoothd's choice)."""
        if self.default in self.agents:
            return self.default
        return next(reversed(self.agents), None)

    def _owner_changed(self, sender):
        def changed(new_owner):
            if new_owner:
                return
            for key in [k for k in self.agents if k[0] == sender]:
                del self.agents[key]
            self._watches.pop(sender).cancel()

        return changed


class Adapter(BluezObject):
    """``/org/bluez/hci0``: discovery sessions per D-Bus client, like bluetoothd."""

    WRITABLE = MappingProxyType(
        {ADAPTER_IFACE: ("Powered", "Discoverable", "Pairable", "Alias", "DiscoverableTimeout", "PairableTimeout")}
    )

    def __init__(self, daemon, name, address):
        props = {
            "Address": dbus.String(address),
            "AddressType": dbus.String("public"),
            "Name": dbus.String("rpm-emulated"),
            "Alias": dbus.String("rpm-emulated"),
            "Class": dbus.UInt32(0),
            "Powered": dbus.Boolean(True),
            "PowerState": dbus.String("on"),
            "Discoverable": dbus.Boolean(False),
            "DiscoverableTimeout": dbus.UInt32(180),
            "Pairable": dbus.Boolean(True),
            "PairableTimeout": dbus.UInt32(0),
            "Discovering": dbus.Boolean(False),
            "UUIDs": string_array(["00001800-0000-1000-8000-00805f9b34fb", "00001801-0000-1000-8000-00805f9b34fb"]),
            "Modalias": dbus.String("usb:v1D6Bp0246d0540"),
            "Roles": string_array(["central", "peripheral"]),
        }
        super().__init__(daemon, f"/org/bluez/{name}", {ADAPTER_IFACE: props})
        self.sessions = {}  # sender -> discovery filter (dict)
        self._watches = {}
        self._timer = None

    # -- discovery

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StartDiscovery(self, sender=None):
        if sender in self.sessions and self.sessions[sender].get("active"):
            raise BluezError("InProgress", "Operation already in progress")
        self.sessions.setdefault(sender, {})["active"] = True
        self._watch(sender)
        if not self.props[ADAPTER_IFACE]["Discovering"]:
            self.update(ADAPTER_IFACE, Discovering=dbus.Boolean(True))
            self.daemon.control.event("discovering", enabled=True)
            self._timer = GLib.timeout_add(self.daemon.advertising_interval_ms, self._advertise)
        GLib.idle_add(self._advertise)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StopDiscovery(self, sender=None):
        if not self.sessions.get(sender, {}).get("active"):
            raise BluezError("Failed", "No discovery started")
        self.sessions[sender]["active"] = False
        self._maybe_stop()

    @dbus.service.method(ADAPTER_IFACE, in_signature="a{sv}", out_signature="", sender_keyword="sender")
    def SetDiscoveryFilter(self, discovery_filter, sender=None):
        session = self.sessions.setdefault(sender, {"active": False})
        session["uuids"] = [str(u).lower() for u in discovery_filter.get("UUIDs", [])]
        self._watch(sender)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="as")
    def GetDiscoveryFilters(self):
        return string_array(["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"])

    @dbus.service.method(ADAPTER_IFACE, in_signature="o", out_signature="")
    def RemoveDevice(self, path):
        device = self.daemon.device_by_path(str(path))
        if device is None or not device.exported:
            raise BluezError("DoesNotExist", "Does Not Exist")
        device.forget()

    def uuid_filter(self):
        """Service UUIDs to report, or ``None`` for all (bluetoothd merges client filters)."""
        active = [s for s in self.sessions.values() if s.get("active")]
        if not active or any(not s.get("uuids") for s in active):
            return None
        return {u for s in active for u in s["uuids"]}

    def _advertise(self):
        if not self.props[ADAPTER_IFACE]["Discovering"]:
            return False
        wanted = self.uuid_filter()
        for device in list(self.daemon.devices.values()):
            device.advertise(wanted)
        return True

    def _watch(self, sender):
        if sender not in self._watches:
            self._watches[sender] = self.daemon.bus.watch_name_owner(sender, self._owner_changed(sender))

    def _owner_changed(self, sender):
        def changed(new_owner):
            if new_owner:
                return
            self.sessions.pop(sender, None)
            self._watches.pop(sender).cancel()
            self._maybe_stop()

        return changed

    def _maybe_stop(self):
        if any(s.get("active") for s in self.sessions.values()):
            return
        if not self.props[ADAPTER_IFACE]["Discovering"]:
            return
        if self._timer is not None:
            GLib.source_remove(self._timer)
            self._timer = None
        self.update(ADAPTER_IFACE, Discovering=dbus.Boolean(False))
        self.daemon.control.event("discovering", enabled=False)
        for device in self.daemon.devices.values():
            device.invalidate_advertising()


class Device(BluezObject):
    """A remote peripheral as bluetoothd shows it, plus the peripheral's own radio state."""

    WRITABLE = MappingProxyType({DEVICE_IFACE: ("Trusted", "Blocked", "Alias", "WakeAllowed")})

    def __init__(self, daemon, adapter, spec):
        self.spec = spec
        self.address = spec["address"].upper()
        self.adapter = adapter
        self.exported = False
        self.in_range = True
        self.connect_failures = 0
        self.rssi = int(spec.get("rssi", -60))
        self.pending_connect = None  # ([callbacks], timer id)
        self.pairing = False
        self.gatt = []  # exported GATT objects, parents first
        path = f"{adapter.path}/dev_{self.address.replace(':', '_')}"
        super().__init__(daemon, path, {DEVICE_IFACE: self._initial_props()}, export=False)

    # -- properties

    def _initial_props(self):
        spec = self.spec
        name = spec.get("name")
        props = {
            "Address": dbus.String(self.address),
            "AddressType": dbus.String(spec.get("address_type", "public")),
            "Alias": dbus.String(name or self.address.replace(":", "-")),
            "Paired": dbus.Boolean(False),
            "Bonded": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "WakeAllowed": dbus.Boolean(False),
            "UUIDs": string_array(spec.get("uuids", [])),
            "Adapter": dbus.ObjectPath(self.adapter.path),
            "ManufacturerData": dbus.Dictionary(
                {dbus.UInt16(int(k)): byte_array(bytes.fromhex(v)) for k, v in spec["manufacturer_data"].items()},
                signature="qv",
            ),
            "ServiceData": dbus.Dictionary(
                {dbus.String(k): byte_array(bytes.fromhex(v)) for k, v in spec["service_data"].items()},
                signature="sv",
            ),
            "AdvertisingFlags": byte_array(b"\x06"),
        }
        if name:
            props["Name"] = dbus.String(name)
        if spec.get("appearance") is not None:
            props["Appearance"] = dbus.UInt16(spec["appearance"])
        return props

    def set_property(self, iface, name, value):
        if name == "Alias" and not value:
            value = self.props[DEVICE_IFACE].get("Name") or self.address.replace(":", "-")
        super().set_property(iface, name, value)

    @property
    def connected(self):
        return bool(self.props[DEVICE_IFACE]["Connected"])

    @property
    def paired(self):
        return bool(self.props[DEVICE_IFACE]["Paired"])

    # -- presence on the bus

    def export(self, **extra):
        """Put the device object on the bus (discovery heard it, or it is bonded)."""
        self.props[DEVICE_IFACE].update(extra)
        self.add_to_connection(self.daemon.bus, self.path)
        self.exported = True
        self.daemon.announce(self)

    def advertise(self, wanted_uuids):
        """One advertising interval while discovering: appear, or refresh ``RSSI``."""
        if not self.in_range or self.connected:
            return
        if wanted_uuids is not None and not wanted_uuids & {u.lower() for u in self.spec.get("uuids", [])}:
            return
        radio = {"RSSI": dbus.Int16(self.rssi)}
        if self.spec.get("tx_power") is not None:
            radio["TxPower"] = dbus.Int16(self.spec["tx_power"])
        if not self.exported:
            self.export(**radio)
        else:
            self.update(DEVICE_IFACE, **radio)

    def invalidate_advertising(self):
        if self.exported and "RSSI" in self.props[DEVICE_IFACE]:
            self.update(DEVICE_IFACE, invalidated=["RSSI", "TxPower"])

    def forget(self):
        """``RemoveDevice``: drop the link, the bond and every object (the peripheral stays around)."""
        if self.connected:
            self.drop_link("removed")
        self._fail_pending_connect(BluezError("Failed", ABORT_BY_LOCAL))
        for obj in reversed(self.gatt):
            self.daemon.withdraw(obj)
        self.gatt = []
        if self.exported:
            self.daemon.withdraw(self)
        self.exported = False
        self.props[DEVICE_IFACE] = self._initial_props()

    # -- connection

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="", async_callbacks=("ok", "err"))
    def Connect(self, ok, err):
        if self.connected:
            err(BluezError("AlreadyConnected", "Already Connected"))
            return
        self.connect(lambda error: err(error) if error else ok())

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")
    def Disconnect(self):
        if self.pending_connect is not None:
            self._fail_pending_connect(BluezError("Failed", ABORT_BY_LOCAL))
            return
        if not self.connected:
            raise BluezError("NotConnected", "Not Connected")
        self.drop_link("local")

    @dbus.service.method(DEVICE_IFACE, in_signature="s", out_signature="")
    def ConnectProfile(self, uuid):
        raise BluezError("NotAvailable", "Operation currently not available")

    @dbus.service.method(DEVICE_IFACE, in_signature="s", out_signature="")
    def DisconnectProfile(self, uuid):
        raise BluezError("NotSupported", "Operation is not supported")

    def connect(self, done):
        """Establish the link; ``done(error_or_None)`` runs once."""
        if self.connected:
            done(None)
        elif self.pending_connect is not None:
            self.pending_connect[0].append(done)
        elif not self.in_range:
            timer = GLib.timeout_add(self.daemon.connect_timeout_ms, self._connect_timed_out)
            self.pending_connect = ([done], timer)
        elif self.connect_failures > 0:
            self.connect_failures -= 1
            self.update(DEVICE_IFACE, Connected=dbus.Boolean(True))
            self.update(DEVICE_IFACE, Connected=dbus.Boolean(False))
            done(BluezError("Failed", ABORT_BY_LOCAL))
        else:
            self._establish([done])

    def _establish(self, callbacks):
        if not self.exported:
            self.export()
        self.update(DEVICE_IFACE, Connected=dbus.Boolean(True))
        self.daemon.control.event("connected", address=self.address)
        # Service discovery takes a few round trips on a real link; resolve on the next turn of
        # the main loop so that clients see Connected before ServicesResolved, like bluetoothd.
        GLib.idle_add(self._resolve_services, callbacks)

    def _resolve_services(self, callbacks):
        if self.connected:
            if not self.gatt:
                self._export_gatt()
            uuids = list(self.props[DEVICE_IFACE]["UUIDs"])
            uuids += [s["uuid"] for s in self.spec["services"] if s["uuid"] not in uuids]
            self.update(DEVICE_IFACE, UUIDs=string_array(uuids))
            self.update(DEVICE_IFACE, ServicesResolved=dbus.Boolean(True))
            error = None
        else:
            error = BluezError("Failed", "Software caused connection abort")
        for done in callbacks:
            done(error)
        return False

    def _export_gatt(self):
        for service_spec in self.spec["services"]:
            service = GattService(self, service_spec)
            self.gatt.append(service)
            for char_spec in service_spec["characteristics"]:
                char = GattCharacteristic(self, service, char_spec)
                self.gatt.append(char)
                self.gatt.extend(GattDescriptor(self, char, d) for d in char_spec.get("descriptors", []))
        for obj in self.gatt:
            self.daemon.announce(obj)

    def _connect_timed_out(self):
        self._fail_pending_connect(BluezError("Failed", ABORT_BY_LOCAL), remove_timer=False)
        return False

    def _fail_pending_connect(self, error, remove_timer=True):
        pending, self.pending_connect = self.pending_connect, None
        if pending is None:
            return
        callbacks, timer = pending
        if remove_timer:
            GLib.source_remove(timer)
        for done in callbacks:
            done(error)

    def come_in_range(self):
        self.in_range = True
        pending, self.pending_connect = self.pending_connect, None
        if pending is not None:
            GLib.source_remove(pending[1])
            self._establish(pending[0])

    def drop_link(self, reason):
        """The link is gone (either side): sessions end, then ServicesResolved and Connected drop."""
        for obj in self.gatt:
            if isinstance(obj, GattCharacteristic):
                obj.end_sessions()
        if self.props[DEVICE_IFACE]["ServicesResolved"]:
            self.update(DEVICE_IFACE, ServicesResolved=dbus.Boolean(False))
        self.update(DEVICE_IFACE, Connected=dbus.Boolean(False))
        self.daemon.control.event("disconnected", address=self.address, reason=reason)

    # -- pairing

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="", async_callbacks=("ok", "err"))
    def Pair(self, ok, err):
        if self.paired:
            err(BluezError("AlreadyExists", "Already Exists"))
            return
        if self.pairing:
            err(BluezError("InProgress", "In Progress"))
            return
        self.pairing = True

        def finish(error):
            self.pairing = False
            if error is not None:
                err(error)
                return
            self.bond()
            ok()

        def connected(error):
            if error is not None:
                finish(error)
            else:
                self._authenticate(finish)

        self.connect(connected)

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")
    def CancelPairing(self):
        if not self.pairing:
            raise BluezError("DoesNotExist", "Does Not Exist")

    def bond(self):
        self.update(DEVICE_IFACE, Paired=dbus.Boolean(True), Bonded=dbus.Boolean(True))
        self.daemon.control.event("paired", address=self.address)

    def _authenticate(self, done):
        mode = self.spec.get("pairing", "just-works")
        if mode == "reject":
            done(BluezError("AuthenticationRejected", "Authentication Rejected"))
        elif mode == "passkey":
            self._ask_agent_for_passkey(done)
        else:
            done(None)

    def _ask_agent_for_passkey(self, done):
        agent = self.daemon.agent_manager.agent_for_pairing()
        if agent is None:
            # No agent means NoInputNoOutput: no MITM protection, which this peripheral refuses.
            done(BluezError("AuthenticationFailed", "Authentication Failed"))
            return
        sender, path = agent
        proxy = self.daemon.bus.get_object(sender, path, introspect=False)

        def answered(passkey):
            ok = int(passkey) == int(self.spec["passkey"])
            done(None if ok else BluezError("AuthenticationFailed", "Authentication Failed"))

        def failed(error):
            _LOGGER.info("agent refused passkey for %s: %s", self.address, error)
            done(BluezError("AuthenticationFailed", "Authentication Failed"))

        proxy.RequestPasskey(
            dbus.ObjectPath(self.path),
            dbus_interface=AGENT_IFACE,
            reply_handler=answered,
            error_handler=failed,
            timeout=self.daemon.request_timeout_s,
        )

    def state(self):
        return {
            "connected": self.connected,
            "paired": self.paired,
            "trusted": bool(self.props[DEVICE_IFACE]["Trusted"]),
            "exported": self.exported,
            "notifying": [o.handle for o in self.gatt if isinstance(o, GattCharacteristic) and o.sessions],
        }


class GattService(BluezObject):
    def __init__(self, device, spec):
        self.device = device
        props = {
            "UUID": dbus.String(spec["uuid"]),
            "Device": dbus.ObjectPath(device.path),
            "Primary": dbus.Boolean(spec.get("primary", True)),
            "Includes": dbus.Array([], signature="o"),
        }
        super().__init__(device.daemon, f"{device.path}/service{spec['handle']:04x}", {SERVICE_IFACE: props})


class GattCharacteristic(BluezObject):
    def __init__(self, device, service, spec):
        self.device = device
        self.handle = int(spec["handle"])
        self.flags = list(spec["flags"])
        self.encrypted = bool(spec.get("encrypted", False))
        self.sessions = {}  # sender -> name-owner watch
        props = {
            "UUID": dbus.String(spec["uuid"]),
            "Service": dbus.ObjectPath(service.path),
            "Value": byte_array(bytes.fromhex(spec.get("value", ""))),
            "Flags": string_array(self.flags),
            "MTU": dbus.UInt16(int(device.spec.get("mtu", 23))),
        }
        if "notify" in self.flags or "indicate" in self.flags:
            props["Notifying"] = dbus.Boolean(False)
        super().__init__(device.daemon, f"{service.path}/char{self.handle:04x}", {CHARACTERISTIC_IFACE: props})

    def _check_link(self):
        if not self.device.connected:
            raise BluezError("Failed", "Not connected")
        if self.encrypted and not self.device.paired:
            raise att_error(ATT_INSUFFICIENT_AUTHENTICATION)

    def _forward(self, message, on_answer):
        message = {"address": self.device.address, "handle": self.handle, **message}
        self.device.daemon.control.request(message, on_answer, self.device.daemon.request_timeout_s)

    @dbus.service.method(CHARACTERISTIC_IFACE, in_signature="a{sv}", out_signature="ay", async_callbacks=("ok", "err"))
    def ReadValue(self, options, ok, err):
        self._check_link()
        if "read" not in self.flags:
            raise att_error(ATT_READ_NOT_PERMITTED)

        def answered(answer):
            if "value" not in answer:
                err(_answer_error(answer))
                return
            value = byte_array(bytes.fromhex(answer["value"]))
            self.update(CHARACTERISTIC_IFACE, Value=value)
            ok(value)

        self._forward({"op": "read"}, answered)

    @dbus.service.method(CHARACTERISTIC_IFACE, in_signature="aya{sv}", out_signature="", async_callbacks=("ok", "err"))
    def WriteValue(self, value, options, ok, err):
        self._check_link()
        kind = str(options.get("type", "request" if "write" in self.flags else "command"))
        if kind == "request" and "write" not in self.flags:
            raise att_error(ATT_REQUEST_NOT_SUPPORTED)
        if kind == "command" and "write-without-response" not in self.flags:
            raise att_error(ATT_REQUEST_NOT_SUPPORTED)
        message = {"op": "write", "value": bytes(value).hex(), "with_response": kind == "request"}
        if kind == "command":
            self._forward(message, lambda _answer: None)
            ok()
            return
        self._forward(message, lambda answer: err(_answer_error(answer)) if _is_error(answer) else ok())

    @dbus.service.method(CHARACTERISTIC_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StartNotify(self, sender=None):
        if "notify" not in self.flags and "indicate" not in self.flags:
            raise BluezError("NotSupported", "Operation is not supported")
        self._check_link()
        if sender in self.sessions:
            return
        self.sessions[sender] = self.device.daemon.bus.watch_name_owner(sender, self._owner_changed(sender))
        if len(self.sessions) == 1:
            self.update(CHARACTERISTIC_IFACE, Notifying=dbus.Boolean(True))
            self._subscribed(True)

    @dbus.service.method(CHARACTERISTIC_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StopNotify(self, sender=None):
        watch = self.sessions.pop(sender, None)
        if watch is None:
            raise BluezError("Failed", "No notify session started")
        watch.cancel()
        if not self.sessions:
            self.update(CHARACTERISTIC_IFACE, Notifying=dbus.Boolean(False))
            self._subscribed(False)

    @dbus.service.method(CHARACTERISTIC_IFACE, in_signature="a{sv}", out_signature="hq")
    def AcquireNotify(self, options):
        raise BluezError("NotSupported", "Operation is not supported")

    @dbus.service.method(CHARACTERISTIC_IFACE, in_signature="a{sv}", out_signature="hq")
    def AcquireWrite(self, options):
        raise BluezError("NotSupported", "Operation is not supported")

    def _owner_changed(self, sender):
        def changed(new_owner):
            if not new_owner and sender in self.sessions:
                self.StopNotify(sender=sender)

        return changed

    def _subscribed(self, enabled):
        self.device.daemon.control.event("subscribed", address=self.device.address, handle=self.handle, enabled=enabled)

    def end_sessions(self):
        """The link dropped: every notify session ends with it."""
        if not self.sessions:
            return
        for watch in self.sessions.values():
            watch.cancel()
        self.sessions.clear()
        self.update(CHARACTERISTIC_IFACE, Notifying=dbus.Boolean(False))
        self._subscribed(False)

    def push(self, value):
        """A notification/indication from the peripheral; bluetoothd turns it into ``Value``."""
        if not self.device.connected or not self.sessions:
            return False
        self.update(CHARACTERISTIC_IFACE, Value=byte_array(value))
        return True

    @property
    def cccd_value(self):
        if not self.sessions:
            return b"\x00\x00"
        return b"\x01\x00" if "notify" in self.flags else b"\x02\x00"


class GattDescriptor(BluezObject):
    def __init__(self, device, characteristic, spec):
        self.device = device
        self.characteristic = characteristic
        self.uuid = spec["uuid"].lower()
        props = {
            "UUID": dbus.String(self.uuid),
            "Characteristic": dbus.ObjectPath(characteristic.path),
            "Value": byte_array(bytes.fromhex(spec.get("value", ""))),
            "Flags": string_array(spec.get("flags", ["read"])),
        }
        path = f"{characteristic.path}/desc{int(spec['handle']):04x}"
        super().__init__(device.daemon, path, {DESCRIPTOR_IFACE: props})

    @dbus.service.method(DESCRIPTOR_IFACE, in_signature="a{sv}", out_signature="ay")
    def ReadValue(self, options):
        if not self.device.connected:
            raise BluezError("Failed", "Not connected")
        if self.uuid == CCCD_UUID:
            self.update(DESCRIPTOR_IFACE, Value=byte_array(self.characteristic.cccd_value))
        return self.props[DESCRIPTOR_IFACE]["Value"]

    @dbus.service.method(DESCRIPTOR_IFACE, in_signature="aya{sv}", out_signature="")
    def WriteValue(self, value, options):
        if not self.device.connected:
            raise BluezError("Failed", "Not connected")
        if self.uuid == CCCD_UUID:
            # bluetoothd owns the CCCD; clients must use StartNotify/StopNotify.
            raise att_error(ATT_WRITE_NOT_PERMITTED)
        self.update(DESCRIPTOR_IFACE, Value=byte_array(bytes(value)))


def _is_error(answer):
    return "att_error" in answer or answer.get("timeout")


def _answer_error(answer):
    if answer.get("timeout"):
        return BluezError("Failed", "Operation failed with ATT error: 0x0e")  # unlikely error
    return att_error(int(answer.get("att_error", 0x0E)))


# ---------------------------------------------------------------------------------------------
# the daemon


class FakeBluez:
    """Owns the objects and executes control commands."""

    def __init__(
        self,
        bus,
        control_fds,
        *,
        adapter_address,
        advertising_interval_s,
        connect_timeout_s,
        request_timeout_s,
        on_exit,
    ):
        self.bus = bus
        self.objects = {}
        self.devices = {}  # address -> Device
        self.advertising_interval_ms = max(10, int(advertising_interval_s * 1000))
        self.connect_timeout_ms = int(connect_timeout_s * 1000)
        self.request_timeout_s = request_timeout_s
        self._on_exit = on_exit
        self.shutdown_requested = False
        self.control = ControlLink(*control_fds, self._command, on_exit)
        self.root = Root(self)
        self.agent_manager = AgentManager(self)
        self.adapter = Adapter(self, "hci0", adapter_address)
        self.objects[self.agent_manager.path] = self.agent_manager
        self.objects[self.adapter.path] = self.adapter

    # -- object registry

    def announce(self, obj):
        self.objects[obj.path] = obj
        self.root.InterfacesAdded(dbus.ObjectPath(obj.path), obj.managed())

    def withdraw(self, obj):
        self.objects.pop(obj.path, None)
        obj.remove_from_connection()
        self.root.InterfacesRemoved(dbus.ObjectPath(obj.path), string_array(obj.props))

    def device_by_path(self, path):
        return next((d for d in self.devices.values() if d.path == path), None)

    # -- control commands

    def _command(self, message):
        handler = getattr(self, f"_op_{message.get('op')}", None)
        reply = {"id": message.get("id")}
        try:
            if handler is None:
                raise ValueError(f"unknown op {message.get('op')!r}")
            reply.update(ok=True, result=handler(message))
        except Exception as exc:  # every failure goes back to the controller
            _LOGGER.exception("control command %r failed", message.get("op"))
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        self.control.send(reply)
        if message.get("op") == "shutdown":
            self._on_exit()

    def _device(self, message):
        address = message["address"].upper()
        try:
            return self.devices[address]
        except KeyError:
            raise KeyError(f"no device {address}") from None

    def _op_add_device(self, message):
        spec = message["device"]
        address = spec["address"].upper()
        if address in self.devices:
            raise ValueError(f"device {address} exists")
        device = Device(self, self.adapter, spec)
        self.devices[address] = device
        if message.get("bonded"):
            device.props[DEVICE_IFACE].update(
                Paired=dbus.Boolean(True), Bonded=dbus.Boolean(True), Trusted=dbus.Boolean(True)
            )
            device.export()
        return {"path": device.path}

    def _op_remove_device(self, message):
        device = self._device(message)
        device.forget()
        del self.devices[device.address]
        return {}

    def _op_notify(self, message):
        device = self._device(message)
        handle = int(message["handle"])
        char = next((o for o in device.gatt if isinstance(o, GattCharacteristic) and o.handle == handle), None)
        if char is None:
            return {"delivered": False}
        return {"delivered": char.push(bytes.fromhex(message["value"]))}

    def _op_disconnect(self, message):
        device = self._device(message)
        if device.connected:
            device.drop_link("remote")
        return {}

    def _op_set_rssi(self, message):
        self._device(message).rssi = int(message["rssi"])
        return {}

    def _op_set_in_range(self, message):
        device = self._device(message)
        if message["in_range"]:
            device.come_in_range()
        else:
            device.in_range = False
            if device.connected:
                device.drop_link("remote")
        return {}

    def _op_fail_connects(self, message):
        self._device(message).connect_failures = int(message["count"])
        return {}

    def _op_state(self, message):
        return self._device(message).state()

    def _op_shutdown(self, _message):
        self.shutdown_requested = True
        return {}


def _open_control(spec):
    """``-`` for stdin/stdout (stdout is then redirected to stderr), ``unix:PATH`` to connect."""
    if spec == "-":
        write_fd = os.dup(1)
        os.dup2(2, 1)  # stray prints must not corrupt the link
        sys.stdout = sys.stderr
        return 0, write_fd
    if spec.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(spec[len("unix:") :])
        fd = sock.detach()
        return fd, fd
    raise SystemExit(f"--control must be '-' or 'unix:PATH', not {spec!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="D-Bus address of the (private) system bus")
    parser.add_argument("--control", default="-", help="'-' (stdin/stdout) or unix:PATH")
    parser.add_argument("--adapter-address", default="00:1A:7D:DA:71:13")
    parser.add_argument("--advertising-interval", type=float, default=0.1, help="seconds between RSSI refreshes")
    parser.add_argument("--connect-timeout", type=float, default=20.0, help="seconds a pending Connect waits")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds to wait for the controller")
    parser.add_argument("--bus-pid", type=int, help="dbus-daemon to SIGTERM if the controller vanishes")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="fake_bluez %(levelname)s %(message)s")

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(args.address)
    loop = GLib.MainLoop()
    control_fds = _open_control(args.control)
    daemon = FakeBluez(
        bus,
        control_fds,
        adapter_address=args.adapter_address,
        advertising_interval_s=args.advertising_interval,
        connect_timeout_s=args.connect_timeout,
        request_timeout_s=args.request_timeout,
        on_exit=loop.quit,
    )
    name = dbus.service.BusName(BUS_NAME, bus, do_not_queue=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)
    daemon.control.event("ready", adapter=daemon.adapter.path)
    loop.run()
    del name
    bus.close()
    if args.bus_pid and not daemon.shutdown_requested:
        _LOGGER.warning("controller gone: stopping dbus-daemon %d", args.bus_pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(args.bus_pid, signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
