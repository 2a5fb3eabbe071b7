"""The detector engine: micro-batches in, alert events out, per-patient state in and out.

One :class:`Engine` runs every rule of a :class:`~detectors.rules.RuleSet` over batches of many
patients. It is the single entry point shared by the Faust worker and ``rpm backtest``::

    engine = Engine(ruleset, enrolled=roster)       # enrolled: watched by staleness rules
    events = engine.process(engine.batch(patients, metrics, t, value, flags, devices), now=time.time())
    events += engine.tick(now)                       # escalations and staleness
    events += engine.acknowledge(alert_id, by="nurse-3", at=now)
    for patient in engine.dirty_patients():          # checkpoint what changed
        table[patient] = engine.export_state(patient)
    changed = engine.dirty_patients()                # or packed, all at once (the worker)
    table.update(zip(changed, engine.export_packed(changed)))

The stream is at-least-once, so :meth:`Engine.process` drops duplicates and anything not newer
than the last sample it processed for that patient, metric and *device*: redelivered input
changes nothing and creates no alert, while a second device of the same metric (a glucose meter
beside a CGM) is not dropped for being behind the first one. Each rule then sees its metric's
samples (of its devices, with ``device_prefix`` / ``exclude_device_prefix``) in event-time order
and ignores any not newer than the last one it processed for the patient. Alert ids are deterministic
(:func:`~detectors.events.alert_id`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from detectors import packed
from detectors.base import Detector
from detectors.baseline import BaselineDetector
from detectors.batch import BoolArray, FloatArray, IntArray, MetricView, PatientRegistry, SampleBatch, metric_codes
from detectors.columns import StateColumn, opt_float
from detectors.const import (
    ACKNOWLEDGED,
    CLEARED,
    ESCALATED,
    FLAG_ABOVE_RANGE,
    FLAG_BELOW_RANGE,
    METRIC_NAMES,
    N_METRICS,
    RAISED,
    RANGE_FLAGS,
    SEVERITY_NAMES,
    STATE_VERSION,
)
from detectors.episodes import RAISE, Transitions
from detectors.errors import StateError
from detectors.events import AlertEvent, AlertState, SeverityName, alert_id
from detectors.forecast import ForecastDetector
from detectors.rate import RateDetector
from detectors.rhythm import RhythmDetector
from detectors.rules import (
    BaselineRule,
    ForecastRule,
    RateRule,
    RhythmRule,
    Rule,
    RuleSet,
    StalenessRule,
    ThresholdRule,
)
from detectors.staleness import StalenessDetector
from detectors.threshold import ThresholdDetector

# Watermark keys pack (patient, metric, device) into one int64: room for 2**20 devices.
_DEVICE_BITS: Final = 20
_MAX_DEVICES: Final = 1 << _DEVICE_BITS
_PATIENT_BITS: Final = 40  # 2 bits of metric + 40 of patient + 20 of device fit an int64
_MIN_CAPACITY: Final = 64  # per-patient arrays grow to at least this many slots
_RECENT_MIN: Final = 4096  # the recent level of watermarks is merged into the large one beyond this (and 1/64 of it)
UNNAMED_DEVICE: Final = ""


def build_detector(rule: Rule) -> Detector:
    """The detector for ``rule``, by rule type (subclasses before ``ThresholdRule``)."""
    if isinstance(rule, RateRule):
        return RateDetector(rule)
    if isinstance(rule, ForecastRule):
        return ForecastDetector(rule)
    if isinstance(rule, BaselineRule):
        return BaselineDetector(rule)
    if isinstance(rule, RhythmRule):
        return RhythmDetector(rule)
    if isinstance(rule, ThresholdRule):
        return ThresholdDetector(rule)
    if isinstance(rule, StalenessRule):
        return StalenessDetector(rule)
    raise TypeError(f"no detector for rule type {type(rule).__name__}")


@dataclass(frozen=True, slots=True)
class Conflicts:
    """Samples of one batch that repeat an earlier sample's patient, metric, device and time with
    another value or other flags: ``dropped[i]`` (a position in the batch given to
    :meth:`Engine.process`) was not judged, ``kept[i]`` (the first of them) was. Whoever stores the
    batch must leave the dropped samples out (InfluxDB keeps the last write of a series and time,
    and merges its fields), or the chart and the alerts disagree."""

    kept: IntArray
    dropped: IntArray


class Engine:
    """All detectors of a rule set over all patients; see the module docstring for the life cycle."""

    def __init__(
        self,
        rules: RuleSet,
        *,
        registry: PatientRegistry | None = None,
        enrolled: Iterable[str] = (),
        realarm_after: Mapping[str, Sequence[float | None]] | None = None,
    ) -> None:
        self._rules = rules
        self._registry = registry if registry is not None else PatientRegistry()
        # Devices get dense codes like patients; code 0 is the unnamed device (no device column).
        self._devices = PatientRegistry([UNNAMED_DEVICE])
        self._detectors: list[Detector] = [build_detector(rule) for rule in rules.rules]
        self._by_name = {det.name: i for i, det in enumerate(self._detectors)}
        self._rule_ids = [packed.rule_id(det.name) for det in self._detectors]
        self._by_id = {rid: i for i, rid in enumerate(self._rule_ids)}
        if len(self._by_id) != len(self._detectors):
            raise ValueError("two rules of the rule set have the same packed-state id (a hash collision)")
        self._device_bytes: list[bytes] = []  # UTF-8 device ids by code, for packed records
        self._fresh_rows: list[FloatArray] = []  # per rule, the entries of a patient it has no state for
        self._layouts: list[packed.Layout] = []  # per rule, which of its entries must be whole numbers
        # Per rule, seconds after an acknowledgement at which a still-open alert alarms again, by
        # severity (info, warning, critical; inf: never): acknowledged is not resolved.
        self._realarm = [np.array([np.inf if s is None else float(s) for s in
                                   (realarm_after or {}).get(det.name, (None, None, None))], dtype=np.float64)
                         for det in self._detectors]
        # "Already seen" watermarks per (patient, metric, device): sorted packed keys and times.
        self._seen_key: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._seen_t: FloatArray = np.zeros(0)
        # Watermarks of patients imported since the arrays above were last sorted (new patients only:
        # a reload imports every patient, and inserting each into the sorted arrays is O(patients)).
        self._unsorted_marks: list[tuple[list[int], list[float]]] = []
        # Keys first seen lately (sorted, none of them in _seen_key): a batch that brings new patients,
        # devices or metrics inserts its new keys here, and this small level is merged into the large one
        # when it has grown (_fold_recent), so a batch does not copy every watermark (O(patients)).
        self._recent_key: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._recent_t: FloatArray = np.zeros(0)
        self._prefix_match: dict[str, BoolArray] = {}
        self._multi_device = False
        self._rank: IntArray = np.zeros(0, np.int64)  # the current batch has a patient with two devices of one metric
        self._dirty: BoolArray = np.zeros(0, np.bool_)
        # The last batch's conflicting duplicates (see :attr:`conflicts`).
        self._conflicts = Conflicts(np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._synced = 0  # registered patients whose slots (and overrides) are in place
        # Per rule, the patients it has state for (anything but fresh): export_state leaves the
        # others out, which import_state reads as fresh. A heart-rate-only patient's checkpoint
        # then carries no glucose rules; checkpoints are on the worker's hot path.
        self._touched: BoolArray = np.zeros((len(self._detectors), 0), np.bool_)
        # Open alerts both ways, so acknowledgements find their patient and rule.
        self._open: dict[str, tuple[int, int]] = {}
        self._open_id: dict[tuple[int, int], str] = {}
        self._sync()
        spare = np.array([self._spare_slot()])  # nobody's: each rule's fresh state, read once
        self._fresh_rows = [packed.gather(det.state_columns(), spare)[0] for det in self._detectors]
        self._layouts = [packed.Layout.of(det.state_columns()) for det in self._detectors]
        self.enroll(enrolled)

    @property
    def rules(self) -> RuleSet:
        """The rules this engine runs."""
        return self._rules

    @property
    def registry(self) -> PatientRegistry:
        """The patient id ↔ index map that :class:`SampleBatch` indices refer to."""
        return self._registry

    @property
    def devices(self) -> PatientRegistry:
        """The device id ↔ index map that :attr:`SampleBatch.device` refers to (0: unnamed)."""
        return self._devices

    def enroll(self, patients: Iterable[str], *, at: float | None = None) -> None:
        """Watch ``patients`` with every staleness rule even if they never send anything.

        Their silence clock starts ``at`` (epoch s), or at the next :meth:`tick` when ``None``;
        patients who already sent data keep their own clock. Enrolment is part of the exported state.
        """
        ids = list(patients)
        if not ids:
            return
        index = self._registry.indices(ids)
        self._sync()
        for k, det in enumerate(self._detectors):
            if isinstance(det, StalenessDetector):
                det.enroll(index, at)
                self._touched[k, index] = True
        self._dirty[index] = True

    # -- input -----------------------------------------------------------------------------------

    def batch(
        self,
        patients: Sequence[str] | npt.NDArray[Any],
        metrics: Sequence[str] | npt.NDArray[Any],
        t: Sequence[float] | FloatArray,
        value: Sequence[float] | FloatArray,
        flags: Sequence[int] | npt.NDArray[Any] | None = None,
        devices: Sequence[str] | npt.NDArray[Any] | None = None,
    ) -> SampleBatch:
        """A :class:`SampleBatch` from patient ids, metric names (or codes) and device ids, registering new ones."""
        codes = np.asarray(metrics)
        if codes.dtype.kind not in "iu":
            codes = metric_codes(metrics)
        n = len(codes)
        return SampleBatch(
            patient=self._registry.indices(patients),
            metric=codes,
            t=np.asarray(t, dtype=np.float64),
            value=np.asarray(value, dtype=np.float64),
            flags=np.zeros(n, np.int16) if flags is None else np.asarray(flags, dtype=np.int16),
            device=None if devices is None else self.device_codes(devices),
        )

    @property
    def conflicts(self) -> Conflicts:
        """The last :meth:`process` call's conflicting duplicates: samples of its batch with the
        patient, metric, device and time of an earlier one but another value or flags. The first is
        judged (and kept), the later ones are not; none in most batches."""
        return self._conflicts

    def device_codes(self, devices: Sequence[str] | npt.NDArray[Any]) -> npt.NDArray[np.int32]:
        """Dense codes of device ids (registering new ones; ``""`` is the unnamed device, code 0)."""
        codes = self._devices.indices(devices)
        if len(self._devices) > _MAX_DEVICES:
            raise ValueError(f"more than {_MAX_DEVICES} distinct devices in one engine")
        return codes.astype(np.int32)

    def process(self, batch: SampleBatch, *, now: float | None = None) -> list[AlertEvent]:
        """Run every rule over ``batch``; return the alert events it causes, in event-time order.

        Samples may be in any order and of any patients registered in :attr:`registry`. Dropped
        before detection: duplicates of (patient, metric, device, t) (the first wins), samples not
        newer than the last processed one of that patient, metric and device, and samples with a
        non-finite time or unknown metric or device. Samples with a quality flag or a non-finite
        value advance that watermark but are ignored by the detectors.

        ``now`` is the processing time (wall clock) in the live stream: alerts raised by this batch
        escalate ``escalate_after`` after the later of their event time and ``now``. Backtests omit it.
        """
        self._sync()
        self._conflicts = Conflicts(np.zeros(0, np.int64), np.zeros(0, np.int64))
        fresh = self._fresh(batch)
        if len(fresh) == 0:
            return []
        self._dirty[fresh.patient] = True
        usable, beyond = _usable(fresh)
        views: dict[tuple[int, str | None, str | None, bool], MetricView] = {}
        out: list[tuple[tuple[float, str, int], AlertEvent]] = []
        for index, det in enumerate(self._detectors):
            # Without a range flag in the batch both kinds of rule see the same samples: one view.
            devices = (det.device_prefix, det.exclude_device_prefix)
            key = (det.metric_code, *devices, det.beyond_range and beyond is not None)
            view = views.get(key)
            if view is None:
                view = views[key] = self._view(fresh, usable, beyond, key)
            self._touched[index, view.group_patient] = True
            out.extend(self._transition_events(index, det.process(view, now)))
        return _in_order(out)

    def _view(
        self,
        fresh: SampleBatch,
        usable: BoolArray,
        beyond: FloatArray | None,
        key: tuple[int, str | None, str | None, bool],
    ) -> MetricView:
        """Usable samples of one metric (from devices matching ``prefix`` and not ``exclude``), by patient then time.

        Samples of several devices of one patient are merged in time order; at equal times the
        device whose id sorts first wins (not registration order, which a restore can change), so
        each rule sees strictly increasing times. Samples beyond the device's measuring range
        (``beyond``: +1 above, -1 below, 0 in range) are +inf / -inf for rules that compare values
        (``beyond_range``) and left out for the others.
        """
        code, prefix, exclude, beyond_range = key
        # The batch is sorted metric-major: the metric's samples are one contiguous slice.
        lo, hi = np.searchsorted(fresh.metric, (code, code + 1))
        rows = slice(int(lo), int(hi))
        take = usable[rows]
        v = fresh.value[rows]
        if beyond is not None:
            side = beyond[rows]
            if beyond_range:
                v = np.where(side != 0, np.copysign(np.inf, side), v)
            else:
                take = take & (side == 0)
        if prefix is not None:
            take = take & self._matching(prefix)[fresh.devices[rows]]
        if exclude is not None:
            take = take & ~self._matching(exclude)[fresh.devices[rows]]
        p, t, d = fresh.patient[rows], fresh.t[rows], fresh.devices[rows]
        if not take.all():
            p, t, v, d = p[take], t[take], v[take], d[take]
        if self._multi_device and len(p) > 1:
            order = np.lexsort((self._device_rank()[d], t, p))
            p, t, v, d = p[order], t[order], v[order], d[order]
            tie = np.zeros(len(p), np.bool_)
            tie[1:] = (p[1:] == p[:-1]) & (t[1:] == t[:-1])
            p, t, v, d = p[~tie], t[~tie], v[~tie], d[~tie]
        return MetricView.from_sorted(p, t, v, d)

    def _device_rank(self) -> IntArray:
        """Per device code: the rank of its id in sorted order (recomputed when devices register)."""
        if len(self._rank) != len(self._devices):
            order = np.argsort(np.asarray(self._devices.ids(), dtype=object), kind="stable")
            self._rank = np.empty(len(order), np.int64)
            self._rank[order] = np.arange(len(order))
        return self._rank

    def _matching(self, prefix: str) -> BoolArray:
        """Per device code: whether its id starts with ``prefix`` (grown as devices register)."""
        match = self._prefix_match.get(prefix, np.zeros(0, np.bool_))
        n = len(self._devices)
        if len(match) < n:  # only the devices registered since (copying every id per batch is O(patients))
            ids = self._devices.ids_since(len(match))
            extra = np.fromiter((i.startswith(prefix) for i in ids), np.bool_, len(ids))
            match = self._prefix_match[prefix] = np.concatenate((match, extra))
        return match

    def _fresh(self, batch: SampleBatch) -> SampleBatch:
        """``batch`` sorted by (patient, metric, device, t) without duplicates and already-seen samples."""
        # Unsigned views turn "0 <= x < n" into one comparison each.
        ok = (
            np.isfinite(batch.t)
            & (batch.metric.view(np.uint8) < N_METRICS)
            & (batch.patient.view(np.uint64) < len(self._registry))
            & (batch.devices.view(np.uint32) < len(self._devices))
        )
        taken: IntArray | None = None  # the positions in the caller's batch of those left, if not all
        if not ok.all():
            taken = np.flatnonzero(ok)
            batch = batch.take(ok)
        if len(batch) == 0:
            return batch
        key = _pack(batch.patient, batch.metric, batch.devices)
        batch, key, same, order = _sorted(batch, key)
        t = batch.t
        starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
        lengths = np.diff(np.append(starts, len(t)))
        # One watermark lookup per (patient, metric, device) group; times are sorted within a group,
        # so only groups whose first sample is not newer need a per-sample look.
        marks = self._watermarks(key[starts])
        keep: BoolArray | None = None
        if bool((t[starts] <= marks).any()):
            keep = ~(t <= np.repeat(marks, lengths))  # NaN watermark (never seen) compares false
        duplicate = same & (t[1:] == t[:-1])
        if duplicate.any():
            self._conflicts = _conflicting(batch, duplicate, order, taken)
            keep = np.ones(len(t), np.bool_) if keep is None else keep
            keep[1:] &= ~duplicate
        if keep is not None and not keep.all():
            batch, key = batch.take(keep), key[keep]
            if len(key) == 0:
                return batch
            last = np.flatnonzero(np.append(key[1:] != key[:-1], True))
        else:
            last = np.append(starts[1:] - 1, len(t) - 1)
        self._remember(key[last], batch.t[last])
        self._multi_device = _several_devices(key)
        return batch

    def _sort_marks(self) -> None:
        """Merge the watermarks imported for new patients into the sorted arrays (one sort for all)."""
        if not self._unsorted_marks:
            return
        keys = np.concatenate([self._seen_key, *(np.asarray(k, np.int64) for k, _ in self._unsorted_marks)])
        times = np.concatenate([self._seen_t, *(np.asarray(t, np.float64) for _, t in self._unsorted_marks)])
        self._unsorted_marks = []
        order = np.argsort(keys, kind="stable")
        self._seen_key, self._seen_t = keys[order], times[order]

    def _fold_recent(self) -> None:
        """Merge the recent level of watermarks into the large one (one copy of each array)."""
        if len(self._recent_key) == 0:
            return
        at = np.searchsorted(self._seen_key, self._recent_key)
        self._seen_key = np.insert(self._seen_key, at, self._recent_key)
        self._seen_t = np.insert(self._seen_t, at, self._recent_t)
        self._recent_key, self._recent_t = np.zeros(0, np.int64), np.zeros(0)

    def _watermarks(self, keys: npt.NDArray[np.int64]) -> FloatArray:
        """The last seen time of each packed key (NaN: never seen)."""
        self._sort_marks()
        out = _lookup(self._seen_key, self._seen_t, keys)
        if len(self._recent_key):
            found, t = _lookup_found(self._recent_key, self._recent_t, keys)
            out = np.where(found, t, out)
        return out

    def _remember(self, keys: npt.NDArray[np.int64], times: FloatArray) -> None:
        """Advance the watermarks of ``keys`` (sorted, unique) to ``times``."""
        if len(keys) == 0:
            return
        self._sort_marks()
        at = np.searchsorted(self._seen_key, keys)
        found = at < len(self._seen_key)
        found[found] = self._seen_key[at[found]] == keys[found]
        self._seen_t[at[found]] = times[found]
        if found.all():
            return
        keys, times = keys[~found], times[~found]
        at = np.searchsorted(self._recent_key, keys)
        found = at < len(self._recent_key)
        found[found] = self._recent_key[at[found]] == keys[found]
        self._recent_t[at[found]] = times[found]
        if not found.all():
            self._recent_key = np.insert(self._recent_key, at[~found], keys[~found])
            self._recent_t = np.insert(self._recent_t, at[~found], times[~found])
            # Merged once it holds about the square root of what a batch copied before (at least
            # _RECENT_MIN): each batch then copies the small level, and the large one only now and then.
            if len(self._recent_key) > max(_RECENT_MIN, len(self._seen_key) >> 6):
                self._fold_recent()

    def _patient_marks(self, p: int) -> tuple[npt.NDArray[np.int64], FloatArray, IntArray]:
        """The watermark keys and times of patient ``p`` (and their positions in the sorted arrays)."""
        # Keys are metric-major: one range per metric, all bounds found in one searchsorted.
        self._sort_marks()
        self._fold_recent()
        bounds = np.searchsorted(self._seen_key, self._mark_bounds(p)).tolist()
        where = np.concatenate([np.arange(bounds[2 * m], bounds[2 * m + 1]) for m in range(N_METRICS)]).astype(np.int64)
        return self._seen_key[where], self._seen_t[where], where

    @staticmethod
    def _mark_bounds(p: int) -> npt.NDArray[np.int64]:
        """Packed keys (patient p, metric m, device 0) and (p + 1, m, 0) for every metric, interleaved."""
        return np.array([_pack_one(q, m, 0) for m in range(N_METRICS) for q in (p, p + 1)], dtype=np.int64)

    # -- time and people -------------------------------------------------------------------------

    def tick(self, now: float) -> list[AlertEvent]:
        """Time-driven transitions at ``now`` (epoch s): staleness, escalation of unacknowledged alerts,
        and a new ``raised`` (same alert id; its escalation starts again) for an acknowledged alert
        still open past its rule's re-alarm interval (``realarm_after``).

        Escalation deadlines are the raise's event time (or its processing time, if later and given
        to :meth:`process`) + the level's ``escalate_after``; staleness compares ``now`` with sample
        times. Call this with wall-clock time in the live stream and with event time in backtests.
        """
        self._sync()
        out: list[tuple[tuple[float, str, int], AlertEvent]] = []
        for index, det in enumerate(self._detectors):
            tr = det.tick(now)
            if len(tr):
                self._dirty[tr.patient] = True
                self._touched[index, tr.patient] = True
            out.extend(self._transition_events(index, tr))
            for p in det.episodes.escalate(now).tolist():
                self._dirty[p] = True
                self._touched[index, p] = True
                out.append(self._keyed(index, p, ESCALATED, now, np.nan))
            if np.isfinite(self._realarm[index]).any():
                for p in det.episodes.realarm(now, self._realarm[index]).tolist():
                    self._dirty[p] = True
                    self._touched[index, p] = True
                    out.append(self._keyed(index, p, RAISED, now, np.nan))  # same alert id: raised again
        return _in_order(out)

    def acknowledge(self, alert_id: str, by: str, at: float) -> list[AlertEvent]:
        """A person acknowledged the alert: it will not escalate (until it worsens to a higher level).

        Returns the ``acknowledged`` event, or nothing if the alert is not open or already
        acknowledged (acknowledgements are redelivered too).
        """
        where = self._open.get(alert_id)
        if where is None:
            return []
        index, p = where
        if not self._detectors[index].episodes.acknowledge(p, at):
            return []
        self._dirty[p] = True
        self._touched[index, p] = True
        return [self._keyed(index, p, ACKNOWLEDGED, at, np.nan, by=by)[1]]

    def alert_patient(self, alert_id: str) -> str | None:
        """The patient of the open alert ``alert_id`` (None: no open alert of a loaded patient has it).

        An acknowledgement names a patient and an alert; :meth:`acknowledge` goes by the alert alone,
        so the caller checks that they agree (a patient's device may only acknowledge its own alerts)."""
        where = self._open.get(alert_id)
        return None if where is None else self._registry.id_of(where[1])

    def open_alerts(self) -> list[AlertEvent]:
        """A snapshot of every open alert: state ``raised``, ``acknowledged`` or ``escalated``.

        ``time`` is when it was (last) raised; for a nurse station that (re)connects.
        """
        out = []
        for index, p in self._open.values():
            episodes = self._detectors[index].episodes
            state: AlertState = RAISED
            if episodes.acked[p]:
                state = ACKNOWLEDGED
            elif episodes.escalated[p]:
                state = ESCALATED
            out.append(self._keyed(index, p, state, float(episodes.raised_at[p]), np.nan))
        return _in_order(out)

    # -- state -----------------------------------------------------------------------------------

    def dirty_patients(self) -> list[str]:
        """Patients whose state changed since the last call (to checkpoint); resets the set."""
        changed = np.flatnonzero(self._dirty)
        self._dirty[changed] = False
        return [self._registry.id_of(int(p)) for p in changed]

    def export_state(self, patient_id: str) -> dict[str, Any]:
        """Everything the engine remembers about ``patient_id``, as a JSON-able dict.

        Shape: ``{"v": 1, "last_t": {metric: t}, "devices": {device: {metric: t}}, "rules": {rule:
        {...}}}`` (``last_t``: the unnamed device; ``devices`` only when named devices were seen);
        opaque to callers, to be stored (e.g. in a Faust table keyed by patient id) and given back
        to :meth:`import_state`.
        """
        p = self._registry.get(patient_id)
        if p is None:
            return {"v": STATE_VERSION, "last_t": {}, "rules": {}}
        keys, times, _ = self._patient_marks(p)
        last_t: dict[str, float] = {}
        devices: dict[str, dict[str, float]] = {}
        for key, t in zip(keys.tolist(), times.tolist(), strict=True):
            metric = METRIC_NAMES[key >> (_DEVICE_BITS + _PATIENT_BITS)]
            device = self._devices.id_of(key & (_MAX_DEVICES - 1))
            if device == UNNAMED_DEVICE:
                last_t[metric] = t
            else:
                devices.setdefault(device, {})[metric] = t
        record: dict[str, Any] = {"v": STATE_VERSION, "last_t": last_t}
        if devices:
            record["devices"] = devices
        touched = self._touched[:, p].tolist()
        record["rules"] = {
            det.name: det.export_patient(p) for det, t in zip(self._detectors, touched, strict=True) if t
        }
        return record

    def import_state(self, patient_id: str, state: Mapping[str, Any]) -> None:
        """Restore a patient's state from :meth:`export_state` (e.g. after a Kafka rebalance).

        Rules no longer in the rule set are ignored; rules missing from the record start fresh.
        Raises :class:`~detectors.errors.StateError` for a malformed record (and changes nothing).
        """
        rules, seen = _checked_record(state)
        backup = self.export_state(patient_id) if patient_id in self._registry else None
        try:
            self._import(patient_id, rules, seen)
        except StateError:
            if backup is not None:
                self._import(patient_id, backup["rules"], _checked_record(backup)[1])
            else:  # a patient new to this engine: fresh, not half imported
                self._import(patient_id, {}, {UNNAMED_DEVICE: {}})
            raise

    def _import(self, patient_id: str, rules: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]]) -> None:
        new = patient_id not in self._registry
        p = self._registry.index_of(patient_id)
        self._sync()
        self._forget_open(p)
        self._import_marks(p, seen, new=new)
        for index, det in enumerate(self._detectors):
            record = rules.get(det.name)
            if isinstance(record, Mapping):
                det.import_patient(p, record)
            else:
                det.reset_patient(p)
            self._touched[index, p] = isinstance(record, Mapping)
            if det.episodes.level[p] > 0:
                self._remember_open(index, p)

    def _import_marks(self, p: int, seen: Mapping[str, Mapping[str, Any]], *, new: bool = False) -> None:
        """Replace patient ``p``'s watermarks with ``seen`` (device id → metric → time); ``new``: ``p``
        was registered just now, so has none yet (they are sorted in later, with other new patients')."""
        keys, times = [], []
        for device, marks in sorted(seen.items()):
            d = int(self.device_codes([device])[0])
            for code, name in enumerate(METRIC_NAMES):
                t = opt_float(marks, name)
                if not np.isnan(t):
                    keys.append(int(_pack_one(p, code, d)))
                    times.append(t)
        if new:
            if keys:
                self._unsorted_marks.append((keys, times))
            return
        _, _, where = self._patient_marks(p)
        self._seen_key = np.delete(self._seen_key, where)
        self._seen_t = np.delete(self._seen_t, where)
        if keys:
            order = np.argsort(keys)
            new_keys, new_t = np.asarray(keys, np.int64)[order], np.asarray(times)[order]
            at = np.searchsorted(self._seen_key, new_keys)
            self._seen_key = np.insert(self._seen_key, at, new_keys)
            self._seen_t = np.insert(self._seen_t, at, new_t)

    def export_packed(self, patient_ids: Sequence[str]) -> list[bytes]:
        """:meth:`export_state` of each of ``patient_ids`` as a packed record (:mod:`detectors.packed`),
        built for all of them at once: the worker's checkpoints. The same content as :meth:`export_state`
        (rules the patient never touched are left out), given back to :meth:`import_packed`."""
        self._sync()
        known = [(i, p) for i, p in enumerate(self._registry.get(pid) for pid in patient_ids) if p is not None]
        out = [packed.EMPTY] * len(patient_ids)
        if not known:
            return out
        rows = np.array([p for _, p in known], dtype=np.int64)
        marks = self._packed_marks(rows)
        touched = self._touched[:, rows]
        # Each rule's entries of the patients with state in it only (a CGM's rules: its wearers').
        where = {k: np.flatnonzero(touched[k]) for k in np.flatnonzero(touched.any(axis=1)).tolist()}
        state = {k: packed.gather(self._detectors[k].state_columns(), rows[at]) for k, at in where.items()}
        # Patients with state in the same rules (usually: the same devices) share one encoding.
        for members, rules in _same_columns(touched):
            blocks = [state[k] if len(where[k]) == len(members) else state[k][np.searchsorted(where[k], members)]
                      for k in rules]
            table, masks, m, values, offsets = packed.encode_rules(
                len(members), [self._rule_ids[k] for k in rules], blocks)
            for j, at in enumerate(members.tolist()):
                body = b"".join((packed.head(len(marks[at])), *marks[at], table, masks[j * m: (j + 1) * m],
                                 values[offsets[j]: offsets[j + 1]]))
                out[known[at][0]] = packed.sealed(body)
        return out

    def _packed_marks(self, rows: IntArray) -> list[list[bytes]]:
        """Each patient's watermarks (``rows``: patient indices), encoded for a packed record."""
        self._sort_marks()
        where, counts = _cells(self._seen_key, rows)
        keys_a, times_a = self._seen_key[where], self._seen_t[where]
        if len(self._recent_key):  # both levels, in key order within each (patient, metric) cell
            where_r, counts_r = _cells(self._recent_key, rows)
            cells = np.arange(len(counts))
            cell = np.concatenate((np.repeat(cells, counts), np.repeat(cells, counts_r)))
            keys_a = np.concatenate((keys_a, self._recent_key[where_r]))
            times_a = np.concatenate((times_a, self._recent_t[where_r]))
            order = np.lexsort((keys_a, cell))
            keys_a, times_a, counts = keys_a[order], times_a[order], counts + counts_r
        keys, times = keys_a.tolist(), times_a.tolist()
        if len(self._device_bytes) < len(self._devices):
            self._device_bytes += [d.encode() for d in self._devices.ids_since(len(self._device_bytes))]
        names = self._device_bytes
        per_patient = counts.reshape(len(rows), N_METRICS).sum(axis=1).tolist()
        out, at = [], 0
        for n in per_patient:
            out.append([packed.mark(key >> (_DEVICE_BITS + _PATIENT_BITS), t, names[key & (_MAX_DEVICES - 1)])
                        for key, t in zip(keys[at: at + n], times[at: at + n], strict=True)])
            at += n
        return out

    def import_packed(self, patient_id: str, raw: bytes) -> None:
        """Restore a patient's state from a packed record of :meth:`export_packed`.

        Raises :class:`~detectors.errors.StateError` (and changes nothing) for a record that is not
        intact (:func:`detectors.packed.decode`), has an unknown metric, a repeated watermark or rule,
        a rule whose state has another size than this rule set's, an entry that does not fit its
        array, or values a version 1 record could not hold either (:meth:`import_state` checks them).
        """
        record = packed.decode(raw)
        seen: dict[str, dict[str, float]] = {}
        for metric, device, t in record.marks:
            if metric >= N_METRICS:
                raise StateError(f"packed state record has unknown metric code {metric}")
            marks = seen.setdefault(device, {})
            if METRIC_NAMES[metric] in marks:
                raise StateError("packed state record repeats a watermark")
            marks[METRIC_NAMES[metric]] = t
        rules: dict[str, dict[str, Any]] = {}
        for rid, row in record.rules:
            index = self._by_id.get(rid)
            if index is None:
                continue  # a rule no longer in the rule set (as with version 1 records)
            name = self._detectors[index].name
            if name in rules:
                raise StateError(f"packed state record repeats rule {name}")
            rules[name] = self._row_record(index, self._widened(index, row))
        last_t = seen.pop(UNNAMED_DEVICE, {})
        self.import_state(patient_id, {"v": STATE_VERSION, "last_t": last_t, "devices": seen, "rules": rules})

    def import_packed_many(self, records: Sequence[tuple[str, bytes]]) -> dict[str, StateError]:
        """:meth:`import_packed` of many ``(patient id, record)`` pairs (a reload), checked and written
        together: the same result, and the same error for the same record, as importing them one by one
        in order (a record that fails changes nothing; a new patient's stays fresh). Returns the errors
        by patient id.

        The records of patients new to this engine (each once in ``records``) are decoded, their
        watermarks checked, and each rule's entries of all of them checked at once: the layout (whole
        numbers where the arrays hold them) and :meth:`~detectors.base.Detector.settle` (what an export
        and import through a version 1 record would leave unchanged); those that pass are written
        straight into their slots. Every other record takes :meth:`import_packed` (its checks raise
        the StateError, or it normalizes what settle does not vouch for).
        """
        self._sync()
        count = collections.Counter(pid for pid, _ in records)
        slow: list[int] = []
        fast: list[tuple[int, list[int], list[str], list[float]]] = []  # record, watermark metrics, devices, times
        by_rule: list[list[tuple[int, FloatArray]]] = [[] for _ in self._detectors]  # (fast record, entries)
        for i, (pid, raw) in enumerate(records):
            parsed = None if count[pid] > 1 or pid in self._registry else self._parse_packed(raw)
            if parsed is None:
                slow.append(i)
                continue
            metrics, devices, times, rows = parsed
            for index, row in rows:
                by_rule[index].append((len(fast), row))
            fast.append((i, metrics, devices, times))
        good = np.ones(len(fast), np.bool_)
        settled: list[tuple[IntArray, FloatArray]] = []
        for index, entries in enumerate(by_rule):
            at = np.array([j for j, _ in entries], np.int64)
            block = np.array([row for _, row in entries], np.float64).reshape(len(entries), self._layouts[index].width)
            ok = self._layouts[index].fits(block)
            ok &= self._detectors[index].settle(block)  # may renumber rows in place (a copy of the records')
            good[at[~ok]] = False
            settled.append((at, block))
        slots = np.full(len(fast), -1, np.int64)
        for j, (i, metrics, devices, times) in enumerate(fast):
            if not good[j]:
                slow.append(i)
                continue
            p = self._registry.index_of(records[i][0])
            slots[j] = p
            if metrics:
                codes = self.device_codes(devices).tolist()
                self._unsorted_marks.append(
                    ([int(_pack_one(p, m, d)) for m, d in zip(metrics, codes, strict=True)], times))
        self._sync()
        for index, (at, block) in enumerate(settled):
            keep = good[at]
            if not keep.any():
                continue
            det, patients = self._detectors[index], slots[at[keep]]
            packed.put_many(_columns_for(det, block[keep]), patients, block[keep])
            self._touched[index, patients] = True
            for p in patients[det.episodes.level[patients] > 0].tolist():
                self._remember_open(index, p)
        errors: dict[str, StateError] = {}
        for i in sorted(slow):
            pid, raw = records[i]
            try:
                self.import_packed(pid, raw)
            except StateError as exc:
                errors[pid] = exc
        return errors

    def _parse_packed(
        self, raw: bytes
    ) -> tuple[list[int], list[str], list[float], list[tuple[int, FloatArray]]] | None:
        """A packed record's watermarks (metric codes, device ids, times) and entries by rule index, if
        it is intact, its watermarks valid and each rule of this rule set in it once with this rule
        set's width; else ``None`` (:meth:`import_packed` then says what is wrong)."""
        try:
            record = packed.decode(raw)
        except StateError:
            return None
        metrics, devices, times = [], [], []
        seen = set()
        for metric, device, t in record.marks:
            if metric >= N_METRICS or (metric, device) in seen or not math.isfinite(t):
                return None
            seen.add((metric, device))
            metrics.append(metric)
            devices.append(device)
            times.append(t)
        rows = []
        indices = set()
        for rid, row in record.rules:
            index = self._by_id.get(rid)
            if index is None:
                continue  # a rule no longer in the rule set
            row = self._widened(index, row)
            if index in indices or len(row) != self._layouts[index].width:
                return None
            indices.add(index)
            rows.append((index, row))
        return metrics, devices, times, rows

    def _widened(self, index: int, row: FloatArray) -> FloatArray:
        """``row`` of a rule as an earlier worker packed it (without the entries added to the rule's
        state since, :attr:`~detectors.base.Detector.added_entries`) completed with fresh ones; any
        other row as it is (a wrong width is then the caller's error)."""
        added = self._detectors[index].added_entries
        if added and len(row) == self._layouts[index].width - added:
            return np.concatenate((row, self._fresh_rows[index][-added:]))
        return row

    def _row_record(self, index: int, row: FloatArray) -> dict[str, Any]:
        """The version 1 record of one rule's packed entries: they are written into a spare slot (one
        past the registered patients, which nobody has), exported from it, and the slot restored."""
        det = self._detectors[index]
        try:
            self._layouts[index].check(row)
        except StateError as exc:
            raise StateError(f"rule {det.name}: {exc}") from None
        slot = self._spare_slot()
        columns = _columns_for(det, row[None, :])
        packed.put(columns, slot, row)
        try:
            # Entries a state cannot hold (an infinite beat counter, say) may make the export's
            # arithmetic invalid: an error here, not a warning and a garbage index.
            with np.errstate(invalid="raise", divide="raise", over="raise"):
                return det.export_patient(slot)
        except (ValueError, TypeError, IndexError, ArithmeticError) as exc:  # entries no export can describe
            raise StateError(f"rule {det.name}: packed state is not a state of this rule ({exc})") from exc
        finally:
            packed.put(columns, slot, self._fresh_rows[index])

    def _spare_slot(self) -> int:
        """A slot of the per-patient arrays beyond the registered patients (growing them if need be)."""
        self._sync()
        n = len(self._registry)
        if n >= len(self._dirty):
            self._grow(n + 1)
        return n

    def reset_patient(self, patient_id: str) -> None:
        """Forget a patient's state (e.g. when its partition moved to another worker)."""
        p = self._registry.get(patient_id)
        if p is not None:
            self.import_state(patient_id, {"v": STATE_VERSION})

    def export_all(self) -> dict[str, dict[str, Any]]:
        """:meth:`export_state` of every registered patient, keyed by patient id."""
        return {pid: self.export_state(pid) for pid in self._registry.ids()}

    def import_all(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """:meth:`import_state` for each patient in ``states``."""
        for pid, state in states.items():
            self.import_state(pid, state)

    # -- internals -------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Make room in every per-patient array for the registry's patients and apply overrides to new patients.

        The arrays grow geometrically (by half their size at least): patients arriving a few per
        batch would otherwise copy every array of every detector on every batch. Slots beyond the
        registry are fresh patients nobody has: they never see a sample, so never change.
        """
        n, old = len(self._registry), self._synced
        if n <= old:
            return
        self._synced = n
        if n > len(self._dirty):
            self._grow(n)
        # A loop over the (few) patients with overrides, not over samples.
        for pid, overrides in self._rules.patient_rules.items():
            p = self._registry.get(pid)
            if p is not None and p >= old:
                for name, rule in overrides.items():
                    self._detectors[self._by_name[name]].configure(p, rule)  # type: ignore[arg-type]

    def _grow(self, n: int) -> None:
        """Grow every per-patient array to at least ``n`` slots (by half its size at least)."""
        capacity = len(self._dirty)
        size = max(n, capacity + capacity // 2, _MIN_CAPACITY)
        self._dirty = np.concatenate((self._dirty, np.zeros(size - capacity, np.bool_)))
        self._touched = np.concatenate(
            (self._touched, np.zeros((len(self._detectors), size - capacity), np.bool_)), axis=1)
        for det in self._detectors:
            det.resize(size)

    def _transition_events(self, index: int, tr: Transitions) -> list[tuple[tuple[float, str, int], AlertEvent]]:
        """Events of one detector's transitions (a loop over alert transitions, which are rare)."""
        out = []
        rows = zip(
            tr.patient.tolist(),
            tr.kind.tolist(),
            tr.level.tolist(),
            tr.since.tolist(),
            tr.time.tolist(),
            tr.value.tolist(),
            strict=True,
        )
        for p, kind, level, since, time, value in rows:
            state: AlertState = RAISED if kind == RAISE else CLEARED
            keyed = self._keyed(index, p, state, time, value, level=level, since=since)
            if state == RAISED:
                self._remember_open(index, p, keyed[1].alert_id)
            else:
                self._forget_open(p, index)
            out.append(keyed)
        return out

    def _keyed(
        self,
        index: int,
        p: int,
        state: AlertState,
        time: float,
        value: float,
        *,
        level: int | None = None,
        since: float | None = None,
        by: str | None = None,
    ) -> tuple[tuple[float, str, int], AlertEvent]:
        """An event with its sort key; level and since default to the open alert's."""
        det = self._detectors[index]
        level = int(det.episodes.level[p]) if level is None else level
        since = float(det.episodes.since[p]) if since is None else since
        pid = self._registry.id_of(p)
        severity: SeverityName = SEVERITY_NAMES[level - 1]  # type: ignore[assignment]
        message = det.message(p, state, level, value, float(time))
        if state == ACKNOWLEDGED:
            message = f"Acknowledged by {by}: {message}"
        event = AlertEvent(
            alert_id=alert_id(pid, det.name, since),
            patient=pid,
            rule=det.name,
            severity=severity,
            metric=det.metric,
            state=state,
            time=float(time),
            value=float(value),
            message=message,
            since=since,
            by=by,
        )
        return (float(time), pid, index), event

    def _remember_open(self, index: int, p: int, aid: str | None = None) -> None:
        if aid is None:
            det = self._detectors[index]
            aid = alert_id(self._registry.id_of(p), det.name, float(det.episodes.since[p]))
        self._open[aid] = (index, p)
        self._open_id[(index, p)] = aid

    def _forget_open(self, p: int, index: int | None = None) -> None:
        indices = range(len(self._detectors)) if index is None else (index,)
        for i in indices:
            aid = self._open_id.pop((i, p), None)
            if aid is not None:
                del self._open[aid]


def _columns_for(det: Detector, rows: FloatArray) -> list[StateColumn]:
    """``det``'s state columns, ready for ``rows`` (patients × entries) to be written into them: its
    episode table's lazily held raise-time ring, a signal rule's ``away``: read-only all-NaN views) is
    materialized first if a row holds a value for it."""
    columns = det.state_columns()
    if all(a.flags.writeable for a, _ in columns):
        return columns
    for (a, _), block in zip(columns, packed.split(columns, rows), strict=True):
        if not a.flags.writeable and not np.isnan(block).all():
            det.materialize(a)
    return det.state_columns()


def _lookup(keys: npt.NDArray[np.int64], times: FloatArray, wanted: npt.NDArray[np.int64]) -> FloatArray:
    """The time of each of ``wanted`` in the sorted ``keys`` (NaN: not there)."""
    if len(keys) == 0:
        return np.full(len(wanted), np.nan)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, times[at], np.nan)


