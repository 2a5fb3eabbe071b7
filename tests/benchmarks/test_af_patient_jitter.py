"""Per-patient beat-time jitter tooling, twelfth round (benchmarks/af_patient_jitter.py), and family J."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from benchmarks import af_bins, af_candidates
from benchmarks import af_patient_jitter as apj
from benchmarks.rr_models import cohort, j_errors
from detectors import af_model, rhythm

CHOSEN = (0.5, 0.012, 0.04, 1.5, 0.04, 5, 0.8, 0.6, 1, 4, 0.55)


def windows(rr: np.ndarray) -> np.ndarray:
    return np.asarray(sliding_window_view(rr, 64)[::16])


def sinus(n: int, rng: np.random.Generator) -> np.ndarray:
    """An older adult's sinus rhythm: a slow breathing wave of +-1 % and a slow wander, 0.85 s."""
    i = np.arange(n)
    wander = np.cumsum(rng.normal(0, 0.001, n))
    return np.asarray(0.85 * (1 + 0.01 * np.sin(2 * np.pi * i / 4.5) + wander - wander.mean()))


def jittered(rr: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    e = rng.normal(0, sd, len(rr) + 1)
    return np.asarray(rr + e[1:] - e[:-1])


def base_verdicts(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rhythm._learned(rows, np.ones(len(rows), np.bool_)))


def test_grouped_cumsum_restarts_per_group() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    start = np.array([True, False, True, False, False, True])
    np.testing.assert_array_equal(apj.grouped_cumsum(values, start), [1, 3, 3, 7, 12, 6])


@contextmanager
def round_twelve_model() -> Iterator[None]:
    """The classifier this tooling was written for: the twelfth round's logistic model (08d2710), at 0.5."""
    saved = af_model.THRESHOLD
    af_model.THRESHOLD = 0.5  # type: ignore[misc]
    try:
        with af_bins.installed(af_candidates.base_model("08d2710")):
            yield
    finally:
        af_model.THRESHOLD = saved  # type: ignore[misc]


def test_a_jittered_sinus_patient_is_estimated_and_its_false_irregular_windows_vetoed() -> None:
    rng = np.random.default_rng(5)
    rows = windows(jittered(sinus(3000, rng), 0.03, rng))
    network = base_verdicts(rows)
    with round_twelve_model():
        plain = base_verdicts(rows)
        state = apj.PatientJitter(*CHOSEN)
        got = state.decide(np.zeros(len(rows), np.int64), rows, np.ones(len(rows), np.bool_), plain.copy())
    s_p = np.sqrt(state.total[0] / state.count[0])
    assert state.count[0] >= 5 and 0.015 < s_p < 0.03
    assert np.mean(plain == 1) > 0.2  # the twelfth round's model's specificity hole
    assert np.all(got <= plain) and np.mean(got == 1) < 0.5 * np.mean(plain == 1)
    assert np.mean(network == 1) < 0.75 * np.mean(plain == 1)  # the fourteenth round's network: less of it


def test_a_patient_in_af_from_the_start_keeps_todays_verdicts() -> None:
    """Low-variability AF with no regular stretch: no estimate, nothing vetoed."""
    rng = np.random.default_rng(6)
    rows = windows(jittered(0.8 * (1 + 0.07 * rng.normal(0, 1, 3000)), 0.02, rng))
    plain = base_verdicts(rows)
    state = apj.PatientJitter(*CHOSEN)
    got = state.decide(np.zeros(len(rows), np.int64), rows, np.ones(len(rows), np.bool_), plain.copy())
    np.testing.assert_array_equal(got, plain)


def test_the_state_carries_over_batches_and_patients_are_apart() -> None:
    rng = np.random.default_rng(7)
    a = windows(jittered(sinus(2000, rng), 0.025, rng))
    b = windows(sinus(2000, rng))
    rows = np.concatenate([a, b])
    patient = np.r_[np.zeros(len(a), np.int64), np.ones(len(b), np.int64)]
    order = np.argsort(np.r_[np.arange(len(a)), np.arange(len(b))], kind="stable")  # interleaved in time
    rows, patient = rows[order], patient[order]
    plain = base_verdicts(rows)
    ones = np.ones(len(rows), np.bool_)
    whole = apj.PatientJitter(*CHOSEN)
    together = whole.decide(patient, rows, ones, plain.copy())
    parts = apj.PatientJitter(*CHOSEN)
    half = len(rows) // 2
    split = np.r_[parts.decide(patient[:half], rows[:half], ones[:half], plain[:half].copy()),
                  parts.decide(patient[half:], rows[half:], ones[half:], plain[half:].copy())]
    np.testing.assert_array_equal(together, split)
    np.testing.assert_allclose(whole.total, parts.total)
    assert parts.count[1] == 0 or np.sqrt(parts.total[1] / parts.count[1]) < 0.012


def test_the_swap_is_installed_for_its_run_only() -> None:
    saved_signal, saved_irregular = rhythm.RhythmDetector.signal, rhythm.irregular
    with apj.installed("0.5,12,40,1.5,0.04,5,0.8,0.6,1,4,0.55"):
        assert rhythm.irregular is not saved_irregular
    assert rhythm.RhythmDetector.signal is saved_signal and rhythm.irregular is saved_irregular


def test_family_j_jitter_is_heavy_tailed_and_its_cohort_is_whole() -> None:
    rng = np.random.default_rng(8)
    rr = np.full(5000, 0.8)
    out = j_errors(rr, rng)
    steps = out[(out > 0.6) & (out < 1.0)] - 0.8  # intervals kept whole: the timing error's differences
    kurtosis = np.mean(steps**4) / np.mean(steps**2) ** 2
    assert kurtosis > 3.5  # Gaussian differences: 3
    recordings = cohort("J", 1, 40, (5, 15), 99)
    assert len(recordings) == 36 and all(len(r.rr) > 1000 for r in recordings)
