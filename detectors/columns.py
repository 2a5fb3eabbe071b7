"""Helpers for per-patient columns: growing them, and moving values in and out of JSON records."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.errors import StateError

# A per-patient state array and the axis that is the patient's: 1-D arrays (axis 0), per-slot
# arrays such as ``run_start`` (shape ``(slots, n)``: axis 1) and per-patient rings or histories
# (shape ``(n, size)``: axis 0). Packed checkpoints (:mod:`detectors.packed`) copy these as they are.
StateColumn = tuple[npt.NDArray[Any], int]


def grown(array: npt.NDArray[Any], n: int, fill: Any) -> npt.NDArray[Any]:
    """``array`` extended along its last axis to ``n`` entries, new entries set to ``fill``."""
    old = array.shape[-1]
    if n <= old:
        return array
    extra = np.full((*array.shape[:-1], n - old), fill, dtype=array.dtype)
    return np.concatenate((array, extra), axis=-1)


def grown_rows(array: npt.NDArray[Any], n: int, fill: Any) -> npt.NDArray[Any]:
    """``array`` (patients × entries: a ring or history) extended to ``n`` rows, new rows set to ``fill``.

    One contiguous copy: growing it as ``grown(array.T, n, fill).T.copy()`` copied every patient's
    entries twice across the grain, which was an eighth of the worker's time while many new patients
    arrived at once (the arrays grow by half at a time, so most of the 2x overload's new patients land
    in one or two such copies of every ring)."""
    old = array.shape[0]
    if n <= old:
        return array
    out = np.empty((n, *array.shape[1:]), dtype=array.dtype)
    out[:old] = array
    out[old:] = fill
    return out


def opt(value: float) -> float | None:
    """NaN as ``None``: JSON has no NaN."""
    return None if math.isnan(value) else float(value)


def opt_float(record: Mapping[str, Any], key: str) -> float:
    """``record[key]`` as a float, ``None``/absent as NaN; :class:`StateError` otherwise."""
    value = record.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StateError(f"{key} must be a number or null, not {value!r}")
    if not math.isfinite(value):
        raise StateError(f"{key} must be finite, not {value!r}")
    return float(value)


# -- packed rows: which rows of entries a JSON round trip would leave exactly as they are ----------
# A packed record's rules are read by writing their entries straight into the patient's slots when
# :meth:`~detectors.base.Detector.settle` vouches for them: they hold nothing a version 1 record
# could not hold, and importing them through one (export then import) would change nothing. Rows it
# does not vouch for take that round trip, which then normalizes them or raises StateError.


def finite_or_nan(block: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Per row of ``block`` (rows × entries): no entry is ±inf (JSON records hold finite numbers or null)."""
    ok = np.asarray((~np.isinf(block)).all(axis=1), np.bool_)
    return ok


def nan_first(block: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Per row: the NaN entries (padding) all come before the others (a history's order)."""
    nan = np.isnan(block)
    ok = np.asarray((nan[:, :-1] | ~nan[:, 1:]).all(axis=1), np.bool_)
    return ok


def whole(block: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Per row: every entry is a finite whole number, and not -0.0 (``int()`` makes it 0)."""
    negative_zero = (block == 0) & np.signbit(block)
    ok: npt.NDArray[np.bool_] = (np.isfinite(block) & (block == np.floor(block)) & ~negative_zero).all(axis=1)
    return ok


def same_nan(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Per row: ``a`` and ``b`` are NaN at the same entries."""
    ok: npt.NDArray[np.bool_] = (np.isnan(a) == np.isnan(b)).all(axis=1)
    return ok


def appended(array: npt.NDArray[Any], column: Any) -> npt.NDArray[Any]:
    """``array`` with one more entry along its last axis, set to ``column`` (broadcast over the others)."""
    extra = np.asarray(column, dtype=array.dtype).reshape(*array.shape[:-1], 1)
    return np.concatenate((array, extra), axis=-1)


class ParamRows:
    """Which parameter set applies to each patient: a row of the owner's parameter tables.

    A rule's parameters (thresholds, durations, schedules, escalation, cooldown, flapping, ...) are
    the same for almost every patient: they are stored once per distinct *parameter set*, not once
    per patient (issue 20: per-patient copies were over a third of a worker's memory per patient).
    Row 0 is the rule's default; the first patient configured with an override that no row holds yet
    adds a row (:meth:`add`), which every patient with an equal override then shares. ``row`` is each
    patient's row (int32, the only per-patient cost); ``users`` counts the slots per row, so that
    whether every patient follows the default (:attr:`uniform`: one scalar per parameter serves the
    whole batch) and which rows are in use stay exact when an override is replaced at run time.
    """

    def __init__(self) -> None:
        self.row: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self.keys: list[Any] = []  # per row, the parameter set it holds (e.g. the rule)
        self.users: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._others = 0  # slots not on row 0
        self._index: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def uniform(self) -> bool:
        """Whether every patient slot is on row 0 (the default)."""
        return self._others == 0

    def used(self) -> npt.NDArray[np.bool_]:
        """Per row: whether some patient slot is on it."""
        return self.users > 0

    def find(self, key: Any) -> int | None:
        """The row holding ``key`` (compared by equality), if any."""
        try:
            return self._index.get(key)
        except TypeError:  # unhashable: a scan over the (few) rows
            return next((row for row, other in enumerate(self.keys) if other == key), None)

    def add(self, key: Any) -> int:
        """A new row for ``key`` (the owner appends its parameters to every table)."""
        try:
            self._index[key] = len(self.keys)
        except TypeError:
            pass  # found by find's scan
        self.keys.append(key)
        self.users = np.append(self.users, 0)
        return len(self.keys) - 1

    def grow(self, n: int) -> None:
        """Room for ``n`` patient slots; new ones are on row 0."""
        old = len(self.row)
        if n > old:
            self.row = grown(self.row, n, 0)
            self.users[0] += n - old

    def assign(self, patient: int, row: int) -> None:
        """Put ``patient`` on ``row``."""
        old = int(self.row[patient])
        self.users[old] -= 1
        self.users[row] += 1
        self._others += (row != 0) - (old != 0)
        self.row[patient] = row

    def of(self, patients: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """The rows of ``patients`` (indices)."""
        rows: npt.NDArray[np.int32] = self.row[patients]
        return rows
