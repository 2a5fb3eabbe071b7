"""A BlueZ pairing agent (``org.bluez.Agent1``) that asks the user for passkeys.

bleak pairs through BlueZ's ``Device1.Pair``; when the device wants a passkey, BlueZ asks the
default agent, and bleak registers none. ``rpm edge pair`` registers this one for the duration of
the pairing. Linux only (imports dbus-fast, which bleak depends on there), hence a module of its
own, imported lazily.
"""

# No "from __future__ import annotations": dbus-fast reads the annotations at runtime, and a
# postponed "-> None" is the string "None", which it rejects.

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from edge_agent.errors import PairingError

_LOGGER = logging.getLogger(__name__)

AGENT_PATH: Final = "/org/rpm/edge/agent"
# KeyboardDisplay: we can type a passkey the device shows, and show one the device wants typed.
AGENT_CAPABILITY: Final = "KeyboardDisplay"
# The passkey the user typed, or None if they cancelled.
PasskeyPrompt = Callable[[str], Awaitable[int | None]]


class PasskeyAgent(ServiceInterface):
    """``org.bluez.Agent1``: passkeys come from ``prompt(device_path)``; the rest is accepted."""

    def __init__(self, prompt: PasskeyPrompt) -> None:
        super().__init__("org.bluez.Agent1")
        self._prompt = prompt

    @dbus_method()
    async def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        """The device shows a passkey: ask the user for it (cancelled: BlueZ's own "Canceled" error)."""
        passkey = await self._prompt(device)
        if passkey is None:
            raise DBusError("org.bluez.Error.Canceled", "passkey entry cancelled")
        return passkey

    @dbus_method()
    def DisplayPasskey(self, device: DBusObjectPath, passkey: DBusUInt32, entered: DBusUInt16) -> None:
        """The device wants a passkey typed on it."""
        _LOGGER.warning("%s: type passkey %06d on the device", device, passkey)

    @dbus_method()
    def RequestConfirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> None:
        """Numeric comparison: accepted (the user started the pairing)."""
        _LOGGER.info("%s: confirming passkey %06d", device, passkey)

    @dbus_method()
    def RequestAuthorization(self, device: DBusObjectPath) -> None:
        """Just-works pairing: accepted."""

    @dbus_method()
    def AuthorizeService(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        """Service authorisation: accepted."""

    @dbus_method()
    def Cancel(self) -> None:
        """BlueZ cancelled the request."""

    @dbus_method()
    def Release(self) -> None:
        """BlueZ released the agent."""


async def _agent_manager(bus: MessageBus, member: str, signature: str, *body: str) -> None:
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path="/org/bluez",
            interface="org.bluez.AgentManager1",
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    if reply is None or reply.message_type == MessageType.ERROR:
        detail = f"{reply.error_name} {reply.body}" if reply is not None else "no reply"
        raise PairingError("-", f"cannot register the pairing agent ({member}: {detail})")


@contextlib.asynccontextmanager
async def passkey_agent(prompt: PasskeyPrompt) -> AsyncIterator[None]:
    """Register :class:`PasskeyAgent` as BlueZ's default agent while inside the block."""
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        bus.export(AGENT_PATH, PasskeyAgent(prompt))
        await _agent_manager(bus, "RegisterAgent", "os", AGENT_PATH, AGENT_CAPABILITY)
        await _agent_manager(bus, "RequestDefaultAgent", "o", AGENT_PATH)
        yield
        with contextlib.suppress(PairingError):
            await _agent_manager(bus, "UnregisterAgent", "o", AGENT_PATH)
    finally:
        bus.disconnect()
