"""Columnar micro-batches of samples and the patient registry that gives patients dense indices.

A batch holds samples of many patients and metrics in any order; :class:`~detectors.engine.Engine`
sorts them. Patients are dense ``int64`` indices into per-rule state arrays, so that numpy can
gather each sample's per-patient parameters and state with one fancy-index operation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.const import METRIC_CODES, METRIC_NAMES

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class PatientRegistry:
    """Bidirectional map between patient ids (``str``) and dense indices ``0..len-1``.

    Indices are assigned in first-seen order and never reused, so arrays indexed by them only grow.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        for patient in ids:
            self.index_of(patient)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, patient: object) -> bool:
        return patient in self._index

    def index_of(self, patient: str) -> int:
        """The index of ``patient``, registering it if new."""
        index = self._index.get(patient)
        if index is None:
            index = len(self._ids)
            self._index[patient] = index
            self._ids.append(patient)
        return index

    def get(self, patient: str) -> int | None:
        """The index of ``patient`` if registered, else ``None``."""
        return self._index.get(patient)

    def id_of(self, index: int) -> str:
        """The patient id at ``index``."""
        return self._ids[index]

    def ids(self) -> list[str]:
        """All registered ids, in index order."""
        return list(self._ids)

    def ids_since(self, start: int) -> list[str]:
        """The ids registered from index ``start`` on, in index order."""
        return self._ids[start:]

    def indices(self, patients: Sequence[str] | npt.NDArray[Any]) -> IntArray:
        """Indices of ``patients`` (registering new ones); one dict lookup per *distinct* id."""
        if len(patients) == 0:
            return np.zeros(0, dtype=np.int64)
        try:  # all registered already (the usual case): one dict lookup per element, no sort
            return np.fromiter(map(self._index.__getitem__, patients), dtype=np.int64, count=len(patients))
        except (KeyError, TypeError):
            pass  # some are new: they are registered in sorted order, below
        uniques, inverse = np.unique(np.asarray(patients, dtype=object), return_inverse=True)
        codes = np.fromiter((self.index_of(str(u)) for u in uniques), dtype=np.int64, count=len(uniques))
        return codes[inverse.reshape(-1)]


