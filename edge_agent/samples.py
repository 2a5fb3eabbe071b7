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

from edge_agent import const
from edge_agent.gatt import (
    CgmMeasurement,
    GlucoseMeasurement,
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


def glucose_sample(measurement: GlucoseMeasurement, measured_at: datetime, problems: Problems) -> Sample | None:
    """The glucose sample of a meter record, or None (counted in ``problems``) if it has none."""
    mg_dl = measurement.glucose_mg_dl
    if mg_dl is None:
        problems.add("glucose record without a concentration", measurement.sequence_number)
        return None
    if is_control_solution(measurement):
        problems.add("control-solution test skipped", measurement.sequence_number)
        return None
    if not math.isfinite(mg_dl):
        # HI/LO (±INF) or NaN: clinically relevant, but the wire carries finite values only.
        problems.add("glucose outside what the meter can measure (HI/LO)", measurement.sequence_number)
        return None
    flags = int(SampleFlag.DEVICE_WARNING) if measurement.status_flags else 0
    return ("glucose", _epoch(measured_at), round(mg_dl, _GLUCOSE_DIGITS), flags)


def cgm_sample(record: CgmMeasurement, measured_at: datetime, problems: Problems) -> Sample | None:
    """The glucose sample of a CGM record, or None (counted) when the sensor sent NaN/±INF."""
    mg_dl = record.glucose_mg_dl
    if not math.isfinite(mg_dl):
        problems.add("CGM record without a usable value", record.time_offset_min)
        return None
    flags = int(SampleFlag.DEVICE_WARNING) if record.status_flags else 0
    quality = record.quality_pct
    if quality is not None and math.isfinite(quality) and quality < const.CGM_LOW_QUALITY_PCT:
        flags |= SampleFlag.LOW_QUALITY
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
