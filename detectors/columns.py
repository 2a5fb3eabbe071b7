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
