"""Agent and device status, published on ``status_topic(patient)`` (``rpm/v1/p/{patient}/status``).

Three kinds of JSON message (schema version 1), all with ``v``, ``patient``, ``kind`` and ``t``
(UTC epoch seconds)::

    {"kind": "agent", "state": "online" | "offline"}                          retained; the last will
                                                                               is "offline" with
                                                                               "t": null, "last_will": true
    {"kind": "device", "device": "hr-C0:FF:…", "device_kind": "heart_rate",
     "state": "connecting" | "connected" | "disconnected" | "unreachable" | "error",
     "battery_pct": 87, "error": "…", "problems": {"reason": count}}            not retained
    {"kind": "alarm", "alarm": "battery_low", "active": true, "device": "hr-C0:FF:…",
     "severity": "warning" | "critical", "message": "…", "remedy": "…", …}  not retained

Alarms (``rpm watchdog`` makes each active one a technical alert ``tech.device.<alarm>``):
``outbox_full`` and ``bluetooth_unavailable`` (about the hub, no device), ``battery_low``,
``cgm_session_ending``, ``cgm_gap``, ``device_silent``, ``bond_lost``, ``meter_clock_off``;
``"active": false`` ends one. An alarm about one device names it and is kept per device;
extra fields give the details (``battery_pct``, ``gap``, ``session_end``, ``clock_offset_s``,
``evicted``…). Active alarms are announced again every few minutes.

Status is the *current* state, not history: it is not stored in the outbox. While the broker is
away the latest state per device and active alarms are kept in memory and published on the
next connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import orjson

from rpm_core.wire import SCHEMA_VERSION

DeviceState = Literal["connecting", "connected", "disconnected", "unreachable", "error"]
AlarmSeverity = Literal["warning", "critical"]
AgentState = Literal["online", "offline"]
OUTBOX_FULL_ALARM: Final = "outbox_full"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """The last known state of one device."""

    device: str
    device_kind: str
    state: DeviceState = "disconnected"
    battery_pct: int | None = None
    error: str | None = None
    problems: Mapping[str, int] = field(default_factory=dict)
    t: float = 0.0


def alarm_key(name: str, device: str | None) -> str:
    """The key of an alarm in :attr:`StatusBoard.alarms`: its name, and the device it is about."""
    return name if device is None else f"{name}|{device}"


def _doc(patient: str, kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"v": SCHEMA_VERSION, "patient": patient, "kind": kind, "t": round(time.time(), 3), **fields})


def agent_payload(patient: str, state: AgentState) -> bytes:
    """The retained agent presence message, stamped now (a graceful ``offline`` too)."""
    return _doc(patient, "agent", state=state)


def last_will_payload(patient: str) -> bytes:
    """The ``offline`` last will: the broker publishes it when it finds the agent gone, at a time the
    agent cannot know when it connects, so ``t`` is null (a stamp from the connection would lie by
    hours) and ``last_will`` says the receiver's clock tells when it took effect (issue 14, item 7)."""
    return orjson.dumps({"v": SCHEMA_VERSION, "patient": patient, "kind": "agent", "t": None, "state": "offline",
                         "last_will": True})


class StatusBoard:
    """Latest device states and active alarms; every change is handed to ``listener`` as a payload."""

    def __init__(self, patient: str) -> None:
        self.patient = patient
        self.devices: dict[str, DeviceStatus] = {}
        self.alarms: dict[str, bytes] = {}  # alarm_key(name, device) -> the active alarm's message
        self.listener: Callable[[bytes], None] = lambda _payload: None

    def device_payload(self, status: DeviceStatus) -> bytes:
        """The message for one device."""
        fields = {k: v for k, v in _status_fields(status).items() if v is not None}
        return _doc(self.patient, "device", **fields)

    def register(self, device: str, device_kind: str) -> None:
        """Know ``device`` (state ``disconnected``) without announcing it."""
        self.devices.setdefault(device, DeviceStatus(device, device_kind, t=time.time()))

    def forget(self, device: str) -> None:
        """A device no longer paired: drop its state and its alarms (cleared, so nobody waits on them)."""
        self.devices.pop(device, None)
        for payload in list(self.alarms.values()):
            doc = orjson.loads(payload)
            if doc.get("device") == device:
                self.alarm(doc["alarm"], active=False, device=device, message="the device is no longer paired")

    def update(self, device: str, **changes: Any) -> None:
        """Change a device's status and announce it (a device forgotten meanwhile: nothing)."""
        if device not in self.devices:
            return
        status = replace(self.devices[device], t=time.time(), **changes)
        self.devices[device] = status
        self.listener(self.device_payload(status))

    def alarm(
        self,
        name: str,
        *,
        active: bool,
        message: str,
        device: str | None = None,
        severity: AlarmSeverity = "warning",
        remedy: str | None = None,
        **fields: Any,
    ) -> None:
        """Raise (``active``) or clear an alarm and announce it.

        An alarm about one device names it (``device``) and is kept per device; ``message`` is for
        a nurse, ``remedy`` says what to do (the watchdog turns active alarms into technical alerts,
        COMMON.md "Technical alerts: the contract"). Raising an active alarm again with the same
        content says nothing; every active alarm is re-sent after each reconnection (:meth:`snapshot`).
        """
        extra = {"device": device, "severity": severity, "remedy": remedy}
        payload = _doc(self.patient, "alarm", alarm=name, active=active, message=message,
                       **{k: v for k, v in extra.items() if v is not None}, **fields)
        key = alarm_key(name, device)
        if active:
            if key in self.alarms and _same_alarm(self.alarms[key], payload):
                return  # nothing new (the snapshot re-sends it on every reconnection)
            self.alarms[key] = payload
        elif key in self.alarms:
            del self.alarms[key]
        else:
            return  # nothing to clear: say nothing
        self.listener(payload)

    def resend_alarms(self) -> None:
        """Announce every active alarm again (unchanged, with its original time)."""
        for payload in list(self.alarms.values()):
            self.listener(payload)

    def alarm_active(self, name: str, device: str | None = None) -> bool:
        """Whether the alarm ``name`` (of ``device``) is active."""
        return alarm_key(name, device) in self.alarms

    def snapshot(self) -> list[bytes]:
        """Every device's state and every active alarm (published after each (re)connection)."""
        return [self.device_payload(s) for s in self.devices.values()] + list(self.alarms.values())


def _same_alarm(a: bytes, b: bytes) -> bool:
    """Whether two alarm messages say the same (their times aside)."""
    first, second = orjson.loads(a), orjson.loads(b)
    first.pop("t", None)
    second.pop("t", None)
    return bool(first == second)


def _status_fields(status: DeviceStatus) -> dict[str, Any]:
    return {
        "device": status.device,
        "device_kind": status.device_kind,
        "state": status.state,
        "battery_pct": status.battery_pct,
        "error": status.error,
        "problems": dict(status.problems) or None,
    }