def metric_codes(metrics: Sequence[str] | npt.NDArray[Any]) -> npt.NDArray[np.int8]:
    """Metric codes of metric names; ``ValueError`` naming an unknown metric."""
    if len(metrics) == 0:
        return np.zeros(0, dtype=np.int8)
    try:  # a dict lookup per name: cheaper than sorting strings (np.unique) at any batch size
        return np.fromiter(map(METRIC_CODES.__getitem__, metrics), dtype=np.int8, count=len(metrics))
    except (KeyError, TypeError):
        pass  # say which names are unknown
    uniques, inverse = np.unique(np.asarray(metrics, dtype=object), return_inverse=True)
    unknown = [str(u) for u in uniques if u not in METRIC_CODES]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; expected one of {', '.join(METRIC_NAMES)}")
    codes = np.array([METRIC_CODES[str(u)] for u in uniques], dtype=np.int8)
    return codes[inverse.reshape(-1)]


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples of many patients and metrics, as parallel 1-D arrays (any order).

    - ``patient``: dense patient index (:class:`PatientRegistry`), int64;
    - ``metric``: metric code (:data:`detectors.const.METRIC_NAMES` position), int8;
    - ``t``: when the device measured it, UTC epoch seconds, float64;
    - ``value``: bpm, seconds or mg/dL, float64;
    - ``flags``: signal-quality bit mask (``rpm_core.wire.SampleFlag``), int16; any bit set gates the sample;
    - ``device``: dense device index (the engine's device registry; 0 = unnamed device), int32.
      Optional: omitted means every sample comes from the unnamed device.
    """

    patient: IntArray
    metric: npt.NDArray[np.int8]
    t: FloatArray
    value: FloatArray
    flags: npt.NDArray[np.int16]
    device: npt.NDArray[np.int32] | None = None

    def __post_init__(self) -> None:
        # Coerce once here so the hot path can trust dtypes and contiguity.
        object.__setattr__(self, "patient", np.ascontiguousarray(self.patient, dtype=np.int64))
        object.__setattr__(self, "metric", np.ascontiguousarray(self.metric, dtype=np.int8))
        object.__setattr__(self, "t", np.ascontiguousarray(self.t, dtype=np.float64))
        object.__setattr__(self, "value", np.ascontiguousarray(self.value, dtype=np.float64))
        object.__setattr__(self, "flags", np.ascontiguousarray(self.flags, dtype=np.int16))
        n = len(self.patient)
        device = np.zeros(n, np.int32) if self.device is None else self.device
        object.__setattr__(self, "device", np.ascontiguousarray(device, dtype=np.int32))
        for name in ("metric", "t", "value", "flags", "device"):
            column = getattr(self, name)
            if column.ndim != 1 or len(column) != n:
                raise ValueError(f"SampleBatch.{name} must be 1-D with {n} entries like patient")

    def __len__(self) -> int:
        return len(self.patient)

    @classmethod
    def empty(cls) -> SampleBatch:
        """A batch with no samples."""
        return cls(
            patient=np.zeros(0, np.int64),
            metric=np.zeros(0, np.int8),
            t=np.zeros(0),
            value=np.zeros(0),
            flags=np.zeros(0, np.int16),
        )

    @classmethod
    def concat(cls, batches: Sequence[SampleBatch]) -> SampleBatch:
        """All samples of ``batches`` in one batch."""
        if not batches:
            return cls.empty()
        return cls(
            patient=np.concatenate([b.patient for b in batches]),
            metric=np.concatenate([b.metric for b in batches]),
            t=np.concatenate([b.t for b in batches]),
            value=np.concatenate([b.value for b in batches]),
            flags=np.concatenate([b.flags for b in batches]),
            device=np.concatenate([b.devices for b in batches]),
        )

    @property
    def devices(self) -> npt.NDArray[np.int32]:
        """The device column (never ``None`` after construction)."""
        assert self.device is not None
        return self.device

    def take(self, index: IntArray | BoolArray | slice) -> SampleBatch:
        """The samples selected by ``index`` (an index array, a mask or a slice)."""
        return SampleBatch(
            patient=self.patient[index],
            metric=self.metric[index],
            t=self.t[index],
            value=self.value[index],
            flags=self.flags[index],
            device=self.devices[index],
        )


@dataclass(frozen=True, slots=True)
class MetricView:
    """Usable (unflagged, finite, new) samples of one metric, sorted by patient then strictly by time.

    This is what a detector's ``process`` receives. ``starts``/``ends`` delimit each patient's run of
    samples (``ends`` exclusive) and ``group_patient`` says whose it is, so detectors can gather the
    per-patient state once per group and scatter it back at the group's last sample. ``device`` is
    the device index of each sample.
    """

    patient: IntArray
    t: FloatArray
    value: FloatArray
    starts: IntArray
    ends: IntArray
    group_patient: IntArray
    device: npt.NDArray[np.int32]

    @classmethod
    def from_sorted(
        cls, patient: IntArray, t: FloatArray, value: FloatArray, device: npt.NDArray[np.int32] | None = None
    ) -> MetricView:
        """Build a view from arrays already sorted by (patient, t)."""
        n = len(patient)
        device = np.zeros(n, np.int32) if device is None else device
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(patient, t, value, empty, empty, empty, device)
        change = np.flatnonzero(patient[1:] != patient[:-1]) + 1
        starts = np.concatenate(([0], change)).astype(np.int64)
        ends = np.concatenate((change, [n])).astype(np.int64)
        return cls(patient, t, value, starts, ends, patient[starts], device)

    def where(self, keep: BoolArray) -> MetricView:
        """The samples where ``keep`` is true (a new view)."""
        return MetricView.from_sorted(self.patient[keep], self.t[keep], self.value[keep], self.device[keep])

    def __len__(self) -> int:
        return len(self.t)

    def select_groups(self, keep: BoolArray) -> tuple[MetricView, BoolArray]:
        """The view restricted to the patient groups where ``keep`` (one flag per group) is true.

        Returns the new view and the per-sample mask that selected it (to subset parallel arrays).
        """
        lengths = (self.ends - self.starts)[keep]
        ends = np.cumsum(lengths, dtype=np.int64)
        mask = self.per_sample(keep)
        view = MetricView(
            self.patient[mask],
            self.t[mask],
            self.value[mask],
            ends - lengths,
            ends,
            self.group_patient[keep],
            self.device[mask],
        )
        return view, mask

    def first_mask(self) -> BoolArray:
        """True at each patient's first sample in this view."""
        mask = np.zeros(len(self.t), dtype=np.bool_)
        mask[self.starts] = True
        return mask

    def per_sample(self, per_group: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Broadcast one value per patient group to every sample of the group."""
        return np.repeat(per_group, self.ends - self.starts)
