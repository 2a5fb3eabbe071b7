"""The pairing registry: which patient this agent serves and which devices are paired with it.

Stored as JSON in the state directory (``pairings.json``, mode 0600), replaced atomically (write a
temp file in the same directory, fsync, rename, fsync the directory), so a power cut leaves the
old or the new registry, never half of one. Writers (``rpm edge pair`` / ``forget``) serialise on
an advisory lock file beside it.

Watermarks (the glucose meter's last sequence number and de-duplication keys, the CGM's session
and last time offset) are *not* kept here but in the outbox's SQLite database
(:mod:`edge_agent.outbox`): they must advance in the same transaction that stores the readings
they stand for, which a separate JSON file could not guarantee.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from edge_agent import const
from edge_agent.errors import RegistryError
from rpm_core.files import write_atomic
from rpm_core.wire import is_valid_id

REGISTRY_VERSION: Final = 1


class DeviceKind(enum.StrEnum):
    """What a paired device is, decided by the service it advertises."""

    HEART_RATE = "heart_rate"
    GLUCOSE_METER = "glucose_meter"
    CGM = "cgm"

    @property
    def prefix(self) -> str:
        """Short prefix of the device id on the wire (``hr-C0:FF:EE:00:00:01``)."""
        return _PREFIXES[self]

    @property
    def service_uuid(self) -> str:
        """The GATT service that identifies this kind."""
        return _SERVICES[self]


_PREFIXES: Final = {DeviceKind.HEART_RATE: "hr", DeviceKind.GLUCOSE_METER: "bgm", DeviceKind.CGM: "cgm"}
_SERVICES: Final = {
    DeviceKind.HEART_RATE: const.HEART_RATE_SERVICE_UUID,
    DeviceKind.GLUCOSE_METER: const.GLUCOSE_SERVICE_UUID,
    DeviceKind.CGM: const.CGM_SERVICE_UUID,
}


def kind_from_service_uuids(uuids: list[str] | tuple[str, ...]) -> DeviceKind | None:
    """The kind of device advertising ``uuids`` (CGM first: a CGM may also expose GLS)."""
    lowered = {u.lower() for u in uuids}
    for kind in (DeviceKind.CGM, DeviceKind.GLUCOSE_METER, DeviceKind.HEART_RATE):
        if kind.service_uuid in lowered:
            return kind
    return None


def normalize_address(address: str) -> str:
    """``c0-ff-ee-00-00-01`` or ``c0:ff:…`` → ``C0:FF:EE:00:00:01``; anything else is an error."""
    text = address.strip().upper().replace("-", ":")
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789ABCDEF" for c in p) for p in parts):
        raise RegistryError(f"{address!r} is not a Bluetooth address like C0:FF:EE:00:00:01")
    return text


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Device Information Service strings read at pairing (None: the device does not have it)."""

    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None


@dataclass(frozen=True, slots=True)
class PairedDevice:
    """One paired device."""

    address: str
    kind: DeviceKind
    name: str | None = None
    info: DeviceInfo = field(default_factory=DeviceInfo)
    battery_pct: int | None = None
    bonded: bool = False
    paired_at: str = ""

    @property
    def device_id(self) -> str:
        """The device id on the wire: kind prefix + address (``[A-Za-z0-9_.:-]``, ≤ 64)."""
        return f"{self.kind.prefix}-{self.address}"

    @property
    def identity(self) -> str:
        """What de-duplication keys are scoped by: the serial number, else the address."""
        return self.info.serial or self.address

    def to_json(self) -> dict[str, Any]:
        """The registry form."""
        doc = asdict(self)
        doc["kind"] = self.kind.value
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PairedDevice:
        """Parse the registry form; :class:`RegistryError` on anything unexpected."""
        try:
            info = DeviceInfo(**doc.get("info") or {})
            device = cls(
                address=normalize_address(doc["address"]),
                kind=DeviceKind(doc["kind"]),
                name=doc.get("name"),
                info=info,
                battery_pct=doc.get("battery_pct"),
                bonded=bool(doc.get("bonded", False)),
                paired_at=str(doc.get("paired_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"invalid device entry {doc!r}: {exc}") from exc
        return device


@dataclass(frozen=True, slots=True)
class Registry:
    """The patient and the paired devices, in pairing order."""

    patient: str | None = None
    devices: tuple[PairedDevice, ...] = ()

    def find(self, address: str) -> PairedDevice | None:
        """The device with ``address``, if paired."""
        address = normalize_address(address)
        return next((d for d in self.devices if d.address == address), None)

    def with_device(self, patient: str, device: PairedDevice) -> Registry:
        """Pair ``device`` for ``patient`` (replacing an earlier pairing of the same address)."""
        if not is_valid_id(patient):
            raise RegistryError(f"patient id {patient!r} must match [A-Za-z0-9_.:-]{{1,64}}")
        if self.patient is not None and self.patient != patient and self.devices:
            raise RegistryError(
                f"this agent is provisioned for patient {self.patient}; forget its devices first "
                "(rpm edge forget ADDRESS) or use another state directory (RPM_EDGE_STATE)"
            )
        others = tuple(d for d in self.devices if d.address != device.address)
        return Registry(patient=patient, devices=(*others, device))

    def without(self, address: str) -> Registry:
        """Forget ``address``; :class:`RegistryError` if it is not paired."""
        address = normalize_address(address)
        if self.find(address) is None:
            raise RegistryError(f"{address} is not paired")
        return replace(self, devices=tuple(d for d in self.devices if d.address != address))

    def to_json(self) -> dict[str, Any]:
        """The file's JSON document."""
        return {"version": REGISTRY_VERSION, "patient": self.patient, "devices": [d.to_json() for d in self.devices]}

    @classmethod
    def from_json(cls, doc: object) -> Registry:
        """Parse the file's JSON document."""
        if not isinstance(doc, dict) or doc.get("version") != REGISTRY_VERSION:
            raise RegistryError(f"unsupported registry document (expected version {REGISTRY_VERSION})")
        patient = doc.get("patient")
        if patient is not None and not is_valid_id(patient):
            raise RegistryError(f"invalid patient id {patient!r}")
        devices = doc.get("devices")
        if not isinstance(devices, list):
            raise RegistryError("'devices' must be a list")
        return cls(patient=patient, devices=tuple(PairedDevice.from_json(d) for d in devices))


def now_iso() -> str:
    """Now, UTC, ISO 8601 with seconds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class RegistryStore:
    """Loads and atomically replaces ``pairings.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Registry:
        """The registry; an empty one if the file does not exist yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Registry()
        except OSError as exc:
            raise RegistryError(f"cannot read {self.path}: {exc}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{self.path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        try:
            return Registry.from_json(doc)
        except RegistryError as exc:
            raise RegistryError(f"{self.path}: {exc}") from exc

    def save(self, registry: Registry) -> None:
        """Replace the file atomically (temp file + fsync + rename + directory fsync), mode 0600."""
        data = json.dumps(registry.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(self.path, data, mode=0o600)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Registry]:
        """Hold the writers' lock; yields the current registry (save inside the block)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load()
        finally:
            os.close(fd)  # closing releases the lock