def _lookup_found(keys: npt.NDArray[np.int64], times: FloatArray,
                  wanted: npt.NDArray[np.int64]) -> tuple[BoolArray, FloatArray]:
    """Whether each of ``wanted`` is in the sorted ``keys`` (non-empty), and its time there."""
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return keys[at] == wanted, times[at]


def _cells(keys: npt.NDArray[np.int64], rows: IntArray) -> tuple[IntArray, IntArray]:
    """Positions in the sorted watermark ``keys`` of every (patient of ``rows``, metric) cell, cell by
    cell (patient-major), and each cell's count."""
    metric = np.arange(N_METRICS, dtype=np.int64)[None, :] << _PATIENT_BITS
    lo = np.searchsorted(keys, (metric | rows[:, None]) << _DEVICE_BITS)
    hi = np.searchsorted(keys, (metric | (rows[:, None] + 1)) << _DEVICE_BITS)
    counts = (hi - lo).ravel()
    where = np.repeat(lo.ravel() - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    return where, counts


def _same_columns(touched: BoolArray) -> list[tuple[IntArray, list[int]]]:
    """Groups of the columns of ``touched`` (rules × patients) that are equal: (columns, rows set)."""
    n_rules, n = touched.shape
    if n_rules <= 62:
        key = (1 << np.arange(n_rules, dtype=np.int64)) @ touched.astype(np.int64)
        _, first, group = np.unique(key, return_index=True, return_inverse=True)
    else:
        _, first, group = np.unique(touched.T, axis=0, return_index=True, return_inverse=True)
    group = group.ravel()
    if len(first) == 1:
        return [(np.arange(n), np.flatnonzero(touched[:, 0]).tolist())]
    return [(np.flatnonzero(group == g), np.flatnonzero(touched[:, f]).tolist()) for g, f in enumerate(first.tolist())]


def _pack(patient: IntArray, metric: npt.NDArray[np.int8], device: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    """One sortable int64 per (metric, patient, device).

    Metric-major, so that a batch laid out metric by metric (each sorted by patient and time, as
    a backtest chunk or a per-device upload) is already in key order and needs no sort.
    """
    high = (metric.astype(np.int64) << _PATIENT_BITS) | patient
    return (high << _DEVICE_BITS) | device.astype(np.int64)


def _pack_one(patient: int, metric: int, device: int) -> int:
    return (((metric << _PATIENT_BITS) | patient) << _DEVICE_BITS) | device


def _sorted(batch: SampleBatch, key: npt.NDArray[np.int64]
            ) -> tuple[SampleBatch, npt.NDArray[np.int64], BoolArray, IntArray | None]:
    """``batch`` and ``key`` (patient, metric, device) sorted by key then time, stably, where
    each sample has the same key as the previous one, and the order taken (None: already sorted).

    Stability matters: among exact duplicates the first delivered one is kept. Batches that are
    already in order (a backtest CSV sorted by patient and time) skip the sort.
    """
    t = batch.t
    step = np.diff(key)
    same = step == 0
    if not bool(((step < 0) | (same & (t[1:] < t[:-1]))).any()):
        return batch, key, same, None
    # Each device's samples usually arrive in time order, in runs (one message each): a stable
    # sort by key alone (timsort merges runs in near-linear time) is then enough; lexsort otherwise.
    order = np.argsort(key, kind="stable")
    key_sorted, t_sorted = key[order], t[order]
    same = key_sorted[1:] == key_sorted[:-1]
    if bool((same & (t_sorted[1:] < t_sorted[:-1])).any()):
        order = np.lexsort((t, key))
        key_sorted = key[order]
        same = key_sorted[1:] == key_sorted[:-1]
    return batch.take(order), key_sorted, same, order


def _conflicting(batch: SampleBatch, duplicate: BoolArray, order: IntArray | None,
                 taken: IntArray | None) -> Conflicts:
    """The duplicates of a sorted ``batch`` (``duplicate[i]``: sample ``i + 1`` has the key and
    time of sample ``i``) whose value or flags differ from the first of their run (the one kept), as
    positions in the caller's batch: ``order`` is the sort :func:`_sorted` took, ``taken`` the
    samples :meth:`Engine._fresh` kept before sorting (None: all)."""
    repeat = np.concatenate(([False], duplicate))
    position = np.arange(len(repeat))
    first = np.maximum.accumulate(np.where(repeat, 0, position))  # the first sample of each run
    value, kept_value = batch.value, batch.value[first]
    same_value = (value == kept_value) | (np.isnan(value) & np.isnan(kept_value))
    dropped = np.flatnonzero(repeat & ~(same_value & (batch.flags == batch.flags[first])))
    kept = first[dropped]
    for mapping in (order, taken):
        if mapping is not None:
            dropped, kept = mapping[dropped], mapping[kept]
    return Conflicts(kept=kept.astype(np.int64), dropped=dropped.astype(np.int64))


def _several_devices(key: npt.NDArray[np.int64]) -> bool:
    """Whether some (patient, metric) of a sorted batch has samples of more than one device."""
    if len(key) < 2 or bool((key & (_MAX_DEVICES - 1) == 0).all()):
        return False
    pm = key >> _DEVICE_BITS
    return bool(((pm[1:] == pm[:-1]) & (key[1:] != key[:-1])).any())


def _usable(batch: SampleBatch) -> tuple[BoolArray, FloatArray | None]:
    """Per sample: whether detectors may use it, and (None when no sample has one) its range side.

    Quality-flagged and non-finite samples are unusable; a range flag (the device's "HI" / "LO",
    carrying its finite limit) is not a quality problem. Both range bits at once is contradictory.
    """
    flags = batch.flags
    usable = ((flags & ~np.int16(RANGE_FLAGS)) == 0) & np.isfinite(batch.value)
    if not (flags & np.int16(RANGE_FLAGS)).any():
        return usable, None
    above = (flags & np.int16(FLAG_ABOVE_RANGE)) != 0
    below = (flags & np.int16(FLAG_BELOW_RANGE)) != 0
    usable &= ~(above & below)
    return usable, above.astype(np.float64) - below.astype(np.float64)


def _in_order(keyed: list[tuple[tuple[float, str, int], AlertEvent]]) -> list[AlertEvent]:
    """Events by (time, patient id, rule order): deterministic whatever the batching or registry."""
    keyed.sort(key=lambda pair: pair[0])
    return [event for _, event in keyed]


def _checked_record(state: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, Mapping[str, Any]]]:
    """The ``rules`` part of a state record and its watermarks by device, after checking shape and version."""
    if not isinstance(state, Mapping) or state.get("v") != STATE_VERSION:
        version = state.get("v") if isinstance(state, Mapping) else None
        raise StateError(f"state record version {version!r} is not {STATE_VERSION}")
    rules = state.get("rules", {})
    last_t = state.get("last_t", {})
    devices = state.get("devices", {})
    if not isinstance(rules, Mapping) or not isinstance(last_t, Mapping) or not isinstance(devices, Mapping):
        raise StateError("state record needs mappings 'rules', 'last_t' and 'devices'")
    seen: dict[str, Mapping[str, Any]] = {UNNAMED_DEVICE: last_t}
    for device, marks in devices.items():
        if not isinstance(device, str) or not device or not isinstance(marks, Mapping):
            raise StateError("state record 'devices' must map device ids to {metric: time}")
        seen[device] = marks
    for marks in seen.values():
        unknown = set(marks) - set(METRIC_NAMES)
        if unknown:
            raise StateError(f"state record has unknown metrics {sorted(map(str, unknown))}")
        for name in marks:
            opt_float(marks, name)  # raises StateError for a non-number
    return rules, seen
