"""Decoding ``rpm.readings`` records (written by the bridge) into columns, validated.

The bridge validated every reading, but a Kafka topic is a network input too: anything that
does not have the record shape of ``rpm_core.wire`` is rejected here with a reason (and then
dead-lettered by the worker) instead of reaching a detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from rpm_core.wire import ALL_FLAGS, METRIC_RANGES, SCHEMA_VERSION, is_valid_id

_GROUP_KEYS = frozenset({"device", "source", "metric", "t", "value", "flags"})
_PATIENT_GROUP_KEYS = _GROUP_KEYS | {"patient"}
_LO = {m: r[0] for m, r in METRIC_RANGES.items()}
_HI = {m: r[1] for m, r in METRIC_RANGES.items()}


class RecordError(ValueError):
    """A readings record that does not follow the record schema."""


@dataclass(frozen=True, slots=True)
class Group:
    """The samples of one device in one record, as columns."""

    patient: str
    device: str
    source: str
    metric: list[str]
    t: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.int16]


@dataclass
class Decoded:
    """Every group of a micro-batch of records, and the records that were rejected."""

    groups: list[Group] = field(default_factory=list)
    rejected: list[tuple[bytes, str]] = field(default_factory=list)

    @property
    def samples(self) -> int:
        """How many samples the good groups hold."""
        return sum(len(g.t) for g in self.groups)


def _group(patient: str | None, raw: Any) -> Group:
    """One group; ``patient`` is the record's, or None when each group names its own."""
    keys = _GROUP_KEYS if patient is not None else _PATIENT_GROUP_KEYS
    if not isinstance(raw, dict) or raw.keys() != keys:
        raise RecordError(f"group must have exactly the keys {sorted(keys)}")
    if patient is None:
        patient = raw["patient"]
        if not is_valid_id(patient):
            raise RecordError("group patient is not a valid identifier")
        assert isinstance(patient, str)
    device, source, metric = raw["device"], raw["source"], raw["metric"]
    if not is_valid_id(device) or not is_valid_id(source):
        raise RecordError("group device/source is not a valid identifier")
    if not isinstance(metric, list) or not all(isinstance(m, str) and m in _LO for m in metric):
        raise RecordError("group metric must be a list of known metric names")
    try:
        t = np.asarray(raw["t"], dtype=np.float64)
        value = np.asarray(raw["value"], dtype=np.float64)
        flags = np.asarray(raw["flags"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"group columns must be numbers: {exc}") from exc
    n = len(metric)
    if n == 0 or t.shape != (n,) or value.shape != (n,) or flags.shape != (n,):
        raise RecordError("group columns must be non-empty 1-D lists of equal length")
    _check_values(metric, t, value, flags)
    return Group(patient, device, source, metric, t, value, flags.astype(np.int16))


def _check_values(
    metric: list[str], t: npt.NDArray[np.float64], value: npt.NDArray[np.float64], flags: npt.NDArray[np.int64]
) -> None:
    if not (np.isfinite(t).all() and np.isfinite(value).all()):
        raise RecordError("group holds a non-finite time or value")
    lo = np.fromiter((_LO[m] for m in metric), dtype=np.float64, count=len(metric))
    hi = np.fromiter((_HI[m] for m in metric), dtype=np.float64, count=len(metric))
    if ((value < lo) | (value > hi)).any():
        raise RecordError("group holds a value outside its metric's plausible range")
    if ((flags < 0) | (flags & ~ALL_FLAGS != 0)).any():
        raise RecordError("group holds invalid flags")


def decode_record(value: bytes) -> list[Group]:
    """The groups of one record, or :class:`RecordError` with the reason."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"record is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != SCHEMA_VERSION or isinstance(doc.get("v"), bool):
        raise RecordError(f"record is not a v{SCHEMA_VERSION} readings record")
    patient, groups = doc.get("patient"), doc.get("groups")
    if not isinstance(groups, list) or not groups:
        raise RecordError("record needs a non-empty list of groups")
    if set(doc) - {"v", "patient", "groups"}:
        raise RecordError("record has unknown keys")
    if "patient" in doc:
        if not is_valid_id(patient):
            raise RecordError("record needs a valid patient")
        assert isinstance(patient, str)
        return [_group(patient, g) for g in groups]
    return [_group(None, g) for g in groups]


def decode_records(values: list[bytes]) -> Decoded:
    """Decode a micro-batch; bad records are collected with their reason, never raised."""
    out = Decoded()
    for value in values:
        try:
            out.groups += decode_record(value)
        except RecordError as exc:
            out.rejected.append((value, str(exc)))
    return out
