"""Forecast detector: predicted glucose crossing a level within a horizon ("urgent low soon").

Three predictors, each vectorized over every reading of a batch (one row per reading of a
``(readings, FORECAST_MAX_POINTS)`` window matrix, see :mod:`detectors.history`):

``damped_trend`` (ours, before issue 17)
    A robust linear trend of ln(glucose / 140): least squares over the readings of the last
    ``window_s``; points whose residual exceeds 3 robust standard deviations (1.4826 x MAD,
    floored at :data:`LOG_NOISE_FLOOR`) are dropped and the line refitted once, so one spurious
    reading neither raises nor hides an alert. From the latest reading (the fitted value if that
    reading was the outlier) the trend is damped with time constant ``damping_s``:
    ``ln f(h) = ln f(0) + slope * tau * (1 - exp(-h / tau))``. It needs ``min_points`` readings
    spanning at least half the window. A predicted crossing counts only while the latest step
    itself still moves toward the level at ``confirm`` per minute or faster: most predicted lows
    that do not happen are falls already levelling off (benchmarks/evaluate_glucose.py).
``kalman`` (default since issue 17)
    A Kalman filter over the readings of the last ``window_s``, one vectorized step per window
    column: the state is blood glucose, its rate, the interstitial glucose the CGM measures (a
    first-order lag behind blood glucose) and the sensor's slow, correlated error (see
    :func:`kalman_path` and the sources in :mod:`detectors.const`; rises have their own, faster
    rate model, :data:`KALMAN_HIGH`). The path is *blood* glucose now
    and at the horizon (the rate damped with ``damping_s``), the latter moved by ``z`` standard
    deviations of its uncertainty toward the normal side; ``confirm`` applies to the filtered rate.
    ``KalmanParams.accel_min`` can also ask the filtered rate to be still growing (off by default).
    It needs no state beyond the recent readings every forecast already keeps.
``ar2``
    Nightscout's ``ar2`` plugin: ``y = ln(bg / 140)``, ``y[k+1] = -0.723 y[k-1] + 1.716 y[k]`` at
    5-minute steps, started from the latest reading and the value 5 minutes earlier (linearly
    interpolated from the previous reading), each step rounded and clamped to 36-400 mg/dL as
    Nightscout does. Kept as the baseline the default must beat (benchmarks/evaluate_glucose.py).

The signal is the most extreme predicted value over ``[now, now + horizon]`` (both predictors are
monotone in the horizon except AR2's slight mean reversion, so every step is considered). A
forecast alert is about a crossing still to come: while the reading itself is already beyond the
rule's least severe level, the threshold rules speak and the forecast is unknown (NaN: it neither
raises nor clears), so one hypoglycaemia does not raise a second, "predicted" alert.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from detectors.batch import BoolArray, FloatArray, MetricView
from detectors.columns import StateColumn, appended
from detectors.const import (
    CGM_ERROR_SD_MG_DL,
    CGM_ERROR_TAU_MIN,
    CGM_WHITE_SD_MG_DL,
    CLEARED,
    ESCALATED,
    FORECAST_MAX_POINTS,
    INTERSTITIAL_LAG_MIN,
    KALMAN_CONFIDENCE_Z,
    KALMAN_RATE_PRIOR_SD,
    KALMAN_RATE_WALK,
    METRIC_LABELS,
)
from detectors.events import format_duration, format_value
from detectors.history import History
from detectors.rules import Direction, ForecastRule, Period, ThresholdRule
from detectors.signal import SignalDetector
from detectors.threshold import during, level_of

# Nightscout lib/plugins/ar2.js: AR = [-0.723, 1.716], BG_REF = 140, BG_MIN = 36, BG_MAX = 400.
AR2_COEFFICIENTS: Final = (-0.723, 1.716)
AR2_REFERENCE_MG_DL: Final = 140.0
AR2_MIN_MG_DL: Final = 36.0
AR2_MAX_MG_DL: Final = 400.0
AR2_STEP_S: Final = 300.0
# CGM sensor noise is ~5 % (MARD ~9-10 %): a MAD of smaller residuals (in ln units) is luck, and a
# 3-sigma rejection at 15 % still catches the gross errors (a 110 -> 60 mg/dL jump is ln 0.6).
LOG_NOISE_FLOOR: Final = 0.05
OUTLIER_SIGMAS: Final = 3.0


@dataclass(frozen=True, slots=True)
class KalmanParams:
    """The glucose and CGM model of :func:`kalman_path` (sources in :mod:`detectors.const`)."""

    rate_walk: float = KALMAN_RATE_WALK
    rate_sd: float = KALMAN_RATE_PRIOR_SD
    error_sd: float = CGM_ERROR_SD_MG_DL
    error_tau_min: float = CGM_ERROR_TAU_MIN
    lag_min: float = INTERSTITIAL_LAG_MIN
    white_sd: float = CGM_WHITE_SD_MG_DL
    z: float = KALMAN_CONFIDENCE_Z
    # > 0: a predicted crossing counts only while the filtered rate is still growing toward the
    # level by at least this much per minute (mg/dL/min per min), measured against the rate at the
    # latest reading at least ``accel_lookback_min`` old. 0 (both default models): no such
    # condition. Evaluated for the high side (a meal's rise forecast past its inflection mostly
    # peaks below 250) and not adopted: it halved the non-actionable high alerts but missed
    # level-2 highs on held-out seeds (benchmarks/RESULTS.md, "Glucose, seventh round").
    accel_min: float = 0.0
    accel_lookback_min: float = 5.0


# The high side's rate walk, (mg/dL/min)^2 per minute: after a meal blood glucose climbs at 2-5
# mg/dL/min within 20-30 min (the simulated level-2 highs rose 2.5-5.6 mg/dL/min), which the low
# side's walk (0.3 mg/dL/min per 20 min) follows far too slowly; 0.08 lets the rate move ~1.3
# mg/dL/min per 20 min. The wider forecast this gives must clear the level by 1 SD of its own
# uncertainty. Both chosen on the training seed (benchmarks/RESULTS.md, "Glucose, fourth round").
KALMAN_HIGH_RATE_WALK: Final = 0.08
KALMAN_HIGH_CONFIDENCE_Z: Final = 1.0

# The models the ``kalman`` forecast rules use (module attributes so that benchmarks can vary them):
# ``KALMAN`` for falls (``direction: below``), ``KALMAN_HIGH`` for rises (``direction: above``).
KALMAN: KalmanParams = KalmanParams()
KALMAN_HIGH: KalmanParams = KalmanParams(rate_walk=KALMAN_HIGH_RATE_WALK, z=KALMAN_HIGH_CONFIDENCE_Z)


class ForecastDetector(SignalDetector):
    """One :class:`~detectors.rules.ForecastRule` over every patient."""

    def __init__(self, rule: ForecastRule) -> None:
        super().__init__(rule)
        self.model = rule.model
        self.history = History(FORECAST_MAX_POINTS - 1)
        # Forecast parameters per parameter row (see SignalDetector.rows).
        self.horizon_s: FloatArray = np.zeros(0)
        self.window_s: FloatArray = np.zeros(0)
        self.damping_s: FloatArray = np.zeros(0)
        self.min_points: FloatArray = np.zeros(0)
        self.crossed: FloatArray = np.zeros(0)
        self.confirm: FloatArray = np.zeros(0)

    def resize_state(self, n: int) -> None:
        """Room for ``n`` patients' recent readings."""
        self.history.resize(n)

    def add_row_extra(self, rule: ThresholdRule) -> None:
        """The forecast parameters of a new parameter row."""
        assert isinstance(rule, ForecastRule)
        self.horizon_s = appended(self.horizon_s, rule.horizon_s)
        self.window_s = appended(self.window_s, rule.window_s)
        self.damping_s = appended(self.damping_s, rule.damping_s)
        self.min_points = appended(self.min_points, float(rule.min_points))
        self.crossed = appended(self.crossed, self.sign * rule.levels[0].threshold)
        self.confirm = appended(self.confirm, rule.confirm)

    def configure(self, patient: int, rule: ThresholdRule) -> None:
        """Apply a per-patient override (the model itself is fixed per rule)."""
        assert isinstance(rule, ForecastRule)
        if rule.model != self.model:
            raise ValueError(f"an override of {self.name!r} must keep its forecast model")
        super().configure(patient, rule)

    def signal(self, view: MetricView) -> FloatArray:
        """Per reading: the most extreme predicted value within the horizon (NaN: cannot forecast)."""
        t, v = self.history.windows(view, FORECAST_MAX_POINTS)
        p = self.rows.of(view.patient)  # the parameter row of each reading's patient
        age = view.t[:, None] - t
        rate: FloatArray | None = None
        growing: BoolArray | None = None
        if self.model == "ar2":
            path = ar2_path(age, v, self.horizon_s[p], self.max_gap_s[p])
        elif self.model == "kalman":
            windows = (self.window_s[p], self.damping_s[p], self.horizon_s[p], self.min_points[p])
            params = KALMAN if self.sign < 0 else KALMAN_HIGH
            path, rate, accel = kalman_path(age, v, *windows, self.sign, params)
            if params.accel_min > 0:
                growing = self.sign * accel >= params.accel_min
        else:
            path = damped_trend_path(age, v, self.window_s[p], self.damping_s[p], self.horizon_s[p], self.min_points[p])
        extreme = self.sign * np.max(self.sign * path, axis=1)  # NaN (no forecast) propagates
        extreme = np.where(self.sign * view.value > self.crossed[p], np.nan, extreme)
        # An unconfirmed predicted crossing is unknown: it neither raises nor clears.
        if rate is None:
            step = (v[:, -1] - v[:, -2]) / (t[:, -1] - t[:, -2]) * 60.0
            confirmed = (self.sign * step >= self.confirm[p]) & (t[:, -1] - t[:, -2] <= self.max_gap_s[p])
        else:  # the filtered rate of blood glucose, not the last (noisy) step
            confirmed = self.sign * rate >= self.confirm[p]
        confirmed |= self.confirm[p] == 0
        if growing is not None:  # the rate itself still growing toward the level (KalmanParams.accel_min)
            confirmed &= growing
        extreme = np.where(~confirmed & (self.sign * extreme > self.crossed[p]), np.nan, extreme)
        # Quantized to 1e-6 mg/dL, far below clinical meaning, so that the last bits of a sum's
        # rounding never decide a threshold comparison (same result whatever the summation order).
        return np.floor(extreme * 1e6 + 0.5) / 1e6

    def export_extra(self, patient: int) -> dict[str, Any]:
        """The recent readings the next forecasts need."""
        return {"history": self.history.export_patient(patient)}

    def extra_columns(self) -> list[StateColumn]:
        """The recent readings."""
        return self.history.state_columns()

    def settle_extra(self, blocks: list[FloatArray]) -> BoolArray:
        """Which rows of recent readings an export and import would leave as they are."""
        return self.history.settle(blocks)

    def import_extra(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore the recent readings."""
        self.history.import_patient(patient, record.get("history"))

    def describe(self, rule: ThresholdRule, period: Period | None, state: str, level: int, value: float) -> str:
        """E.g. "Glucose predicted below 55 mg/dL within 20 min (now 82 mg/dL)"."""
        assert isinstance(rule, ForecastRule)
        label = METRIC_LABELS[rule.metric]
        now = "" if math.isnan(value) else f" (now {format_value(rule.metric, value)})"
        side = "below" if rule.direction is Direction.BELOW else "above"
        if state == CLEARED:
            clear, _ = rule.period_clear(period)
            back = "at or above" if rule.direction is Direction.BELOW else "at or below"
            return f"{label} forecast back {back} {format_value(rule.metric, clear)}{during(period)}{now}"
        lv = level_of(rule, period, level)
        limit = format_value(rule.metric, lv.threshold) if lv else "threshold"
        text = f"{label} predicted {side} {limit} within {format_duration(rule.horizon_s)}{during(period)}"
        if state == ESCALATED:
            return f"{text}: alert unacknowledged"
        return text + now


def damped_trend_path(
    age: FloatArray,
    v: FloatArray,
    window_s: FloatArray,
    damping_s: FloatArray,
    horizon_s: FloatArray,
    min_points: FloatArray,
) -> FloatArray:
    """Predicted values now and at the horizon, shape ``(rows, 2)``; NaN rows where the fit is not possible.

    ``age``/``v``: each row's window, seconds before now and values (NaN padding). The trend is fitted
    to ln(v / 140), like AR2: a fall of a given size matters more at 70 than at 200 mg/dL, and
    multiplicative falls level off in mg/dL as glucose drops.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.log(v / AR2_REFERENCE_MG_DL)
    use = (age <= window_s[:, None]) & np.isfinite(y)
    # The first line leaves the latest reading out: at the end of the window it has the most
    # leverage, so a spurious last reading would drag the line towards itself and hide.
    earlier = use.copy()
    earlier[:, -1] = False
    level, slope = _fit(age, y, earlier)
    fitted = ~np.isnan(slope)
    residual = np.abs(y - (level[:, None] - slope[:, None] * age))
    masked = np.where(earlier, residual, np.nan)
    # nanmedian warns on all-NaN rows: rows without a line keep every point (the check is skipped).
    masked[~fitted] = 0.0
    spread = np.nanmedian(masked, axis=1)
    sigma = np.maximum(1.4826 * spread, LOG_NOISE_FLOOR)
    use &= ~fitted[:, None] | (residual <= OUTLIER_SIGMAS * sigma[:, None])
    level, slope = _fit(age, y, use)
    fitted = ~np.isnan(slope)
    level, slope = _fit(age, y, use)
    span = np.max(np.where(use, age, 0.0), axis=1)
    enough = fitted & (use.sum(axis=1) >= min_points) & (span >= window_s / 2)
    # Anchored at the latest reading unless it was rejected as an outlier (then at the fitted line).
    anchor = np.where(use[:, -1], y[:, -1], level)
    gain = damping_s * -np.expm1(-horizon_s / damping_s)
    with np.errstate(over="ignore", invalid="ignore"):
        path = AR2_REFERENCE_MG_DL * np.exp(np.stack((anchor, anchor + slope * gain), axis=1))
    return np.where(enough[:, None], path, np.nan)


def _fit(age: FloatArray, v: FloatArray, use: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Least-squares line per row over the ``use``d points: value now and slope per second."""
    w = use.astype(np.float64)
    s = np.where(use, -age, 0.0)
    y = np.where(use, v, 0.0)
    n = w.sum(axis=1)
    sx, sy = s.sum(axis=1), y.sum(axis=1)
    sxx, sxy = (s * s).sum(axis=1), (s * y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = n * sxx - sx * sx
        slope = np.where(den > 0, (n * sxy - sx * sy) / np.where(den > 0, den, 1.0), np.nan)
        level = (sy - slope * sx) / n
    return level, slope


def ar2_path(age: FloatArray, v: FloatArray, horizon_s: FloatArray, max_gap_s: FloatArray) -> FloatArray:
    """Nightscout AR2 forecast: the current reading, then one value per 5-min step up to the horizon.

    Needs the previous reading within ``max_gap_s``; rows without one are NaN.
    """
    current, previous = v[:, -1], v[:, -2]
    elapsed = age[:, -2]
    ok = (elapsed > 0) & (elapsed <= max_gap_s) & (current >= AR2_MIN_MG_DL) & (previous >= AR2_MIN_MG_DL)
    safe = np.where(ok, elapsed, AR2_STEP_S)
    five_min_ago = current - (current - previous) * AR2_STEP_S / safe
    ok &= five_min_ago > 0  # a steep rise over a short step extrapolates below zero: no log, no forecast
    steps = int(np.ceil(np.max(horizon_s, initial=AR2_STEP_S) / AR2_STEP_S))
    with np.errstate(invalid="ignore", divide="ignore"):
        prev = np.log(five_min_ago / AR2_REFERENCE_MG_DL)
        curr = np.log(current / AR2_REFERENCE_MG_DL)
    columns = [current]
    for step in range(1, steps + 1):  # a loop over forecast steps, not readings
        # Rows without a forecast (not ``ok``: no previous reading, log of 0) carry inf and NaN
        # here (inf - inf is NaN); they are masked below, so their warnings mean nothing.
        with np.errstate(over="ignore", invalid="ignore"):
            prev, curr = curr, AR2_COEFFICIENTS[0] * prev + AR2_COEFFICIENTS[1] * curr
            raw = np.floor(AR2_REFERENCE_MG_DL * np.exp(curr) + 0.5)
        predicted = np.clip(raw, AR2_MIN_MG_DL, AR2_MAX_MG_DL)
        columns.append(np.where(step * AR2_STEP_S <= horizon_s, predicted, current))
    path: npt.NDArray[np.float64] = np.stack(columns, axis=1)
    return np.where(ok[:, None], path, np.nan)


def kalman_path(
    age: FloatArray,
    v: FloatArray,
    window_s: FloatArray,
    damping_s: FloatArray,
    horizon_s: FloatArray,
    min_points: FloatArray,
    sign: float,
    params: KalmanParams,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Blood glucose now and at the horizon, the filtered rate (mg/dL/min) and its trend, from a Kalman filter.

    The state is (blood glucose, its rate, interstitial glucose, sensor error): blood glucose
    moves with a rate that wanders (random walk), the interstitial glucose the CGM measures follows
    it with first-order lag ``params.lag_min`` (the plasma-to-interstitium exchange), and the CGM
    adds a slow, correlated error (first-order, ``params.error_sd`` mg/dL, correlation time
    ``params.error_tau_min``) plus white noise. Run over each row's readings of the last
    ``window_s`` (oldest first, one vectorized step per column); rows without a usable reading in
    the window (fewer than ``min_points``) are NaN. The forecast damps the rate with time constant ``damping_s``.
    The trend (mg/dL/min per min) is the rate now against the filtered rate at the latest used reading
    at least ``params.accel_lookback_min`` old (NaN when there is none).
    """
    rows, width = v.shape
    use = (age <= window_s[:, None]) & np.isfinite(v) & (v > 0)
    x = np.zeros((rows, 4))
    p = np.zeros((rows, 4, 4))
    started = np.zeros(rows, dtype=bool)
    last_t = np.full(rows, np.nan)
    then_rate = np.full(rows, np.nan)  # the filtered rate at the latest reading >= accel_lookback_min old
    then_t = np.full(rows, np.nan)
    lookback_s = params.accel_lookback_min * 60.0
    h = np.array([0.0, 0.0, 1.0, 1.0])
    q_rate, sd_e, tau_e, tau_g, r_white = (
        params.rate_walk,
        params.error_sd,
        params.error_tau_min,
        params.lag_min,
        params.white_sd**2,
    )
    for k in range(width):  # a loop over window columns, vectorized over readings
        ok = use[:, k]
        y = v[:, k]
        tk = -age[:, k] / 60.0
        # Start: blood = interstitial = reading, rate 0, the first reading's error unknown.
        new = ok & ~started
        if new.any():
            x[new] = np.stack([y[new], np.zeros(new.sum()), y[new], np.zeros(new.sum())], axis=1)
            p0 = np.zeros((4, 4))
            p0[0, 0] = p0[2, 2] = p0[0, 2] = p0[2, 0] = sd_e**2
            p0[1, 1] = params.rate_sd**2
            p0[3, 3] = sd_e**2
            p0[0, 3] = p0[3, 0] = p0[2, 3] = p0[3, 2] = -(sd_e**2)
            p[new] = p0
            last_t[new] = tk[new]
        step = ok & started
        if step.any():
            dt = np.clip(tk[step] - last_t[step], 0.0, None)
            f, q = _transition(dt, q_rate, sd_e, tau_e, tau_g)
            xs = (f @ x[step][:, :, None])[:, :, 0]
            ps = f @ p[step] @ f.transpose(0, 2, 1) + q
            # Measurement update: y = interstitial + error + white noise.
            s = ps[:, 2, 2] + ps[:, 3, 3] + 2 * ps[:, 2, 3] + r_white
            ph = ps @ h
            gain = ph / s[:, None]
            innov = y[step] - xs @ h
            x[step] = xs + gain * innov[:, None]
            p[step] = ps - gain[:, :, None] * ph[:, None, :]
            last_t[step] = tk[step]
        started |= ok
        if params.accel_min > 0:  # only the models that use the rate's trend pay for it
            old = ok & (age[:, k] >= lookback_s)
            then_rate = np.where(old, x[:, 1], then_rate)
            then_t = np.where(old, tk, then_t)
    # Predict from the last used reading to now (0 when it is the latest).
    now_dt = np.clip(-last_t, 0.0, None)
    blood, rate = x[:, 0] + x[:, 1] * now_dt, x[:, 1]
    gain_h = damping_s * -np.expm1(-horizon_s / damping_s) / 60.0
    var_h = p[:, 0, 0] + 2 * gain_h * p[:, 0, 1] + gain_h**2 * p[:, 1, 1]
    # ``z`` > 0 asks for a confident crossing: the bound on the normal side of the forecast.
    ahead = blood + rate * gain_h - sign * params.z * np.sqrt(np.maximum(var_h, 0.0))
    path = np.stack((blood, ahead), axis=1)
    ok_rows = started & (use.sum(axis=1) >= min_points)
    with np.errstate(invalid="ignore", divide="ignore"):
        accel = (rate - then_rate) / (last_t - then_t)
    accel = np.where(ok_rows & (last_t > then_t), accel, np.nan)
    return np.where(ok_rows[:, None], path, np.nan), np.where(ok_rows, rate, np.nan), accel


def _transition(
    dt: FloatArray, q_rate: float, sd_e: float, tau_e: float, tau_g: float
) -> tuple[FloatArray, FloatArray]:
    """Per row, the state transition over ``dt`` minutes and its process noise."""
    n = len(dt)
    f = np.zeros((n, 4, 4))
    f[:, 0, 0] = 1.0
    f[:, 0, 1] = dt
    f[:, 1, 1] = 1.0
    a = np.exp(-dt / tau_g) if tau_g > 0 else np.zeros(n)
    # Interstitial glucose relaxes towards blood glucose, which moves linearly over the step.
    f[:, 2, 2] = a
    f[:, 2, 0] = 1.0 - a
    f[:, 2, 1] = dt - tau_g * (1.0 - a)
    phi = np.exp(-dt / tau_e)
    f[:, 3, 3] = phi
    q = np.zeros((n, 4, 4))
    # Integrated random walk of the rate (continuous white noise of intensity q_rate on the rate).
    q[:, 0, 0] = q_rate * dt**3 / 3
    q[:, 0, 1] = q[:, 1, 0] = q_rate * dt**2 / 2
    q[:, 1, 1] = q_rate * dt
    q[:, 3, 3] = sd_e**2 * (1 - phi**2)
    return f, q
