"""Decoding ``rpm.readings`` records (written by the bridge) into columns, validated.

The bridge validated every reading, but a Kafka topic is a network input too: anything that
does not have the record shape of ``rpm_core.wire`` is rejected here with a reason (and then
dead-lettered by the worker) instead of reaching a detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from detectors.batch import metric_codes
from detectors.const import METRIC_NAMES
from rpm_core.wire import (
    ALL_FLAGS,
    MAX_EPOCH_S,
    MAX_FUTURE_SKEW_S,
    METRIC_RANGES,
    MIN_SAMPLE_EPOCH_S,
    RANGE_FLAGS,
    SCHEMA_VERSION,
    all_valid_ids,
    check_envelope,
    is_valid_id,
)

_GROUP_KEYS = frozenset({"device", "source", "metric", "t", "value", "flags"})
_PATIENT_GROUP_KEYS = _GROUP_KEYS | {"patient"}
_METRICS: Final = frozenset(METRIC_RANGES)
# Plausible ranges by metric code (detectors.const.METRIC_NAMES order).
_LO: Final = np.array([METRIC_RANGES[m][0] for m in METRIC_NAMES])
_HI: Final = np.array([METRIC_RANGES[m][1] for m in METRIC_NAMES])
assert _METRICS == frozenset(METRIC_NAMES), "the wire's metrics are the detectors' metrics"
# Given the worker's clock, a time further ahead than the bridge allows (MAX_FUTURE_SKEW_S of its own
# clock) plus this much for the bridge's and the worker's hosts disagreeing is refused.
CLOCK_MARGIN_S: Final = 300.0


def _known_metrics(metric: object) -> bool:
    """Whether ``metric`` is a list of known metric names."""
    if not isinstance(metric, list):
        return False
    try:
        return set(metric) <= _METRICS
    except TypeError:  # unhashable elements (lists, dicts)
        return False


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
    """Every good group of a micro-batch of records as columns, and the records that were rejected.

    Per group: ``patient``, ``device``, ``source`` and ``size`` (its number of samples); per
    sample, in group order: ``metric`` (and its code, ``detectors.const.METRIC_NAMES`` order),
    ``t``, ``value``, ``flags``.
    """

    patient: list[str] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    size: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    metric: list[str] = field(default_factory=list)
    metric_code: npt.NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    t: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    value: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    flags: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    rejected: list[tuple[bytes, str]] = field(default_factory=list)

    @property
    def samples(self) -> int:
        """How many samples the good groups hold."""
        return len(self.t)

    @property
    def groups(self) -> list[Group]:
        """The good groups one by one (views of the columns)."""
        ends = np.cumsum(self.size).tolist()
        starts = [0, *ends][:-1]
        return [
            Group(p, d, s, self.metric[a:b], self.t[a:b], self.value[a:b], self.flags[a:b])
            for p, d, s, a, b in zip(self.patient, self.device, self.source, starts, ends, strict=True)
        ]


_Structure = tuple[str, str, str, list[str], list[Any], list[Any], list[Any]]


def _keys_checked(raw: Any, record_patient: str | None) -> dict[str, Any]:
    keys = _GROUP_KEYS if record_patient is not None else _PATIENT_GROUP_KEYS
    if not isinstance(raw, dict) or raw.keys() != keys:
        raise RecordError(f"group must have exactly the keys {sorted(keys)}")
    return raw


def _columns_checked(raw: dict[str, Any], record_patient: str | None) -> _Structure:
    """The group's parts once its metric is a list: the columns' shape checked, identifiers not."""
    metric, t, v, f = raw["metric"], raw["t"], raw["value"], raw["flags"]
    n = len(metric)
    if (n == 0 or not isinstance(t, list) or not isinstance(v, list) or not isinstance(f, list)
            or len(t) != n or len(v) != n or len(f) != n):
        raise RecordError("group columns must be non-empty 1-D lists of equal length")
    patient = record_patient if record_patient is not None else raw["patient"]
    return patient, raw["device"], raw["source"], metric, t, v, f


def _structure(raw: Any, record_patient: str | None) -> _Structure:
    """A group's patient, device, source and columns, its shape checked (the numbers are not);
    ``record_patient`` is the record's patient, or None when each group names its own."""
    raw = _keys_checked(raw, record_patient)
    if record_patient is None and not is_valid_id(raw["patient"]):
        raise RecordError("group patient is not a valid identifier")
    if not is_valid_id(raw["device"]) or not is_valid_id(raw["source"]):
        raise RecordError("group device/source is not a valid identifier")
    if not _known_metrics(raw["metric"]):
        raise RecordError("group metric must be a list of known metric names")
    return _columns_checked(raw, record_patient)


