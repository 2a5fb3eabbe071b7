"""Day/night schedules: which period of a rule applies to each sample, vectorized.

A period is a daily span of local wall-clock time in an IANA zone (``22:00``-``07:00``
``Europe/Paris``). Converting every sample with :mod:`zoneinfo` would be a Python call per
sample; instead the UTC offset is looked up once per distinct quarter hour in the batch (every
zone's offset changes on a quarter-hour boundary), and broadcast to the samples with numpy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from detectors.batch import BoolArray, FloatArray, IntArray

_QUARTER_S = 900.0
_DAY_MIN = 1440.0
_DENSE_QUARTERS = 192  # two days of quarter hours: cheaper to look up all than to sort the samples


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=4096)
def _offset_s(zone: ZoneInfo, quarter: int) -> float:
    moment = datetime.fromtimestamp(quarter * _QUARTER_S, tz=UTC).astimezone(zone)
    offset = moment.utcoffset()
    return 0.0 if offset is None else offset.total_seconds()


def local_minutes(t: FloatArray, tz: str) -> FloatArray:
    """Local minute of the day (0 <= m < 1440, fractional) of UTC epoch seconds ``t`` in zone ``tz``."""
    if len(t) == 0:
        return np.zeros(0)
    zone = _zone(tz)
    quarters = np.floor(t / _QUARTER_S).astype(np.int64)
    first, last = int(quarters.min()), int(quarters.max())
    if last - first < _DENSE_QUARTERS:
        # A live batch spans a quarter hour or two: look up each quarter of the range, no sort.
        span = np.arange(first, last + 1)
        offsets = np.array([_offset_s(zone, q) for q in span.tolist()])
        local = t + offsets[quarters - first]
    else:
        uniques, inverse = np.unique(quarters, return_inverse=True)
        # A loop over distinct quarter hours of the batch, not over samples.
        offsets = np.array([_offset_s(zone, int(q)) for q in uniques.tolist()])
        local = t + offsets[inverse.reshape(-1)]
    minutes: FloatArray = np.mod(local / 60.0, _DAY_MIN)
    return minutes


def in_period(minutes: FloatArray, start: FloatArray | float, end: FloatArray | float) -> BoolArray:
    """Whether each local minute lies in ``[start, end)``, wrapping past midnight when ``end < start``."""
    inside = (minutes >= start) & (minutes < end)
    wrapped = (minutes >= start) | (minutes < end)
    return np.where(np.less(start, end), inside, wrapped)


def period_index(
    t: FloatArray,
    patient: npt.NDArray[np.integer[Any]],
    start: FloatArray,
    end: FloatArray,
    tz_code: IntArray,
    zones: list[str],
) -> IntArray:
    """Per sample: 0 outside every period, else 1 + the first period (in rule order) containing it.

    ``start``/``end`` (minutes) and ``tz_code`` (index into ``zones``) have shape (periods, k), and
    ``patient`` indexes their second axis per sample (a detector passes each patient's parameter row).
    """
    index = np.zeros(len(t), np.int64)
    for j in range(start.shape[0] - 1, -1, -1):  # a loop over periods; the first match wins
        codes = tz_code[j, patient]
        hit = np.zeros(len(t), np.bool_)
        for code in np.unique(codes).tolist():  # a loop over the (one or few) zones in use
            take = codes == code
            minutes = local_minutes(t[take], zones[code])
            hit[take] = in_period(minutes, start[j, patient[take]], end[j, patient[take]])
        index[hit] = j + 1
    return index
