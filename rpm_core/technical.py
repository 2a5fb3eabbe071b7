"""Technical alerts and heartbeats: the contracts by which rpm says that it cannot monitor someone.

A *technical alert* (IEC 60601-1-8's "technical alarm condition", a bedside monitor's INOP) is
raised when the pipeline, or a patient's device, cannot do its job: no worker analyses a
partition, a bridge is stuck or silent, InfluxDB takes no writes, a ward's readings stopped, a
device's battery is low. It travels on ``rpm.alerts`` beside the clinical alerts, so the nurse
stations and the notifier that people already watch show and route it, as JSON with the fields of
:meth:`detectors.events.AlertEvent.to_dict` plus ``kind``, ``wards``, ``remedy``, ``component``
and ``scope``::

    {"kind": "technical", "alert_id": "…", "rule": "tech.workers_missing", "severity": "critical",
     "state": "raised" | "cleared", "time": 1.7e9, "since": 1.7e9, "metric": "technical",
     "value": null, "by": null, "patient": null | "p0001", "wards": ["icu"] | ["*"],
     "component": "worker", "scope": "", "message": "what is wrong", "remedy": "what to do"}

``rule`` is ``tech.<code>``; ``patient`` names the patient for a patient's own device trouble and
is null otherwise; ``wards`` lists the wards concerned (``"*"``: every ward); ``scope`` tells
apart alerts of one rule (a bridge's client id, a ward, ``patient/device``). A technical alert is
``raised`` and later ``cleared`` when its cause is gone: it can be silenced at a station, never
acknowledged away.

*Heartbeats* (topic ``rpm.heartbeats``) are how components that may die are watched by one that
survives them (``rpm watchdog``): every bridge, worker, nurse station, notifier and HL7 follower says
every few seconds that it runs, whether it progresses, and what it owns. A component that stops
reporting is presumed dead or frozen; a dead one cannot report itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from rpm_core.signing import KeyRing, SignatureError
from rpm_core.wire import is_valid_id, load_envelope

TECHNICAL_KIND: Final = "technical"
TECHNICAL_METRIC: Final = "technical"
RULE_PREFIX: Final = "tech."
EVERY_WARD: Final = "*"
# Where a label needs a patient (a notification group, an InfluxDB tag) and the alert has none.
SYSTEM_SUBJECT: Final = "rpm-system"
HEARTBEATS_TOPIC: Final = "rpm.heartbeats"
HEARTBEAT_INTERVAL_S: Final = 5.0
# A heartbeat is a record like any other: at most Kafka's record size (a worker of a huge ward list).
MAX_HEARTBEAT_BYTES: Final = 1_000_000
_HEARTBEAT_REQUIRED: Final = frozenset({"v", "component", "instance", "time"})
_HEARTBEAT_KEYS: Final = _HEARTBEAT_REQUIRED | {"state", "healthy", "problem", "interval_s", "partitions",
                                                "partition_count", "ward_last_reading", "messages", "deadlettered",
                                                "state_reset", "state_reset_count", "unassigned",
                                                "unassigned_count", "ward", "dark_screens"}
# How long a worker reports the patients whose stored state it could not read (``state_reset``),
# and how many of them it names at most (the count says how many there were).
STATE_RESET_HOLD_S: Final = 900.0
MAX_STATE_RESET_IDS: Final = 50
# How long a worker reports the patients on no ward of its roster whose readings it received
# (``unassigned``), and how many it names at most (the count says how many there were).
UNASSIGNED_HOLD_S: Final = 900.0
MAX_UNASSIGNED_IDS: Final = 50
# The ward screens (kiosks) a nurse station names as dark at most, and the length of each name.
MAX_DARK_SCREENS: Final = 50
MAX_SCREEN_NAME_CHARS: Final = 100

Severity = Literal["warning", "critical"]
TechState = Literal["raised", "cleared"]
Component = Literal["worker", "bridge", "influxdb", "kafka", "deadletter", "ward", "device", "agent", "watchdog",
                    "station", "notifier", "hl7"]
COMPONENTS: Final = frozenset({"worker", "bridge", "influxdb", "kafka", "deadletter", "ward", "device", "agent",
                               "watchdog", "station", "notifier", "hl7"})
MAX_TEXT_CHARS: Final = 1_000
# What a worker's warning (its heartbeat's ``problem`` while healthy) says, by cause: the worker
# writes these phrases and the watchdog picks the component and remedy of tech.worker_warning by
# them (several causes join with "; ").
WARNING_INFLUXDB: Final = "InfluxDB"  # an InfluxDB limit refusing the points of new series
WARNING_CHANGELOG: Final = "the state changelog"  # detector states Kafka failed to store
WARNING_BEHIND: Final = "after they arrived"  # readings processed a minute or more late


class TechnicalAlertError(ValueError):
    """A document that is not a valid technical alert or heartbeat; the message says why."""


class HeartbeatSignatureError(TechnicalAlertError):
    """A heartbeat of a component that signs, without a valid signature: possibly forged."""


def technical_alert_id(rule: str, scope: str, since: float) -> str:
    """Deterministic id of one episode of technical alert ``rule`` for ``scope``."""
    key = f"{rule}|{scope}|{float(since)!r}".encode()
    return hashlib.sha1(key, usedforsecurity=False).hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class TechnicalAlert:
    """One state change of one technical alert (see the module docstring)."""

    rule: str
    scope: str
    severity: Severity
    state: TechState
    time: float
    since: float
    message: str
    remedy: str
    component: str
    wards: tuple[str, ...]
    patient: str | None = None

    @property
    def alert_id(self) -> str:
        """The episode's id (the same for its ``raised`` and ``cleared``)."""
        return technical_alert_id(self.rule, self.scope, self.since)

    @property
    def key(self) -> tuple[str, str]:
        """What tells one condition from another: (rule, scope)."""
        return self.rule, self.scope

    def to_dict(self) -> dict[str, Any]:
        """The JSON document on ``rpm.alerts``."""
        return {
            "kind": TECHNICAL_KIND, "alert_id": self.alert_id, "rule": self.rule, "severity": self.severity,
            "state": self.state, "time": self.time, "since": self.since, "metric": TECHNICAL_METRIC,
            "value": None, "by": None, "patient": self.patient, "wards": list(self.wards),
            "component": self.component, "scope": self.scope, "message": self.message, "remedy": self.remedy,
        }

    def encode(self) -> bytes:
        """The record value."""
        return orjson.dumps(self.to_dict())

    def cleared(self, at: float) -> TechnicalAlert:
        """The ``cleared`` event of this episode."""
        return TechnicalAlert(rule=self.rule, scope=self.scope, severity=self.severity, state="cleared", time=at,
                              since=self.since, message=self.message, remedy=self.remedy,
                              component=self.component, wards=self.wards, patient=self.patient)


