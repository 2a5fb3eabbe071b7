"""Jitter-aware AF candidate tooling, eleventh round (benchmarks/af_jitter.py)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from benchmarks import af_jitter
from benchmarks.rr_models import cohort
from detectors import af_model, rhythm


def windows(rr: np.ndarray) -> np.ndarray:
    return np.asarray(sliding_window_view(rr, 64)[::16])


def timing_jitter(n: int, period: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    e = rng.normal(0, sd, n + 1)
    return np.asarray(period + e[1:] - e[:-1])


def test_jitter_on_a_steady_rhythm_reads_as_jitter_and_independent_af_does_not() -> None:
    """Beat-time jitter: lag-1 autocorrelation ~ -0.5, nothing left once de-jittered, Q ~ 1 and the
    implied jitter its SD; independent AF: lag-1 ~ 0, its own SD kept, Q ~ 4."""
    rng = np.random.default_rng(3)
    jit = windows(timing_jitter(4000, 0.9, 0.02, rng))
    af = windows(0.8 * (1 + 0.1 * rng.normal(0, 1, 4000)))
    fj = af_jitter.jitter_features(jit, af_model.cleaned(jit))
    fa = af_jitter.jitter_features(af, af_model.cleaned(af))
    assert -0.6 < np.median(fj[:, 0]) < -0.4
    assert abs(np.median(fa[:, 0])) < 0.1
    assert np.median(np.exp(fj[:, 1])) < 0.015  # a jitter SD of 0.031 x the median before
    assert 0.08 < np.median(np.exp(fa[:, 1])) < 0.12
    qj, sj = af_jitter.jitter_stats(jit, af_model.cleaned(jit))
    qa, _ = af_jitter.jitter_stats(af, af_model.cleaned(af))
    assert 0.8 < np.median(qj) < 1.3 and 3.0 < np.median(qa) < 5.0
    assert abs(np.median(sj) - 0.02) < 0.003


def test_a_jittered_copy_keeps_the_recording_and_its_labels() -> None:
    rec = cohort("A", 1, 40, (5, 15), 1000)[3]
    copy = af_jitter.jittered(rec, np.random.default_rng(1), 0.02)
    assert copy.rr.shape == rec.rr.shape and copy.episodes == rec.episodes and copy.t is rec.t
    steps = copy.rr - rec.rr
    assert 0.02 < np.std(steps) < 0.037  # sqrt(2) x 20 ms
    assert np.corrcoef(steps[1:], steps[:-1])[0, 1] < -0.4


def test_the_jitter_veto_is_installed_for_its_run_only() -> None:
    """``jit:Q,S`` turns irregular windows that read as jitter regular, and restores the detector."""
    rng = np.random.default_rng(4)
    rows = windows(timing_jitter(3000, 0.7, 0.03, rng))
    saved = rhythm._learned
    plain = saved(rows, np.ones(len(rows), np.bool_))
    with af_jitter.veto_installed("1.5,40"):
        vetoed = rhythm._learned(rows, np.ones(len(rows), np.bool_))
    assert rhythm._learned is saved
    assert np.all(vetoed <= plain)
    assert vetoed.mean() < plain.mean()
