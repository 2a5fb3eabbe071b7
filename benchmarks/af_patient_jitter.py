"""Per-patient beat-time jitter for AF screening (issue 17, twelfth round): benchmark tooling.

Reproduce (see benchmarks/RESULTS.md, "AF screening, twelfth round")::

    .venv/bin/python benchmarks/af_patient_jitter.py --families A B C D H I Aj Bj Ij \
        --seeds 0 1 2 3 4 5 6 7 8 9 --base 2600 --variants default pj:0.5,12,40,1.5,99,5,0.8,0.6,1,4,0.55

A wrist PPG or a chest strap times each beat with an error e(i) of SD s; every interval carries
e(i) - e(i-1). The shipped model then calls older, low-variability sinus rhythm irregular (47-62 %
of windows at 20-30 ms). Round 11's global correction (features that discount jitter in every
window) could not tell jitter from low-variability AF in one window. Here the jitter is a property
of the *patient's device*, estimated from that patient's own windows the shipped model calls
regular, and only what that patient has shown is discounted later. Variant
``pj:P_REG,S_MIN,CAP,R,C0,N_MIN[,P_HI[,AGREE[,VALUE[,STEPS[,SHAPE]]]]]`` of ``af_bins``:

1. per judged window: ``s_d2``, the robust SD of the second differences of the kept intervals
   (median |RR(i+1) - 2 RR(i) + RR(i-1)| / 0.6745 / sqrt(20): white jitter on beat times gives 20
   s^2, a smooth rhythm little), and ``s_ac`` = sqrt(max(-acov(1), 0)) of the kept intervals
   (jitter: s; a smooth or white rhythm: ~0);
2. a window *counts* for its patient when the shipped model calls it regular with probability <
   ``P_REG``, its estimate is at most ``CAP`` ms, and (each guard off at 0): ``AGREE``: ``s_ac`` /
   ``s_d2`` within [AGREE, 1 / AGREE] (both see the same s); ``STEPS``: no successive difference
   above STEPS * sqrt(6) * ``s_d2`` (an ectopic beat's short-long pair is not jitter); ``SHAPE``:
   the model's spectral-peak share <= SHAPE and its smallest lag-2..6 difference ratio >= SHAPE
   (broadband and not repeating: fast breathing of the young and geminy are not jitter). Its
   estimate is ``s_d2`` (VALUE 0), ``s_ac`` (1) or the smaller (2; also without AGREE);
3. per patient, s_p = the root mean square of the estimates of the windows that counted so far,
   once there are ``N_MIN`` of them; otherwise 0, and the patient keeps today's behaviour;
4. a window the shipped model calls irregular is called regular when s_p >= ``S_MIN`` ms, the
   model's probability of AF is < ``P_HI``, the window's own ``s_d2`` <= ``R`` * s_p (its
   beat-to-beat irregularity is what this patient's jitter explains) and its de-jittered CV,
   sqrt(max(var - 2 s_p^2, 0)) / mean of the kept intervals, is < ``C0`` (99: no such test).

The detector's ``signal`` is swapped for the run (on the same recordings in one process as
``default``); the per-patient state lives on the detector instance for the run only. Families
``Xj`` are family X's cohorts with Gaussian beat-time jitter, one SD per recording, uniform 0-30
ms (tuning data, seeds offset by 500 from X's).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import af_bins  # noqa: E402
from detectors import af_model, rhythm  # noqa: E402
from detectors.batch import MetricView  # noqa: E402

PEAK = af_model.FEATURES.index("spectral_peak")
MIN_LAG = af_model.FEATURES.index("log_min_lag_ratio")


def window_jitter(rr: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row (s): ``s_d2``, ``s_ac``, the kept intervals' variance (s^2) and mean (s)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d2 = rr[:, 2:] - 2 * rr[:, 1:-1] + rr[:, :-2]
        ok = keep[:, 2:] & keep[:, 1:-1] & keep[:, :-2]
        a = np.where(ok, np.abs(d2), np.inf)
        # masked median: sort, take the middle of the finite ones
        a.sort(axis=1)
        m = ok.sum(axis=1)
        rows = np.arange(len(rr))
        lo = a[rows, np.maximum((m - 1) // 2, 0)]
        hi = a[rows, np.maximum(m // 2, 0)]
        med = np.where(m > 0, (lo + hi) / 2, np.nan)
        s_d2 = med / 0.6745 / np.sqrt(20)
        n = keep.sum(axis=1)
        mean = np.where(keep, rr, 0.0).sum(axis=1) / n
        c = np.where(keep, rr - mean[:, None], 0.0)
        var = (c * c).sum(axis=1) / n
        pair = keep[:, 1:] & keep[:, :-1]
        acov = np.where(pair, c[:, 1:] * c[:, :-1], 0.0).sum(axis=1) / pair.sum(axis=1)
        s_ac = np.sqrt(np.maximum(-acov, 0.0))
    return s_d2, s_ac, var, mean


def grouped_cumsum(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at each row where ``group_start`` is True (rows grouped)."""
    total = np.cumsum(values)
    before = np.where(group_start, total - values, 0.0)
    return np.asarray(total - np.maximum.accumulate(np.where(group_start, before, -np.inf)))


