"""Constants shared by the detectors.

``detectors`` must import with numpy and scipy alone (DESIGN.md, "Top-level layout"), so the few
wire-format constants it needs are duplicated here instead of imported from ``rpm_core.wire``;
``tests/detectors/test_const.py`` asserts that both stay equal.
"""

from __future__ import annotations

from typing import Final

# Metric codes are positions in this tuple; the order is the wire's ``rpm_core.wire.METRICS``.
METRIC_NAMES: Final = ("heart_rate", "rr_interval", "glucose")
HEART_RATE: Final = 0
RR_INTERVAL: Final = 1
GLUCOSE: Final = 2
METRIC_CODES: Final[dict[str, int]] = {name: code for code, name in enumerate(METRIC_NAMES)}
N_METRICS: Final = len(METRIC_NAMES)

# Units as stored in InfluxDB ``vitals`` (DESIGN.md, "Rules of the road": bpm, seconds, mg/dL).
METRIC_UNITS: Final[dict[str, str]] = {"heart_rate": "bpm", "rr_interval": "s", "glucose": "mg/dL"}
# Human labels for alert messages that nurses read.
METRIC_LABELS: Final[dict[str, str]] = {
    "heart_rate": "Heart rate",
    "rr_interval": "RR interval",
    "glucose": "Glucose",
}
# Decimals worth showing: whole bpm and mg/dL are what devices report; RR intervals are ~ms.
METRIC_DECIMALS: Final[dict[str, int]] = {"heart_rate": 0, "rr_interval": 3, "glucose": 0}

# Signal-quality bits of ``rpm_core.wire.SampleFlag``. A sample with any bit set other than the
# range bits is ignored by every detector (issue 4, "signal-quality gating"), so unknown future
# bits gate too.
FLAG_CONTACT_LOST: Final = 1
FLAG_DEVICE_WARNING: Final = 2
FLAG_LOW_QUALITY: Final = 4
ALL_QUALITY_FLAGS: Final = FLAG_CONTACT_LOST | FLAG_DEVICE_WARNING | FLAG_LOW_QUALITY
# Range bits (issue 14): the device's "HI" / "LO", a value beyond what it can measure (the sample
# carries the device's limit). Rules comparing values (threshold, staleness) see +inf / -inf, i.e.
# beyond any threshold on that side; rules computing from values (rate, forecast, baseline,
# rhythm) skip such samples, since the true value is unknown. Both bits at once: unusable.
FLAG_ABOVE_RANGE: Final = 8
FLAG_BELOW_RANGE: Final = 16
RANGE_FLAGS: Final = FLAG_ABOVE_RANGE | FLAG_BELOW_RANGE

# Severity codes double as level slots: code 1..3, slot code-1. 0 means "no open alert".
NO_SEVERITY: Final = 0
INFO: Final = 1
WARNING: Final = 2
CRITICAL: Final = 3
SEVERITY_NAMES: Final = ("info", "warning", "critical")
N_LEVELS: Final = len(SEVERITY_NAMES)

# Alert states (DESIGN.md, measurement ``alerts``, field ``state``).
RAISED: Final = "raised"
CLEARED: Final = "cleared"
ACKNOWLEDGED: Final = "acknowledged"
ESCALATED: Final = "escalated"

# Version of the per-patient state records of ``Engine.export_state``; bump on incompatible change.
# (Packed records, detectors.packed, are version 2 of the same content.)
STATE_VERSION: Final = 1

# Bounds of per-patient history kept by the windowed detectors: their state must stay compact
# (checkpointed per patient after every batch) whatever the rules say.
RATE_MAX_READINGS: Final = 10  # consecutive readings a rate rule may require
FORECAST_MAX_POINTS: Final = 36  # 30 min of 1-minute CGM readings, with room to spare
RHYTHM_MAX_BEATS: Final = 256  # twice the 128-beat windows of Dash et al. 2009
FLAP_SLOTS: Final = 8  # raise times remembered for flapping suppression
RHYTHM_MAX_VOTES: Final = 8  # judged windows a rhythm rule may vote over

# The glucose and CGM model of the ``kalman`` forecast (detectors/forecast.py, issue 17). A CGM
# measures interstitial glucose, which follows blood glucose with a first-order lag: 5-6 min
# tracer delay in healthy adults (Basu A et al. Diabetes 2013;62(12):4083-4087), 5-15 min in
# type 1 diabetes; the UVA/Padova model's plasma-to-interstitium constant k_sc gives 7-20 min
# (median ~11 min) over its 30 virtual patients (simglucose vpatient_params.csv). 12 min was
# chosen on the training seed (benchmarks/RESULTS.md, "Glucose forecast ... Kalman").
INTERSTITIAL_LAG_MIN: Final = 12.0
# CGM error: Breton M, Kovatchev B. Analysis, modeling, and simulation of the accuracy of
# continuous glucose sensors. J Diabetes Sci Technol 2008;2(5):853-862: an AR(1) process with
# coefficient 0.7 per 15 min (time constant 15 / ln(1/0.7) = 42 min) through a Johnson SU
# transform, ~10 mg/dL standard deviation; simglucose implements exactly this sensor model.
CGM_ERROR_SD_MG_DL: Final = 10.0
CGM_ERROR_TAU_MIN: Final = 42.0
# Fast (white) reading noise on top of the slow error: a few mg/dL (quantization, electronics).
CGM_WHITE_SD_MG_DL: Final = 3.0
# How fast the rate of blood glucose may change: a random walk of the rate with this intensity,
# (mg/dL/min)^2 per minute, i.e. ~0.3 mg/dL/min of rate change per 20 min (meal and insulin
# action). Tuned on the training seed, as are the two below.
KALMAN_RATE_WALK: Final = 0.004
KALMAN_RATE_PRIOR_SD: Final = 1.0  # mg/dL/min: the rate before any reading, a typical CGM trend
# A predicted crossing counts when the forecast plus this many standard deviations of its own
# uncertainty (toward the normal side) crosses: a small margin that keeps uncertain forecasts quiet.
KALMAN_CONFIDENCE_Z: Final = 0.35

# An acknowledgement made (by its sender's clock) more than this before the alert's escalation clock
# started (its raise, its worsening, its re-alarm) answers an earlier state of the alert, not this one:
# the nurse station and the notifier (ACK_CLOCK_SLACK_S there) and the engine agree on it.
ACK_CLOCK_SLACK_S: Final = 5.0
