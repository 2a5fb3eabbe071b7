"""Per-patient recent samples for windowed detectors, and sliding windows over a batch.

The windowed detectors (rate, forecast, rhythm) need, for each sample, the previous few samples of
the same patient, some of which arrived in earlier batches. :class:`History` keeps the last
``size`` usable samples of every patient as two ``(patients, size)`` arrays (oldest first, NaN
padding in front), so the state stays compact and checkpointable. :meth:`History.windows` lays each
patient's carried history in front of its samples in one flat array, then takes every sample's
window with ``sliding_window_view``: no loop over samples or patients, and a window can never
reach into another patient's block because each block starts with ``size`` history slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detectors.batch import BoolArray, FloatArray, IntArray, MetricView
from detectors.columns import StateColumn, finite_or_nan, grown_rows, nan_first
from detectors.errors import StateError


class History:
    """The last ``size`` samples (time, value) of every patient."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.t: FloatArray = np.zeros((0, size))
        self.v: FloatArray = np.zeros((0, size))

    def resize(self, n: int) -> None:
        """Make room for ``n`` patients (with no history)."""
        self.t = grown_rows(self.t, n, np.nan)
        self.v = grown_rows(self.v, n, np.nan)

    def windows(self, view: MetricView, width: int, rows: IntArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Each sample's window of the last ``width`` samples up to and including it, and update the history.

        Returns ``(t, v)`` of shape ``(len(view), width)`` (or only the ``rows`` asked for), oldest
        first, NaN where the patient has fewer samples. ``width`` may be at most ``size + 1``.
        """
        assert 1 <= width <= self.size + 1
        if len(view) == 0:
            return np.zeros((0, width)), np.zeros((0, width))
        ext_t, ext_v, pos = self._extended(view)
        at = pos if rows is None else pos[rows]
        t = sliding_window_view(ext_t, width)[at - width + 1]
        v = sliding_window_view(ext_v, width)[at - width + 1]
        self._keep(view, ext_t, ext_v, pos)
        return t, v

    def _extended(self, view: MetricView) -> tuple[FloatArray, FloatArray, IntArray]:
        """Flat arrays of per-patient blocks ``[history..., samples...]`` and each sample's position."""
        size, groups = self.size, len(view.starts)
        group_of = view.per_sample(np.arange(groups, dtype=np.int64))
        pos = np.arange(len(view), dtype=np.int64) + size * (group_of + 1)
        slots = (view.starts + size * np.arange(groups, dtype=np.int64))[:, None] + np.arange(size)
        ext_t = np.empty(len(view) + size * groups)
        ext_v = np.empty_like(ext_t)
        ext_t[slots] = self.t[view.group_patient]
        ext_v[slots] = self.v[view.group_patient]
        ext_t[pos] = view.t
        ext_v[pos] = view.value
        return ext_t, ext_v, pos

    def _keep(self, view: MetricView, ext_t: FloatArray, ext_v: FloatArray, pos: IntArray) -> None:
        """The last ``size`` entries of each patient's block become its history."""
        last = pos[view.ends - 1]
        self.t[view.group_patient] = sliding_window_view(ext_t, self.size)[last - self.size + 1]
        self.v[view.group_patient] = sliding_window_view(ext_v, self.size)[last - self.size + 1]

    def export_patient(self, patient: int) -> dict[str, list[float | None]]:
        """The patient's history (oldest first, padding left out) as JSON-able lists (NaN value: null)."""
        keep = ~np.isnan(self.t[patient])
        values = [None if x != x else x for x in self.v[patient, keep].tolist()]  # x != x: NaN
        return {"t": self.t[patient, keep].tolist(), "v": values}

    def state_columns(self) -> list[StateColumn]:
        """The history arrays (patient on axis 0)."""
        return [(self.t, 0), (self.v, 0)]

    def settle(self, blocks: list[FloatArray]) -> BoolArray:
        """Which rows of packed entries (:meth:`state_columns` blocks) an export and import would leave
        as they are (see :mod:`detectors.columns`): padding (NaN times, NaN values) in front, finite
        times that increase, values finite or NaN."""
        t, v = blocks
        nan = np.isnan(t)
        increasing = (nan[:, :-1] | (np.diff(t, axis=1) > 0)).all(axis=1)
        padded = ~(nan & ~np.isnan(v)).any(axis=1)
        return nan_first(t) & increasing & padded & finite_or_nan(np.concatenate((t, v), axis=1))

    def import_patient(self, patient: int, record: Mapping[str, Any] | None) -> None:
        """Restore :meth:`export_patient`'s output (``None``: no history)."""
        t, v = _floats(record, "t"), _floats(record, "v", nulls=True)
        if len(t) != len(v) or len(t) > self.size:
            raise StateError(f"history needs equal t and v lists of at most {self.size} entries")
        if len(t) > 1 and not bool(np.all(np.diff(t) > 0)):
            raise StateError("history times must increase")
        self.t[patient] = np.nan
        self.v[patient] = np.nan
        if len(t):
            self.t[patient, self.size - len(t) :] = t
            self.v[patient, self.size - len(v) :] = v


def _floats(record: Mapping[str, Any] | None, key: str, *, nulls: bool = False) -> FloatArray:
    if record is not None and not isinstance(record, Mapping):  # e.g. a list: no .get (AttributeError)
        raise StateError("history must be a mapping of t and v lists")
    values = [] if record is None else record.get(key, [])
    ok = isinstance(values, list) and all(
        (nulls and x is None) or (not isinstance(x, bool) and isinstance(x, int | float)) for x in values
    )
    if not ok:
        raise StateError(f"history {key} must be a list of numbers")
    array = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    if not np.isfinite(array[~np.isnan(array)] if nulls else array).all():
        raise StateError(f"history {key} must be finite")
    return array