class PatientJitter:
    """Per-patient running sum of jitter estimates squared and their count (the benchmark's state)."""

    def __init__(self, p_reg: float, s_min: float, cap: float, r: float, c0: float, n_min: float,
                 p_hi: float = 1.01, agree: float = 0.0, value: float = 0.0, steps: float = 0.0,
                 shape: float = 0.0) -> None:
        self.p_reg, self.s_min, self.cap, self.r, self.c0, self.n_min = p_reg, s_min, cap, r, c0, n_min
        self.p_hi, self.agree, self.value, self.steps, self.shape = p_hi, agree, value, steps, shape
        self.total = np.zeros(0)
        self.count = np.zeros(0)

    def grow(self, n: int) -> None:
        if n > len(self.total):
            self.total = np.r_[self.total, np.zeros(n - len(self.total))]
            self.count = np.r_[self.count, np.zeros(n - len(self.count))]

    def decide(self, patient: np.ndarray, rr: np.ndarray, complete: np.ndarray, verdict: np.ndarray) -> np.ndarray:
        """The verdicts after the per-patient jitter veto; updates the state (rows in time order per patient)."""
        if len(patient) == 0:
            return verdict
        self.grow(int(patient.max()) + 1)
        safe = np.where(complete[:, None] & np.isfinite(rr).all(axis=1)[:, None], rr, 1.0)
        keep = af_model.cleaned(np.maximum(safe, 1e-9))
        cols = af_model.features(safe, keep)
        usable = complete & np.isfinite(cols).all(axis=1) & (keep.sum(axis=1) * 2 >= rr.shape[1])
        p = np.where(usable, af_model.probability(np.where(usable[:, None], cols, 0.0)), np.nan)
        s_d2, s_ac, var, mean = window_jitter(safe, keep)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = s_ac / s_d2
        s_w = np.minimum(s_d2, s_ac) if self.agree <= 0 or self.value == 2 else s_ac if self.value == 1 else s_d2
        alike = (ratio >= self.agree) & (ratio <= 1 / self.agree) if self.agree > 0 else np.ones(len(s_w), np.bool_)
        if self.steps > 0:  # no step beyond what Gaussian jitter of s_d2 makes (an ectopic beat's short-long pair)
            pair = keep[:, 1:] & keep[:, :-1]
            biggest = np.where(pair, np.abs(np.diff(safe, axis=1)), 0.0).max(axis=1)
            alike &= biggest <= self.steps * np.sqrt(6) * s_d2
        if self.shape > 0:  # broadband and not repeating (fast breathing and geminy are not jitter)
            alike &= (cols[:, PEAK] <= self.shape) & (cols[:, MIN_LAG] >= np.log(self.shape))
        qualifies = usable & (verdict == 0) & (p < self.p_reg) & (s_w <= self.cap) & np.isfinite(s_w) & alike
        order = np.argsort(patient, kind="stable")
        pt = patient[order]
        start = np.r_[True, pt[1:] != pt[:-1]]
        add = np.where(qualifies[order], s_w[order] ** 2, 0.0)
        one = qualifies[order].astype(np.float64)
        tot = grouped_cumsum(add, start) + self.total[pt]
        cnt = grouped_cumsum(one, start) + self.count[pt]
        last = np.r_[start[1:], True]
        self.total[pt[last]] = tot[last]
        self.count[pt[last]] = cnt[last]
        s_p = np.zeros(len(patient))
        s_p[order] = np.where(cnt >= self.n_min, np.sqrt(tot / np.maximum(cnt, 1)), 0.0)
        with np.errstate(invalid="ignore"):
            dj_cv = np.sqrt(np.maximum(var - 2 * s_p**2, 0.0)) / mean
            veto = (verdict == 1) & usable & (p < self.p_hi) & (s_p >= self.s_min)
            veto &= (s_d2 <= self.r * s_p) & (dj_cv < self.c0)
        return np.where(veto, 0.0, verdict)


@contextlib.contextmanager
def installed(args: str) -> Iterator[None]:
    """``RhythmDetector.signal`` with the per-patient jitter veto for one run (``pj:...`` variants)."""
    values = [float(v) for v in args.split(",")]
    defaults = [1.01, 0.0, 0.0, 0.0, 0.0]  # P_HI, AGREE, VALUE, STEPS, SHAPE
    p_reg, s_min_ms, cap_ms, r, c0, n_min, p_hi, agree, value, steps, shape = [*values, *defaults[len(values) - 6:]]
    saved_signal = rhythm.RhythmDetector.signal
    saved_irregular = rhythm.irregular
    states: dict[int, PatientJitter] = {}
    current: dict[str, Any] = {}

    def irregular(rr: np.ndarray, complete: np.ndarray, params: Any) -> np.ndarray:
        verdict = saved_irregular(rr, complete, params)
        state: PatientJitter = current["state"]
        patient: np.ndarray = current["patient"]
        return state.decide(patient, rr, complete & np.isfinite(rr).all(axis=1), verdict)

    def signal(self: rhythm.RhythmDetector, view: MetricView) -> np.ndarray:
        p = view.patient
        r_ = self.rows.of(p)
        rank = np.arange(len(view)) - view.per_sample(view.starts)
        count = self.beats[p] + rank + 1
        judged = np.flatnonzero(np.mod(count, self.params["every"][r_]) == 0)
        state = states.setdefault(id(self), PatientJitter(
            p_reg, s_min_ms / 1000, cap_ms / 1000, r, c0, n_min, p_hi, agree, value, steps, shape))
        current["state"], current["patient"] = state, p[judged]
        return np.asarray(saved_signal(self, view))

    rhythm.RhythmDetector.signal = signal  # type: ignore[method-assign]
    rhythm.irregular = irregular  # type: ignore[assignment]
    try:
        yield
    finally:
        rhythm.RhythmDetector.signal = saved_signal  # type: ignore[method-assign]
        rhythm.irregular = saved_irregular


def main() -> int:
    """Run ``af_bins`` with ``pj:`` variants (its families include the jittered ``Xj``)."""
    af_bins.SWAPS["pj"] = installed
    return af_bins.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
