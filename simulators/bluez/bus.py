"""A private D-Bus *system* bus for tests: our own ``dbus-daemon`` on a unix socket in a temp dir.

bleak's BlueZ backend talks to the system bus, and dbus-fast (which bleak uses) takes the
address from ``DBUS_SYSTEM_BUS_ADDRESS`` whenever it opens a connection. Pointing that
variable at :attr:`PrivateSystemBus.address` makes bleak talk to whatever owns ``org.bluez``
on our bus (see :mod:`simulators.bluez.fake_bluez`) instead of the host's bluetoothd.

The bus configuration is a system-bus-like one (``<type>system</type>``, EXTERNAL auth) with a
permissive policy: anybody may own any name and call anything, which is what a test needs and
what no real system bus allows.

Usage::

    async with PrivateSystemBus() as bus:
        print(bus.address)  # unix:path=/tmp/rpm-dbus-…/system_bus_socket
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from xml.sax.saxutils import escape

_LOGGER = logging.getLogger(__name__)

DBUS_DAEMON: Final = "dbus-daemon"
# sun_path is 108 bytes on Linux; pytest's tmp_path can be longer than that.
_MAX_SOCKET_PATH_CHARS: Final = 100
# dbus-daemon prints its address as soon as it listens; a second is plenty, ten is generous on CI.
DEFAULT_STARTUP_TIMEOUT_S: Final = 10.0
DEFAULT_STOP_TIMEOUT_S: Final = 5.0

_CONFIG_TEMPLATE: Final = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


class BusStartError(RuntimeError):
    """``dbus-daemon`` did not start; the message carries the tail of its log."""


def write_bus_config(directory: Path) -> tuple[Path, Path]:
    """Write a permissive system-bus config into ``directory``; return ``(config, socket)`` paths."""
    socket_path = directory / "system_bus_socket"
    config_path = directory / "system-bus.conf"
    config_path.write_text(_CONFIG_TEMPLATE.format(socket=escape(str(socket_path))), encoding="utf-8")
    return config_path, socket_path


def _make_temp_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="rpm-dbus-"))
    if len(str(directory / "system_bus_socket")) <= _MAX_SOCKET_PATH_CHARS:
        return directory
    directory.rmdir()
    return Path(tempfile.mkdtemp(prefix="rpm-dbus-", dir="/tmp"))  # a short socket path


class PrivateSystemBus:
    """One ``dbus-daemon`` process serving a system-like bus on a unix socket.

    Start it with ``await PrivateSystemBus.start()`` (or ``async with PrivateSystemBus()``) and
    stop it with :meth:`stop`, which signals the daemon by PID and waits for it.
    """

    def __init__(self, *, directory: Path | None = None) -> None:
        self._given_directory = directory
        self._directory: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._address: str | None = None

    @classmethod
    async def start(cls, *, directory: Path | None = None, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> Self:
        """Start a daemon and return once it accepts connections."""
        bus = cls(directory=directory)
        await bus._start(timeout_s)
        return bus

    @property
    def address(self) -> str:
        """The D-Bus address, e.g. ``unix:path=/tmp/rpm-dbus-x/system_bus_socket``."""
        if self._address is None:
            raise RuntimeError("the bus is not running")
        return self._address

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        if self._process is None:
            raise RuntimeError("the bus is not running")
        return self._process.pid

    @property
    def directory(self) -> Path:
        """The directory holding the config, the socket and the daemon's log."""
        if self._directory is None:
            raise RuntimeError("the bus is not running")
        return self._directory

    @property
    def log_path(self) -> Path:
        """The daemon's stderr."""
        return self.directory / "dbus-daemon.log"

    async def _start(self, timeout_s: float) -> None:
        self._directory = self._given_directory or _make_temp_dir()
        config_path, _socket = write_bus_config(self._directory)
        if shutil.which(DBUS_DAEMON) is None:
            raise BusStartError(f"{DBUS_DAEMON} not found: apt-get install dbus-daemon")
        try:
            with self.log_path.open("wb") as log:
                self._process = await asyncio.create_subprocess_exec(
                    DBUS_DAEMON,
                    f"--config-file={config_path}",
                    "--nofork",
                    "--nopidfile",
                    "--nosyslog",
                    "--print-address=1",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                )
            self._address = await self._read_address(timeout_s)
        except BaseException:
            await self.stop()
            raise
        _LOGGER.debug("dbus-daemon pid %d listening on %s", self.pid, self._address)

    async def _read_address(self, timeout_s: float) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                line = await self._process.stdout.readline()
        except TimeoutError:
            raise BusStartError(f"dbus-daemon printed no address in {timeout_s}s: {self._log_tail()}") from None
        address = line.decode().strip()
        if not address.startswith("unix:"):
            raise BusStartError(f"dbus-daemon did not start: {self._log_tail()}")
        return address

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return "(no log)"

    async def stop(self, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the daemon (SIGTERM by PID, SIGKILL after ``timeout_s``) and remove our temp dir."""
        process, self._process, self._address = self._process, None, None
        if process is not None:
            await terminate_process(process, timeout_s=timeout_s)
        if self._directory is not None and self._given_directory is None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None

    async def __aenter__(self) -> Self:
        await self._start(DEFAULT_STARTUP_TIMEOUT_S)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def terminate_process(process: asyncio.subprocess.Process, *, timeout_s: float) -> int:
    """SIGTERM ``process`` by PID, SIGKILL it if it is still alive after ``timeout_s``; reap it.

    If the wait is cancelled the process is killed before the cancellation propagates.
    """
    try:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await process.wait()
            except TimeoutError:
                _LOGGER.warning("pid %d ignored SIGTERM for %ss, killing it", process.pid, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        return await process.wait()
    except BaseException:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        raise
