"""Decoded GATT payloads → wire samples ``(metric, t, value, flags)``, and their validation.

Units are the wire's: bpm, seconds, mg/dL; ``t`` is UTC epoch seconds of when the device measured.
A sample the bridge would reject (``rpm_core.wire``: plausible range, not before 2000, not more
than 5 minutes in the future) is never sent: one bad sample would dead-letter its whole message.
Such samples are counted and logged once per device and reason (:class:`Problems`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from edge_agent import const
from edge_agent.gatt import (
    CgmMeasurement,
    CgmSensorStatus,
    GlucoseMeasurement,
    GlucoseSensorStatus,
    HeartRateMeasurement,
    SampleLocation,
    SampleType,
    SensorContact,
)
from rpm_core.wire import MAX_FUTURE_SKEW_S, METRIC_RANGES, MIN_SAMPLE_EPOCH_S, Sample, SampleFlag

_LOGGER = logging.getLogger(__name__)

# Times are kept to the microsecond: enough to keep every beat distinct, exact in a float.
_TIME_DIGITS = 6
# Glucose after a unit conversion (mmol/L × 18.016) carries no information past 3 decimals.
_GLUCOSE_DIGITS = 3


class Problems:
    """Per-device counters of what could not become a reading; each reason is logged once.

    The first occurrence of a reason is a warning with the details; later ones only count (and
    show in the device's status message), so a device spewing garbage cannot flood the log.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.counts: Counter[str] = Counter()
        self.on_first: Callable[[], None] = lambda: None

    def add(self, reason: str, detail: object = "") -> None:
        """Count ``reason``; log it the first time."""
        self.counts[reason] += 1
        if self.counts[reason] == 1:
            _LOGGER.warning("%s: %s %s (logged once; counted in the device status)", self.device, reason, detail)
            self.on_first()
        else:
            _LOGGER.debug("%s: %s %s", self.device, reason, detail)


def _epoch(moment: datetime) -> float:
    return round(moment.timestamp(), _TIME_DIGITS)


def heart_rate_samples(measurement: HeartRateMeasurement, received_s: float) -> list[Sample]:
    """The heart rate at ``received_s`` and each RR interval as its own sample.

    A notification carries the intervals of the beats since the last one, oldest first; the last
    beat ended about when the notification was sent, so beat *i* is stamped with the
    notification time minus the intervals that followed it. Beats get distinct times, and RR
    samples of consecutive notifications do not collide.
    """
    flags = int(SampleFlag.CONTACT_LOST) if measurement.sensor_contact is SensorContact.NOT_DETECTED else 0
    t = round(received_s, _TIME_DIGITS)
    samples: list[Sample] = [("heart_rate", t, float(measurement.bpm), flags)]
    intervals = measurement.rr_intervals_s
    following = 0.0
    beats: list[Sample] = []
    for rr in reversed(intervals):
        beats.append(("rr_interval", round(received_s - following, _TIME_DIGITS), rr, flags))
        following += rr
    samples.extend(reversed(beats))
    return samples


def is_control_solution(measurement: GlucoseMeasurement) -> bool:
    """A control-solution test checks the meter; it is not the patient's glucose."""
    return (
        measurement.sample_type is SampleType.CONTROL_SOLUTION
        or measurement.sample_location is SampleLocation.CONTROL_SOLUTION
    )


def meter_time_to_utc(local: datetime, clock_skew: timedelta) -> datetime:
    """A glucose meter's local time → UTC.

    ``clock_skew`` is the meter's clock minus this host's local clock (read from Current Time
    0x2A2B at connection; zero if the meter has none), so this corrects the meter's time zone
    and drift at once, assuming the meter was set to the patient's (this host's) time zone.
    """
    return (local - clock_skew).astimezone(UTC)


# §2 status bits that say nothing against the value: a low battery (reported as device trouble on
# its own) and the HI/LO bits (carried as range flags). Every other bit casts doubt on the result.
_GLS_NOT_QUALITY: Final = (
    GlucoseSensorStatus.DEVICE_BATTERY_LOW | GlucoseSensorStatus.RESULT_TOO_HIGH | GlucoseSensorStatus.RESULT_TOO_LOW
)
# §3 annunciations that cast doubt on a CGM value: the session, the sensor or the device is at
# fault, or it needs calibrating or a time sync. The warning octet's patient low/high, hypo/hyper
# and rate bits are clinical findings *about* a good value (flagging them would hide exactly the
# low readings); a low battery is device trouble; bits 22/23 are the range flags.
_CGM_QUALITY: Final = (
    CgmSensorStatus.SESSION_STOPPED
    | CgmSensorStatus.SENSOR_TYPE_INCORRECT
    | CgmSensorStatus.SENSOR_MALFUNCTION
    | CgmSensorStatus.DEVICE_SPECIFIC_ALERT
    | CgmSensorStatus.GENERAL_DEVICE_FAULT
    | CgmSensorStatus.TIME_SYNCHRONIZATION_REQUIRED
    | CgmSensorStatus.CALIBRATION_REQUIRED
    | CgmSensorStatus.TEMPERATURE_TOO_HIGH
    | CgmSensorStatus.TEMPERATURE_TOO_LOW
)


def _range_side(value: float, too_high: bool, too_low: bool) -> int:
    """``SampleFlag.ABOVE_RANGE`` / ``BELOW_RANGE`` for a result beyond the device's range, else 0."""
    high = too_high or value == math.inf
    low = too_low or value == -math.inf
    if high == low:
        return 0  # neither, or contradictory (then the caller's finite check decides)
    return int(SampleFlag.ABOVE_RANGE if high else SampleFlag.BELOW_RANGE)


def _beyond_range_sample(value: float, side: int, limits: tuple[float, float], measured_at: datetime) -> Sample:
    """A "HI"/"LO" sample: the device's own finite value if it sent a plausible one, else its limit."""
    low, high = METRIC_RANGES["glucose"]
    limit = limits[1] if side == SampleFlag.ABOVE_RANGE else limits[0]
    mg_dl = value if math.isfinite(value) and low <= value <= high else limit
    return ("glucose", _epoch(measured_at), round(mg_dl, _GLUCOSE_DIGITS), side)


def glucose_sample(measurement: GlucoseMeasurement, measured_at: datetime, problems: Problems) -> Sample | None:
    """The glucose sample of a meter record, or None (counted in ``problems``) if it has none.

    "HI"/"LO" (status bit 5/6, usually with +INF/-INF) becomes a sample flagged ``ABOVE_RANGE`` /
    ``BELOW_RANGE`` carrying the meter's limit (issue 14): the results that need action most.
    """
    mg_dl = measurement.glucose_mg_dl
    if mg_dl is None:
        problems.add("glucose record without a concentration", measurement.sequence_number)
        return None
    if is_control_solution(measurement):
        problems.add("control-solution test skipped", measurement.sequence_number)
        return None
    status = GlucoseSensorStatus(measurement.status_flags or 0)
    flags = int(SampleFlag.DEVICE_WARNING) if status & ~_GLS_NOT_QUALITY else 0
    side = _range_side(
        mg_dl, GlucoseSensorStatus.RESULT_TOO_HIGH in status, GlucoseSensorStatus.RESULT_TOO_LOW in status
    )
    if side:
        limits = (const.GLUCOSE_METER_LOW_LIMIT_MG_DL, const.GLUCOSE_METER_HIGH_LIMIT_MG_DL)
        metric, t, value, range_flag = _beyond_range_sample(mg_dl, side, limits, measured_at)
        return (metric, t, value, range_flag | flags)
    if not math.isfinite(mg_dl):
        problems.add("glucose record without a usable value (NaN)", measurement.sequence_number)
        return None
    return ("glucose", _epoch(measured_at), round(mg_dl, _GLUCOSE_DIGITS), flags)


def cgm_sample(record: CgmMeasurement, measured_at: datetime, problems: Problems) -> Sample | None:
    """The glucose sample of a CGM record, or None (counted) when the sensor sent NaN.

    Beyond the sensor's range (warning bit 22/23, or ±INF) it is flagged ``BELOW_RANGE`` /
    ``ABOVE_RANGE`` with the sensor's limit, like a meter's "HI"/"LO".
    """
    mg_dl = record.glucose_mg_dl
    status = CgmSensorStatus(record.status_flags)
    flags = int(SampleFlag.DEVICE_WARNING) if status & _CGM_QUALITY else 0
    quality = record.quality_pct
    if quality is not None and math.isfinite(quality) and quality < const.CGM_LOW_QUALITY_PCT:
        flags |= SampleFlag.LOW_QUALITY
    side = _range_side(
        mg_dl, CgmSensorStatus.ABOVE_DEVICE_RANGE in status, CgmSensorStatus.BELOW_DEVICE_RANGE in status
    )
    if side:
        limits = (const.CGM_LOW_LIMIT_MG_DL, const.CGM_HIGH_LIMIT_MG_DL)
        metric, t, value, range_flag = _beyond_range_sample(mg_dl, side, limits, measured_at)
        return (metric, t, value, range_flag | flags)
    if not math.isfinite(mg_dl):
        problems.add("CGM record without a usable value", record.time_offset_min)
        return None
    return ("glucose", _epoch(measured_at), round(mg_dl, _GLUCOSE_DIGITS), flags)


def rejection(sample: Sample, now_s: float) -> str | None:
    """Why the bridge would reject ``sample`` (see ``rpm_core.wire``), or None if it is fine."""
    metric, t, value, _flags = sample
    low, high = METRIC_RANGES[metric]
    if not math.isfinite(value) or not low <= value <= high:
        return f"{metric} outside the plausible range {low:g}..{high:g}"
    if t < MIN_SAMPLE_EPOCH_S:
        return f"{metric} time before 2000 (device clock not set?)"
    if t > now_s + MAX_FUTURE_SKEW_S:
        return f"{metric} time in the future (device clock wrong?)"
    return None


def valid_samples(samples: list[Sample], problems: Problems, now_s: float | None = None) -> tuple[Sample, ...]:
    """``samples`` without the ones the bridge would reject (those are counted in ``problems``)."""
    now_s = time.time() if now_s is None else now_s
    kept = []
    for sample in samples:
        reason = rejection(sample, now_s)
        if reason is None:
            kept.append(sample)
        else:
            problems.add(reason)  # no value: readings stay out of logs above debug
    return tuple(kept)


def cgm_reading_time(session_start_utc: datetime, offset_min: int) -> datetime:
    """Session start (UTC) + the unwrapped time offset."""
    return session_start_utc + timedelta(minutes=offset_min)


def unwrap_offset(offset_min: int, last_unwrapped: int | None) -> int:
    """The CGM time offset on a continuous scale: it wraps at 65536 min (§3, ~45.5 days)."""
    if last_unwrapped is None:
        return offset_min
    base = last_unwrapped - last_unwrapped % const.CGM_TIME_OFFSET_WRAP_MIN
    candidate = base + offset_min
    if candidate < last_unwrapped - const.CGM_TIME_OFFSET_HALF_RANGE_MIN:
        candidate += const.CGM_TIME_OFFSET_WRAP_MIN  # wrapped since the last one
    elif candidate > last_unwrapped + const.CGM_TIME_OFFSET_HALF_RANGE_MIN >= const.CGM_TIME_OFFSET_WRAP_MIN:
        candidate -= const.CGM_TIME_OFFSET_WRAP_MIN  # an older record from before the wrap (backfill)
    return candidate