def is_technical(doc: object) -> bool:
    """Whether a decoded ``rpm.alerts`` document claims to be a technical alert."""
    return isinstance(doc, dict) and doc.get("kind") == TECHNICAL_KIND


def _text(doc: Mapping[str, Any], key: str, *, allow_empty: bool = True) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str) or (not value and not allow_empty):
        raise TechnicalAlertError(f"technical alert field {key!r} must be text")
    return value[:MAX_TEXT_CHARS]


def _finite(doc: Mapping[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TechnicalAlertError(f"technical alert field {key!r} must be a finite number")
    return float(value)


def decode_technical(doc: object) -> TechnicalAlert:
    """Validate a decoded technical-alert document; :class:`TechnicalAlertError` with the reason."""
    if not is_technical(doc):
        raise TechnicalAlertError("not a technical alert")
    assert isinstance(doc, dict)
    rule, severity, state = doc.get("rule"), doc.get("severity"), doc.get("state")
    if not (is_valid_id(rule) and isinstance(rule, str) and rule.startswith(RULE_PREFIX)):
        raise TechnicalAlertError(f"technical alert rule must be an identifier starting with {RULE_PREFIX!r}")
    if severity not in ("warning", "critical") if isinstance(severity, str) else True:
        raise TechnicalAlertError("technical alert severity must be warning or critical")
    if state not in ("raised", "cleared") if isinstance(state, str) else True:
        raise TechnicalAlertError("technical alert state must be raised or cleared")
    wards = doc.get("wards")
    if not (isinstance(wards, list) and wards and len(wards) <= 1000
            and all(w == EVERY_WARD or is_valid_id(w) for w in wards)):
        raise TechnicalAlertError("technical alert wards must be a non-empty list of ward ids or '*'")
    patient = doc.get("patient")
    if patient is not None and not is_valid_id(patient):
        raise TechnicalAlertError("technical alert patient must be null or an identifier")
    component = doc.get("component")
    if not (isinstance(component, str) and component in COMPONENTS):
        raise TechnicalAlertError("technical alert component unknown")
    alert = TechnicalAlert(rule=str(rule), scope=_text(doc, "scope"), severity=severity,  # type: ignore[arg-type]
                           state=state, time=_finite(doc, "time"), since=_finite(doc, "since"),  # type: ignore[arg-type]
                           message=_text(doc, "message", allow_empty=False), remedy=_text(doc, "remedy"),
                           component=component, wards=tuple(str(w) for w in wards), patient=patient)
    if doc.get("alert_id") != alert.alert_id:
        raise TechnicalAlertError("technical alert id does not match its rule, scope and since")
    return alert


# -- heartbeats ------------------------------------------------------------------------------------

HeartbeatComponent = Literal["bridge", "worker", "watchdog", "station", "notifier", "hl7"]
HEARTBEAT_COMPONENTS: Final = frozenset({"bridge", "worker", "watchdog", "station", "notifier", "hl7"})
# The components that hold the deployment's signing keys (they sign alerts or acknowledgements, or,
# the HL7 follower, check them before the hospital gets an alert):
# with keys, their heartbeats must be signed, so a writer to rpm.heartbeats cannot keep one that died
# looking alive (or the watchdog itself, at the stations). The bridge holds no key (least privilege):
# its heartbeats are read unsigned.
SIGNED_HEARTBEAT_COMPONENTS: Final = frozenset({"worker", "watchdog", "station", "notifier", "hl7"})
HeartbeatState = Literal["running", "stopping"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """"I am alive, and this is how I am": one component instance, every ``interval_s``.

    - ``healthy``/``problem``: what its ``/healthz`` says (``problem``: why not, or a warning);
    - ``partitions`` (workers): the ``rpm.readings`` partitions it owns and has recovered;
      ``partition_count``: of the topic, as it knows it;
    - ``ward_last_reading`` (workers): per ward, when it last received a reading of one of its patients;
    - ``messages``/``deadlettered``: counters since its start (records or MQTT messages in; inputs
      dead-lettered), for rates;
    - ``state_reset``/``state_reset_count`` (workers): the patients (at most
      :data:`MAX_STATE_RESET_IDS`, most recent first) and how many, whose stored detector state it
      could not read within the last :data:`STATE_RESET_HOLD_S` and so started afresh: open alerts
      and time already counted toward one are lost for them;
    - ``unassigned``/``unassigned_count`` (workers with a roster): the patients on no ward of the
      roster (at most :data:`MAX_UNASSIGNED_IDS`, most recent first) and how many, whose readings
      arrived within the last :data:`UNASSIGNED_HOLD_S`: no nurse station shows their alerts;
    - ``ward`` (nurse stations): the ward whose alerts it shows;
    - ``dark_screens`` (nurse stations): its ward screens (kiosks, by label and id) that have shown
      nothing for a minute: no browser holds their live alert stream.
    """

    component: HeartbeatComponent
    instance: str
    time: float
    state: HeartbeatState = "running"
    healthy: bool = True
    problem: str | None = None
    interval_s: float = HEARTBEAT_INTERVAL_S
    partitions: tuple[int, ...] = ()
    partition_count: int = 0
    ward_last_reading: Mapping[str, float] = field(default_factory=dict)
    messages: int = 0
    deadlettered: int = 0
    state_reset: tuple[str, ...] = ()
    state_reset_count: int = 0
    unassigned: tuple[str, ...] = ()
    unassigned_count: int = 0
    ward: str | None = None
    dark_screens: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """The record value on ``rpm.heartbeats`` (``state_reset…`` only when there is one: a watchdog
        of an earlier version, which refuses keys it does not know, reads every other heartbeat)."""
        doc: dict[str, Any] = {
            "v": 1, "component": self.component, "instance": self.instance, "time": self.time,
            "state": self.state, "healthy": self.healthy, "problem": self.problem, "interval_s": self.interval_s,
            "partitions": list(self.partitions), "partition_count": self.partition_count,
            "ward_last_reading": dict(self.ward_last_reading), "messages": self.messages,
            "deadlettered": self.deadlettered,
        }
        if self.state_reset_count:
            doc.update(state_reset=list(self.state_reset), state_reset_count=self.state_reset_count)
        if self.unassigned_count:
            doc.update(unassigned=list(self.unassigned), unassigned_count=self.unassigned_count)
        if self.ward is not None:
            doc.update(ward=self.ward)
        if self.dark_screens:
            doc.update(dark_screens=list(self.dark_screens))
        return orjson.dumps(doc)


def _count(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TechnicalAlertError(f"heartbeat {key!r} must be a non-negative integer")
    return int(value)


def decode_heartbeat(value: bytes | None) -> Heartbeat:
    """Validate one ``rpm.heartbeats`` record value; :class:`TechnicalAlertError` with the reason."""
    doc = load_envelope(value, what="heartbeat", version=1, error=TechnicalAlertError, max_bytes=MAX_HEARTBEAT_BYTES,
                        keys=_HEARTBEAT_KEYS, required=_HEARTBEAT_REQUIRED)
    component, instance, state = doc.get("component"), doc.get("instance"), doc.get("state", "running")
    if component not in HEARTBEAT_COMPONENTS if isinstance(component, str) else True:
        raise TechnicalAlertError("heartbeat component unknown")
    if not isinstance(instance, str) or not 0 < len(instance) <= 200 or not instance.isprintable():
        raise TechnicalAlertError("heartbeat instance must be printable text")
    if state not in ("running", "stopping") if isinstance(state, str) else True:
        raise TechnicalAlertError("heartbeat state must be running or stopping")
    healthy, problem = doc.get("healthy", True), doc.get("problem")
    if not isinstance(healthy, bool) or not (problem is None or isinstance(problem, str)):
        raise TechnicalAlertError("heartbeat healthy/problem have the wrong types")
    parts = doc.get("partitions", [])
    if not (isinstance(parts, list) and len(parts) <= 100_000
            and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts)):
        raise TechnicalAlertError("heartbeat partitions must be a list of partition numbers")
    wards = doc.get("ward_last_reading", {})
    if not (isinstance(wards, dict) and len(wards) <= 10_000 and all(
            is_valid_id(w) and isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
            for w, t in wards.items())):
        raise TechnicalAlertError("heartbeat ward_last_reading must map ward ids to times")
    interval = doc.get("interval_s", HEARTBEAT_INTERVAL_S)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
        raise TechnicalAlertError("heartbeat interval_s must be a number of seconds")
    reset, reset_count = doc.get("state_reset", []), _count(doc, "state_reset_count")
    if not (isinstance(reset, list) and len(reset) <= MAX_STATE_RESET_IDS and all(is_valid_id(p) for p in reset)
            and len(set(reset)) == len(reset) <= reset_count):
        raise TechnicalAlertError(f"heartbeat state_reset must list at most {MAX_STATE_RESET_IDS} distinct patient "
                                  "ids, no more than state_reset_count")
    unassigned, unassigned_count = doc.get("unassigned", []), _count(doc, "unassigned_count")
    if not (isinstance(unassigned, list) and len(unassigned) <= MAX_UNASSIGNED_IDS
            and all(is_valid_id(p) for p in unassigned)
            and len(set(unassigned)) == len(unassigned) <= unassigned_count):
        raise TechnicalAlertError(f"heartbeat unassigned must list at most {MAX_UNASSIGNED_IDS} distinct patient "
                                  "ids, no more than unassigned_count")
    ward = doc.get("ward")
    if ward is not None and not is_valid_id(ward):
        raise TechnicalAlertError("heartbeat ward must be a ward id")
    dark = doc.get("dark_screens", [])
    if not (isinstance(dark, list) and len(dark) <= MAX_DARK_SCREENS and all(
            isinstance(d, str) and 0 < len(d) <= MAX_SCREEN_NAME_CHARS and d.isprintable() for d in dark)):
        raise TechnicalAlertError(f"heartbeat dark_screens must list at most {MAX_DARK_SCREENS} screen names")
    return Heartbeat(component=component, instance=instance, time=_finite(doc, "time"), state=state,  # type: ignore[arg-type]
                     healthy=healthy, problem=problem[:MAX_TEXT_CHARS] if problem else None,
                     interval_s=float(interval), partitions=tuple(parts),
                     partition_count=_count(doc, "partition_count"),
                     ward_last_reading={str(w): float(t) for w, t in wards.items()},
                     messages=_count(doc, "messages"), deadlettered=_count(doc, "deadlettered"),
                     state_reset=tuple(reset), state_reset_count=reset_count,
                     unassigned=tuple(unassigned), unassigned_count=unassigned_count,
                     ward=str(ward) if ward is not None else None, dark_screens=tuple(dark))


def sign_heartbeat(keys: KeyRing | None, beat: Heartbeat) -> tuple[bytes, list[tuple[str, bytes]] | None]:
    """The record value of ``beat`` and its signature headers (None without keys)."""
    value = beat.encode()
    return value, keys.sign(HEARTBEATS_TOPIC, None, value) if keys is not None else None


def read_heartbeat(keys: KeyRing | None, value: bytes | None, headers: Any = None) -> Heartbeat:
    """:func:`decode_heartbeat`, and with ``keys`` the signature of every component that holds them
    (:data:`SIGNED_HEARTBEAT_COMPONENTS`); :class:`TechnicalAlertError` with the reason."""
    beat = decode_heartbeat(value)
    if keys is not None and beat.component in SIGNED_HEARTBEAT_COMPONENTS:
        try:
            keys.verify(HEARTBEATS_TOPIC, None, value, headers)
        except SignatureError as exc:
            what = f"heartbeat of {beat.component} {beat.instance[:64]!r}"
            raise HeartbeatSignatureError(f"{what} refused: {exc}") from exc
    return beat


# The send of one heartbeat record: (key, value, signature headers or None), awaited until Kafka has it.
SendRecord = Callable[[bytes, bytes, "list[tuple[str, bytes]] | None"], Awaitable[object]]


def heartbeat_key(beat: Heartbeat) -> bytes:
    """The record key of ``beat``: ``component:instance``, so that one instance's heartbeats keep their
    order ("stopping" after the last "running") on a topic of several partitions. The signature does
    not cover it (:func:`sign_heartbeat`): the value names the component, the key only places it."""
    return f"{beat.component}:{beat.instance}".encode()


class HeartbeatSender:
    """How every component sends its heartbeats: signed with ``keys`` (None: unsigned, the bridge's
    case), each within a deadline, and a failure never raised to the component but said in its log
    once per streak of failures (and once when they reach Kafka again). The silence itself is the
    alarm: the watchdog reports the component as silent; the log says why from its side.

    ``send`` delivers one record (key, value, headers) to ``rpm.heartbeats`` (an aiokafka producer's
    ``send_and_wait``, a Faust topic's ``send``); ``what`` names the component in the log ("this station")."""

    def __init__(self, send: SendRecord, *, keys: KeyRing | None, what: str, logger: logging.Logger) -> None:
        self._send = send
        self._keys = keys
        self._what = what
        self._log = logger
        self.missed = 0  # heartbeats in a row not sent

    async def send(self, beat: Heartbeat, *, within_s: float = HEARTBEAT_INTERVAL_S) -> bool:
        """Send ``beat``; whether Kafka took it within ``within_s``."""
        value, headers = sign_heartbeat(self._keys, beat)
        try:
            async with asyncio.timeout(within_s):
                await self._send(heartbeat_key(beat), value, headers)
        except Exception as exc:  # Kafka refusing, not answering, a producer stopped: never the component's end
            self.missed += 1
            if self.missed == 1:
                text = str(exc)[:200]
                self._log.warning("heartbeat to %s not sent (%s%s): the watchdog will report %s as silent",
                                  HEARTBEATS_TOPIC, type(exc).__name__, f": {text}" if text else "", self._what)
            return False
        if self.missed:
            self._log.info("heartbeats reach %s again (%d not sent)", HEARTBEATS_TOPIC, self.missed)
            self.missed = 0
        return True

    async def forever(self, beat: Callable[[], Heartbeat], stop: asyncio.Event | None = None) -> None:
        """Send ``beat()`` every :data:`HEARTBEAT_INTERVAL_S` until ``stop`` is set (or the task is
        cancelled). A component whose event loop is stuck stops sending, and the watchdog notices."""
        stop = stop if stop is not None else asyncio.Event()
        while not stop.is_set():
            await self.send(beat())
            try:
                async with asyncio.timeout(HEARTBEAT_INTERVAL_S):
                    await stop.wait()
            except TimeoutError:
                pass

    async def last(self, beat: Heartbeat, *, within_s: float = 3.0) -> bool:
        """The heartbeat saying "stopping" (``beat.state``), so a component stopped on purpose is not
        reported as silent; bounded, since the component stops anyway."""
        if not await self.send(beat, within_s=within_s):
            self._log.warning("the last heartbeat was not sent: the watchdog may report %s as silent", self._what)
            return False
        return True
