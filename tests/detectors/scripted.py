"""Scripted patients for the default rules (``alert_rules.yaml``), shared by the unit and backtest tests.

Each patient lives through one clinical episode (or none), with readings at realistic rates:
heart rate every 5 s, RR intervals every beat, CGM glucose every 5 min, meter glucose rarely.
"""

from __future__ import annotations

import numpy as np

from tests.detectors.helpers import T0

HR_STEP_S = 5.0
CGM_STEP_S = 300.0
Row = tuple[str, str, float, float, int, str]  # patient, metric, t, value, flags, device


def _series(
    patient: str, metric: str, start: float, values: list[float] | np.ndarray, step: float, device: str
) -> list[Row]:
    return [(patient, metric, T0 + start + i * step, float(v), 0, device) for i, v in enumerate(values)]


def heart_rate(patient: str, start: float, values: list[float] | np.ndarray) -> list[Row]:
    """Heart-rate readings every 5 s from a chest strap."""
    return _series(patient, "heart_rate", start, values, HR_STEP_S, "hrs-1")


def cgm(patient: str, start: float, values: list[float]) -> list[Row]:
    """CGM readings every 5 min."""
    return _series(patient, "glucose", start, values, CGM_STEP_S, "cgm-1")


def rr(patient: str, start: float, intervals: np.ndarray) -> list[Row]:
    """RR intervals, each stamped at the beat that ends it."""
    times = start + np.cumsum(intervals)
    return [
        (patient, "rr_interval", T0 + float(t), float(v), 0, "hrs-1") for t, v in zip(times, intervals, strict=True)
    ]


def sinus_rr(n: int, rng: np.random.Generator, mean: float = 0.85) -> np.ndarray:
    """Sinus rhythm: respiratory sinus arrhythmia plus a little noise (nRMSSD ~ 0.03)."""
    beats = np.arange(n)
    return mean * (1 + 0.04 * np.sin(2 * np.pi * beats / 4.5) + 0.01 * rng.standard_normal(n))


def af_rr(n: int, rng: np.random.Generator, mean: float = 0.7) -> np.ndarray:
    """Atrial fibrillation: irregularly irregular intervals (coefficient of variation ~ 0.2)."""
    return np.clip(rng.normal(mean, 0.2 * mean, n), 0.35, 1.5)


def minutes(n: float, step: float) -> int:
    return int(n * 60 / step)


def scripted(rng_seed: int = 7) -> list[Row]:
    """One hour (plus baseline history) of scripted patients; see each block's comment."""
    rng = np.random.default_rng(rng_seed)
    rows: list[Row] = []
    # p-tachy: 135 bpm for 20 min at night (23:13 Paris), then 80 bpm: one night tachycardia.
    rows += heart_rate("p-tachy", 0, [135.0] * minutes(20, HR_STEP_S) + [80.0] * minutes(40, HR_STEP_S))
    rows += cgm("p-tachy", 0, [110.0] * 12)
    # p-fine: everything in range for an hour, sinus rhythm.
    rows += heart_rate("p-fine", 0, 72.0 + rng.integers(0, 7, minutes(60, HR_STEP_S)))
    rows += cgm("p-fine", 0, [105, 112, 120, 126, 130, 128, 122, 116, 110, 106, 104, 105])
    rows += rr("p-fine", 0, sinus_rr(4000, rng))
    # p-hypo: already at 50 mg/dL for 20 min: one severe hypoglycaemia (no extra "predicted" alert).
    rows += cgm("p-hypo", 0, [50.0] * 5 + [65.0, 80.0, 95.0, 105.0, 110.0, 110.0, 110.0])
    rows += heart_rate("p-hypo", 0, [88.0] * minutes(20, HR_STEP_S))
    # p-falling: 140 mg/dL falling 3 mg/dL/min, then recovering after a snack.
    falling = [140.0 - 15 * i for i in range(7)] + [60.0, 75.0, 95.0, 110.0, 120.0, 125.0, 125.0, 125.0]
    rows += cgm("p-falling", 0, falling)
    # p-meter: CGM in range, one fingerstick meter reading of 45 mg/dL: confirmed severe hypo.
    rows += cgm("p-meter", 0, [110.0] * 12)
    rows += [("p-meter", "glucose", T0 + 1000.0, 45.0, 0, "bgm-1")]
    # p-af: 10 min of sinus rhythm, 12 min of AF with ectopy and beat errors, then sinus again.
    af = af_rr(1000, rng)
    af[::37] *= 2.0  # missed beats
    rows += rr("p-af", 0, np.concatenate((sinus_rr(700, rng), af, sinus_rr(1500, rng))))
    return rows


def baseline_history(patient: str = "p-baseline") -> list[Row]:
    """13 h at a steady ~62 bpm (one reading a minute), then 40 min at 98 bpm (below every threshold)."""
    steady = [62.0 + (i % 5) for i in range(13 * 60)]
    rows = _series(patient, "heart_rate", -13 * 3600.0, steady, 60.0, "hrs-1")
    return rows + _series(patient, "heart_rate", 0.0, [98.0] * 40, 60.0, "hrs-1")
