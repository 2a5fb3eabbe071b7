"""Emulated BlueZ for tests: a private system bus, the fake bluetoothd, and virtual peripherals.

:class:`EmulatedBluez` starts ``dbus-daemon`` (:mod:`simulators.bluez.bus`) and, under Debian's
Python, :mod:`simulators.bluez.fake_bluez`; it then plays the radio side: it forwards GATT
reads/writes/subscriptions from the fake to the :class:`~simulators.ble_devices.VirtualPeripheral`
objects (which run in this process and event loop) and carries their notifications back. It
points ``DBUS_SYSTEM_BUS_ADDRESS`` at the private bus while it runs, so unmodified bleak code
(``BleakScanner``, ``BleakClient``) talks to the emulation.

When bleak reads the variable: dbus-fast resolves the address whenever a ``MessageBus`` is
created. bleak creates one per event loop for its BlueZ manager (on first use, and again after
that connection died) and one per ``BleakClient.connect()``. So the variable must stay set for as
long as bleak objects are used, which is what the ``async with`` block guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from simulators.ble_devices import (
    ATT_UNLIKELY_ERROR,
    AttError,
    VirtualPeripheral,
    normalize_uuid,
)
from simulators.bluez.bus import PrivateSystemBus, terminate_process

_LOGGER = logging.getLogger(__name__)

DEBIAN_PYTHON: Final = "/usr/bin/python3"
FAKE_BLUEZ_PATH: Final = Path(__file__).with_name("fake_bluez.py")
ADAPTER_PATH: Final = "/org/bluez/hci0"
DBUS_SYSTEM_BUS_ADDRESS: Final = "DBUS_SYSTEM_BUS_ADDRESS"
# Real peripherals start their own services after GAP and GATT, which BlueZ does not export.
FIRST_HANDLE: Final = 0x0010
# The fake answers every command at once; anything slower than this is a hung daemon.
DEFAULT_COMMAND_TIMEOUT_S: Final = 10.0
DEFAULT_STARTUP_TIMEOUT_S: Final = 15.0
DEFAULT_STOP_TIMEOUT_S: Final = 5.0
_LINE_LIMIT_BYTES: Final = 1 << 20


class EmulationError(RuntimeError):
    """The fake bluetoothd failed, rejected a command, or a virtual peripheral's behaviour raised."""


@dataclass(frozen=True, slots=True)
class GattLayout:
    """Handles assigned to a peripheral's attributes, the way a GATT server lays them out."""

    services: list[dict[str, Any]]
    handle_by_uuid: dict[str, int]
    uuid_by_handle: dict[int, str]


def gatt_layout(device: VirtualPeripheral) -> GattLayout:
    """Assign handles: service declaration, then per characteristic its declaration, value, descriptors."""
    handle = FIRST_HANDLE
    services: list[dict[str, Any]] = []
    handle_by_uuid: dict[str, int] = {}
    for service in device.services:
        chars: list[dict[str, Any]] = []
        services.append({"handle": handle, "uuid": service.uuid, "characteristics": chars})
        handle += 1
        for char in service.characteristics:
            handle_by_uuid.setdefault(char.uuid, handle)
            descriptors = [
                {"handle": handle + 2 + i, "uuid": d.uuid, "flags": list(d.flags), "value": d.value.hex()}
                for i, d in enumerate(char.descriptors)
            ]
            chars.append(
                {
                    "handle": handle,
                    "uuid": char.uuid,
                    "flags": list(char.flags),
                    "encrypted": char.encrypted,
                    "value": char.value.hex(),
                    "descriptors": descriptors,
                }
            )
            handle += 2 + len(descriptors)
    return GattLayout(services, handle_by_uuid, {h: u for u, h in handle_by_uuid.items()})


def device_spec(device: VirtualPeripheral, layout: GattLayout) -> dict[str, Any]:
    """The ``add_device`` payload of the control protocol (see :mod:`simulators.bluez.fake_bluez`)."""
    adv = device.advertisement
    return {
        "address": device.address,
        "address_type": device.address_type,
        "name": adv.local_name,
        "rssi": adv.rssi,
        "tx_power": adv.tx_power,
        "appearance": adv.appearance,
        "uuids": [normalize_uuid(u) for u in adv.service_uuids],
        "manufacturer_data": {str(k): v.hex() for k, v in adv.manufacturer_data.items()},
        "service_data": {normalize_uuid(k): v.hex() for k, v in adv.service_data.items()},
        "pairing": device.pairing,
        "passkey": device.passkey,
        "mtu": device.mtu,
        "services": layout.services,
    }