def _shape(raw: Any, record_patient: str | None) -> _Structure:
    """:func:`_structure` without the checks the fast path makes once per batch (identifiers and
    metric names, in :meth:`_Columns.finish`); what it refuses :func:`_structure` refuses too."""
    raw = _keys_checked(raw, record_patient)
    if not isinstance(raw["metric"], list):
        raise RecordError("group metric must be a list of known metric names")
    return _columns_checked(raw, record_patient)


def _group(record_patient: str | None, raw: Any, now: float | None = None) -> Group:
    """One group, checked through and through (the reference for :class:`_Columns`)."""
    patient, device, source, metric, t, v, f = _structure(raw, record_patient)
    times = _numbers(t, _NUMBER_TYPES, np.float64)
    values = _numbers(v, _NUMBER_TYPES, np.float64)
    flags = _numbers(f, _INTEGER_TYPES, np.int64)
    _check_values(metric, times, values, flags, now)
    return Group(patient, device, source, metric, times, values, flags.astype(np.int16))


_NUMBER_TYPES: Final = frozenset({int, float})
_INTEGER_TYPES: Final = frozenset({int})


def _numbers(column: Any, types: frozenset[type], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """``column`` as an array of ``dtype`` if it is a list whose elements are all JSON numbers of
    ``types`` (not strings that look like numbers, not booleans, not nested lists)."""
    if not isinstance(column, list) or not set(map(type, column)) <= types:
        if types == _INTEGER_TYPES:
            raise RecordError("group flags must be integers (a flat list; no booleans, no strings)")
        raise RecordError("group columns must be numbers (flat lists; no strings, booleans or nulls)")
    try:
        return np.asarray(column, dtype=dtype)
    except (OverflowError, ValueError) as exc:  # an integer beyond the dtype
        raise RecordError(f"group columns must be numbers in range: {exc}") from exc


def _check_values(
    metric: list[str], t: npt.NDArray[np.float64], value: npt.NDArray[np.float64], flags: npt.NDArray[np.int64],
    now: float | None = None,
) -> npt.NDArray[np.int8]:
    """Check the numbers; return the metric codes."""
    if not (np.isfinite(t).all() and np.isfinite(value).all()):
        raise RecordError("group holds a non-finite time or value")
    # The wire's bounds (the bridge refuses the rest): a time beyond them from another producer would
    # become its device's watermark and the patient's last reading, so that every real reading after
    # it is dropped as already seen and staleness never fires; and 1e300 s overflows InfluxDB's ns.
    if ((t < MIN_SAMPLE_EPOCH_S) | (t > MAX_EPOCH_S)).any():
        raise RecordError("group holds a time before 2000-01-01 or after 2100-01-01")
    if now is not None and (t > now + MAX_FUTURE_SKEW_S + CLOCK_MARGIN_S).any():
        raise RecordError("group holds a time in the future (not from the bridge?)")
    codes = metric_codes(metric)
    if ((value < _LO[codes]) | (value > _HI[codes])).any():
        raise RecordError("group holds a value outside its metric's plausible range")
    if ((flags < 0) | (flags & ~ALL_FLAGS != 0) | (flags & RANGE_FLAGS == RANGE_FLAGS)).any():
        raise RecordError("group holds invalid flags")
    return codes


def decode_record(value: bytes, now: float | None = None) -> list[Group]:
    """The groups of one record, or :class:`RecordError` with the reason (the reference decoder:
    :func:`decode_records` does the same column-wise and falls back to this). ``now`` (the reader's
    clock, epoch s), if given, also refuses times further ahead than the bridge lets through."""
    doc = _load(value)
    patient = doc.get("patient")
    if patient is not None:
        assert isinstance(patient, str)
        return [_group(patient, g, now) for g in doc["groups"]]
    return [_group(None, g, now) for g in doc["groups"]]


def decode_records(values: list[bytes], now: float | None = None) -> Decoded:
    """Decode a micro-batch; bad records are collected with their reason, never raised.

    The fast path checks the structure of every record in Python (keys, identifiers, equal column
    lengths) but converts and checks the numbers of the whole batch at once, column-wise; a batch
    in which some record fails that is decoded again record by record to find which.
    """
    cols = _Columns()
    rejected: list[tuple[bytes, str]] = []
    for value in values:
        try:
            cols.add(value)
        except RecordError as exc:
            rejected.append((value, str(exc)))
    try:
        out = cols.finish(now)
    except RecordError:
        return _decode_one_by_one(values, now)
    out.rejected = rejected
    return out


def _decode_one_by_one(values: list[bytes], now: float | None) -> Decoded:
    groups: list[Group] = []
    rejected: list[tuple[bytes, str]] = []
    for value in values:
        try:
            groups += decode_record(value, now)
        except RecordError as exc:
            rejected.append((value, str(exc)))
    if not groups:
        return Decoded(rejected=rejected)
    return Decoded(
        patient=[g.patient for g in groups], device=[g.device for g in groups], source=[g.source for g in groups],
        size=np.fromiter((len(g.t) for g in groups), dtype=np.int64, count=len(groups)),
        metric=(metric := [m for g in groups for m in g.metric]), metric_code=metric_codes(metric),
        t=np.concatenate([g.t for g in groups]),
        value=np.concatenate([g.value for g in groups]), flags=np.concatenate([g.flags for g in groups]),
        rejected=rejected,
    )


class _Columns:
    """The fast path of :func:`decode_records`: structure per group, identifiers and numbers per batch."""

    def __init__(self) -> None:
        self.patient: list[str] = []
        self.device: list[str] = []
        self.source: list[str] = []
        self.size: list[int] = []
        self.metric: list[str] = []
        self.t: list[Any] = []
        self.value: list[Any] = []
        self.flags: list[Any] = []

    def add(self, value: bytes) -> None:
        """The groups of one record (all or none of them), or :class:`RecordError`."""
        doc = _load(value)
        record_patient = doc.get("patient")
        try:
            staged = [_shape(raw, record_patient) for raw in doc["groups"]]
        except RecordError:  # refused: the reason is the full check's (it may find an earlier fault)
            for raw in doc["groups"]:
                _structure(raw, record_patient)
            raise
        for patient, device, source, metric, t, v, f in staged:
            self.patient.append(patient)
            self.device.append(device)
            self.source.append(source)
            self.size.append(len(metric))
            self.metric += metric
            self.t += t
            self.value += v
            self.flags += f

    def finish(self, now: float | None = None) -> Decoded:
        """The columns as arrays, checked; :class:`RecordError` if any identifier, metric name or
        number is bad (which record is then for the slow path to find)."""
        if not self.size:
            return Decoded()
        # The identifiers and metric names of every group, checked once per batch (_shape left them).
        ids: list[object]
        try:
            ids = [*set(self.patient), *set(self.device), *set(self.source)]
        except TypeError:  # a list or a dict where an identifier belongs
            ids = [None]
        if not all_valid_ids(ids) or not _known_metrics(self.metric):
            raise RecordError("a group has an invalid identifier or metric")
        t = _numbers(self.t, _NUMBER_TYPES, np.float64)
        value = _numbers(self.value, _NUMBER_TYPES, np.float64)
        flags = _numbers(self.flags, _INTEGER_TYPES, np.int64)  # flat, and as long as metric (_shape)
        codes = _check_values(self.metric, t, value, flags, now)
        return Decoded(
            patient=self.patient, device=self.device, source=self.source,
            size=np.asarray(self.size, dtype=np.int64), metric=self.metric, metric_code=codes,
            t=t, value=value, flags=flags.astype(np.int16),
        )


_RECORD_KEYS: Final = frozenset({"v", "patient", "groups"})


def _load(value: bytes) -> dict[str, Any]:
    """A record's JSON with its top-level shape checked (the groups are the caller's)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"record is not JSON: {exc}") from exc
    doc = check_envelope(doc, what="record", version=SCHEMA_VERSION, error=RecordError, keys=_RECORD_KEYS)
    groups = doc.get("groups")
    if not isinstance(groups, list) or not groups:
        raise RecordError("record needs a non-empty list of groups")
    if "patient" in doc and not is_valid_id(doc["patient"]):
        raise RecordError("record needs a valid patient")
    return doc