@dataclass(slots=True)
class _Attached:
    device: VirtualPeripheral
    layout: GattLayout
    path: str


class EmulatedBluez:
    """BlueZ on a private D-Bus system bus, with virtual peripherals, for real bleak code.

    ::

        async with EmulatedBluez() as bz:
            meter = GlucoseMeter(records=[GlucoseRecord(1, base_time, 104)], requires_pairing=True)
            await bz.add_device(meter)
            device = await BleakScanner.find_device_by_address(meter.address, timeout=10)
            async with BleakClient(device, pair=True) as client:
                ...  # subscribe to 0x2A18 and 0x2A52, write 01 01, await 06 00 01 01
            await bz.set_in_range(meter, False)  # now Connect stays pending (bleak times out)

    Control methods take the peripheral or its address: :meth:`add_device` (``bonded=True``
    for a device BlueZ already knows), :meth:`remove_device`, :meth:`disconnect` (remote
    disconnect), :meth:`set_rssi`, :meth:`set_in_range`, :meth:`fail_next_connects`,
    :meth:`device_state`; a peripheral pushes notifications itself (``await
    device.notify(uuid, value)``, routed through :meth:`notify`). Exceptions raised by a
    peripheral's behaviour are answered on the air as ATT 0x0E and re-raised as
    :class:`EmulationError` when the block exits.

    ``DBUS_SYSTEM_BUS_ADDRESS`` points at the private bus inside the block (and is restored
    after); pass ``set_environment=False`` to manage it yourself (e.g. for a subprocess, with
    :attr:`bus_address`).
    """

    def __init__(
        self,
        *,
        python: str = DEBIAN_PYTHON,
        adapter_address: str = "00:1A:7D:DA:71:13",
        advertising_interval_s: float = 0.1,
        connect_timeout_s: float = 20.0,
        request_timeout_s: float = 10.0,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        log_level: str = "WARNING",
        set_environment: bool = True,
    ) -> None:
        self._python = python
        self._daemon_args = [
            f"--adapter-address={adapter_address}",
            f"--advertising-interval={advertising_interval_s}",
            f"--connect-timeout={connect_timeout_s}",
            f"--request-timeout={request_timeout_s}",
            f"--log-level={log_level}",
        ]
        self._command_timeout_s = command_timeout_s
        self._startup_timeout_s = startup_timeout_s
        self._set_environment = set_environment
        self._stack = contextlib.AsyncExitStack()
        self._bus: PrivateSystemBus | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._closed: EmulationError | None = None
        self._attached: dict[str, _Attached] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []
        self.discovering = False
        self.log_path: Path | None = None

    # -- lifecycle

    async def __aenter__(self) -> Self:
        try:
            self._bus = await PrivateSystemBus.start()
            self._stack.push_async_callback(_wait_until_bleak_sees_bus_loss)
            self._stack.push_async_callback(self._bus.stop)
            await self._start_daemon(self._bus)
            self._stack.push_async_callback(self._stop_daemon)
            if self._set_environment:
                self._stack.enter_context(_environment(DBUS_SYSTEM_BUS_ADDRESS, self._bus.address))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for attached in self._attached.values():
            attached.device.detach()
        for task in self._tasks:
            task.cancel()
        errors = [*self._errors, *(e for a in self._attached.values() for e in a.device.errors)]
        if exc is not None or errors:
            self._log_daemon_output()
        await self._stack.aclose()
        if errors and exc is None:
            raise EmulationError(f"{len(errors)} error(s) in virtual peripherals: {errors!r}") from errors[0]

    @property
    def bus_address(self) -> str:
        """The private system bus (what ``DBUS_SYSTEM_BUS_ADDRESS`` is set to)."""
        if self._bus is None:
            raise EmulationError("the emulation is not running")
        return self._bus.address

    @property
    def adapter_path(self) -> str:
        """The emulated adapter's object path."""
        return ADAPTER_PATH

    @property
    def devices(self) -> list[VirtualPeripheral]:
        """The peripherals added so far."""
        return [a.device for a in self._attached.values()]

    async def _start_daemon(self, bus: PrivateSystemBus) -> None:
        self.log_path = bus.directory / "fake_bluez.log"
        if shutil.which(self._python) is None:
            raise EmulationError(f"{self._python} not found: the fake bluetoothd needs Debian's python3-dbusmock")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                self._python,
                "-I",
                str(FAKE_BLUEZ_PATH),
                f"--address={bus.address}",
                "--control=-",
                f"--bus-pid={bus.pid}",
                *self._daemon_args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                limit=_LINE_LIMIT_BYTES,
            )
        try:
            await self._await_ready()
        except BaseException:
            await self._stop_daemon()
            raise
        self._reader = asyncio.create_task(self._read_loop(), name="fake-bluez-reader")

    async def _await_ready(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(self._startup_timeout_s):
                line = await self._process.stdout.readline()
        except TimeoutError:
            raise EmulationError(f"fake bluetoothd not ready: {self._daemon_output()}") from None
        if not line or json.loads(line).get("event") != "ready":
            raise EmulationError(f"fake bluetoothd did not start: {line!r} {self._daemon_output()}")

    async def _stop_daemon(self) -> None:
        process = self._process
        if process is None:
            return
        if self._reader is not None and self._closed is None and process.returncode is None:
            # A shutdown (rather than a bare EOF) tells the fake that stopping the bus is our job.
            with contextlib.suppress(EmulationError, TimeoutError, ConnectionError):
                await self._call("shutdown")
        self._process = None
        if process.stdin is not None:
            process.stdin.close()  # EOF on the link makes the fake exit
        await terminate_process(process, timeout_s=DEFAULT_STOP_TIMEOUT_S)
        if self._reader is not None:
            try:
                async with asyncio.timeout(DEFAULT_STOP_TIMEOUT_S):
                    await asyncio.shield(self._reader)  # it ends at EOF, the fake having exited
            except TimeoutError:
                self._reader.cancel()
        self._fail_pending(EmulationError("the emulation stopped"))

    def _daemon_output(self) -> str:
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def _log_daemon_output(self) -> None:
        output = self._daemon_output()
        if output:
            _LOGGER.error("fake bluetoothd output:\n%s", output)

    # -- the control link

    async def _read_loop(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while line := await stdout.readline():
                self._dispatch(json.loads(line))
        finally:
            self._fail_pending(EmulationError(f"fake bluetoothd exited: {self._daemon_output()}"))

    def _fail_pending(self, error: EmulationError) -> None:
        self._closed = self._closed or error
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            future = self._pending.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(message)
        elif "req" in message:
            self._spawn(self._answer(message))
        elif "event" in message:
            try:
                self._on_event(message)
            except Exception as exc:  # a peripheral's hook failed: report it at exit
                _LOGGER.exception("virtual peripheral failed on %s", message)
                self._errors.append(exc)

    def _on_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if event == "discovering":
            self.discovering = bool(message["enabled"])
            return
        attached = self._attached.get(message.get("address", ""))
        if attached is None:
            return
        device = attached.device
        if event == "connected":
            device.link_connected()
        elif event == "disconnected":
            device.link_lost(message["reason"])
        elif event == "paired":
            device.link_paired()
        elif event == "subscribed":
            device.subscription_changed(attached.layout.uuid_by_handle[message["handle"]], message["enabled"])

    async def _answer(self, request: dict[str, Any]) -> None:
        answer: dict[str, Any] = {"op": "answer", "req": request["req"]}
        try:
            attached = self._attached[request["address"]]
            uuid = attached.layout.uuid_by_handle[request["handle"]]
            if request["op"] == "read":
                answer["value"] = (await attached.device.read(uuid)).hex()
            else:
                await attached.device.write(uuid, bytes.fromhex(request["value"]), request["with_response"])
        except AttError as exc:
            answer["att_error"] = exc.code
        except Exception as exc:  # a peripheral's handler failed: ATT "unlikely error", reported at exit
            _LOGGER.exception("virtual peripheral failed on %s", request)
            self._errors.append(exc)
            answer["att_error"] = ATT_UNLIKELY_ERROR
        # No await between the handler's return and this write: the answer goes out before any
        # notification the handler scheduled, as on a real link.
        if self._closed is None:
            self._send(answer)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, message: dict[str, Any]) -> None:
        if self._closed is not None:
            raise self._closed
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write((json.dumps(message, separators=(",", ":")) + "\n").encode())

    async def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        self._next_id += 1
        command_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            self._send({"id": command_id, "op": op, **fields})
            assert self._process is not None
            assert self._process.stdin is not None
            await self._process.stdin.drain()
            async with asyncio.timeout(self._command_timeout_s):
                reply = await future
        finally:
            self._pending.pop(command_id, None)
        if not reply["ok"]:
            raise EmulationError(f"{op} failed: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    # -- PeripheralLink

    async def notify(self, peripheral: VirtualPeripheral, uuid: str, value: bytes) -> bool:
        """Deliver a notification/indication of ``peripheral``; ``False`` if nobody was subscribed."""
        attached = self._lookup(peripheral)
        handle = attached.layout.handle_by_uuid[normalize_uuid(uuid)]
        result = await self._call("notify", address=attached.device.address, handle=handle, value=value.hex())
        return bool(result["delivered"])

    async def disconnect(self, peripheral: VirtualPeripheral | str) -> None:
        """The peripheral drops the link (a remote disconnect, as seen by the central)."""
        await self._call("disconnect", address=self._lookup(peripheral).device.address)

    # -- controlling the air

    async def add_device(self, device: VirtualPeripheral, *, bonded: bool = False) -> str:
        """Put ``device`` on the air; with ``bonded`` BlueZ already knows it as paired. Returns its path."""
        if device.address in self._attached:
            raise EmulationError(f"{device.address} was added already")
        layout = gatt_layout(device)
        result = await self._call("add_device", device=device_spec(device, layout), bonded=bonded)
        self._attached[device.address] = _Attached(device, layout, result["path"])
        device.attach(self)
        if bonded:
            device.link_paired()
        return str(result["path"])

    async def add_devices(self, devices: Iterable[VirtualPeripheral]) -> list[str]:
        """:meth:`add_device` for each device."""
        return [await self.add_device(d) for d in devices]

    async def remove_device(self, device: VirtualPeripheral | str) -> None:
        """Take the peripheral off the air and out of BlueZ."""
        attached = self._lookup(device)
        await self._call("remove_device", address=attached.device.address)
        attached.device.detach()
        del self._attached[attached.device.address]

    async def set_rssi(self, device: VirtualPeripheral | str, rssi: int) -> None:
        """Signal strength reported from the next advertisement on."""
        await self._call("set_rssi", address=self._lookup(device).device.address, rssi=rssi)

    async def set_in_range(self, device: VirtualPeripheral | str, in_range: bool) -> None:
        """Out of range: stops advertising, drops a live link, and leaves ``Connect`` pending.

        Back in range, a pending ``Connect`` completes.
        """
        await self._call("set_in_range", address=self._lookup(device).device.address, in_range=in_range)

    async def fail_next_connects(self, device: VirtualPeripheral | str, count: int = 1) -> None:
        """Make the next ``count`` connection attempts fail with ``le-connection-abort-by-local``."""
        await self._call("fail_connects", address=self._lookup(device).device.address, count=count)

    async def device_state(self, device: VirtualPeripheral | str) -> dict[str, Any]:
        """BlueZ's view: ``connected``, ``paired``, ``trusted``, ``exported``, ``notifying`` handles."""
        return await self._call("state", address=self._lookup(device).device.address)

    def device_path(self, device: VirtualPeripheral | str) -> str:
        """The D-Bus object path BlueZ uses for the peripheral."""
        return self._lookup(device).path

    def handle(self, device: VirtualPeripheral | str, uuid: str) -> int:
        """The characteristic handle (bleak's ``BleakGATTCharacteristic.handle``) of ``uuid``."""
        return self._lookup(device).layout.handle_by_uuid[normalize_uuid(uuid)]

    def _lookup(self, device: VirtualPeripheral | str) -> _Attached:
        address = device.upper() if isinstance(device, str) else device.address
        try:
            return self._attached[address]
        except KeyError:
            raise EmulationError(f"no virtual peripheral {address}") from None


async def _wait_until_bleak_sees_bus_loss() -> None:
    """Let bleak's per-loop BlueZ manager notice that our bus is gone before we return.

    bleak keeps one D-Bus connection per event loop (``manager._global_instances``) and only
    reconnects once that connection has seen EOF. Waiting for it here means the next emulation
    in the same loop (or real BlueZ) gets a fresh connection instead of a dead one, and no socket
    is left open. Private bleak API, pinned by ``tests/simulators/test_bleak_conformance.py``.
    """
    try:
        from bleak.backends.bluezdbus import manager as bluez_manager
    except ImportError:  # not on Linux, or bleak not installed: nothing to wait for
        return
    instance = bluez_manager._global_instances.get(asyncio.get_running_loop())
    bus = getattr(instance, "_bus", None)
    if bus is None:
        return
    with contextlib.suppress(Exception):  # EOFError is the expected outcome
        async with asyncio.timeout(DEFAULT_STOP_TIMEOUT_S):
            await bus.wait_for_disconnect()


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
