"""AF candidate tooling, ninth and tenth rounds (af_candidates, af_bins variants, af_second, family I)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter

from benchmarks import af_bins, af_candidates, af_second, train_af
from benchmarks.rr_models import a_geminy, a_sinus, a_sinus_fast_breathing, cohort, h_af
from detectors import af_model, rhythm
from detectors.rhythm import irregular
from tests.detectors.test_af_screening import rule_params


def flatness(rr: np.ndarray) -> np.ndarray:
    """The whitened spectral flatness of each 64-beat window (every 16 beats) of ``rr``."""
    rows = sliding_window_view(rr, 64)[::16]
    return np.exp(af_candidates.features(rows, af_model.cleaned(rows))[:, -1])


def test_whitened_flatness_tells_alternating_af_from_breathing_at_few_beats_a_breath() -> None:
    """AF of lag-1 correlation -0.6 is white once whitened (~0.6); breathing alternating at 2-3.5
    beats a breath stays a line; independent AF is as flat as the correlated one."""
    rng = np.random.default_rng(5)
    correlated = 0.8 * (1 + 0.1 * lfilter([0.8], [1.0, 0.6], rng.normal(0, 1, 3000)))
    independent = 0.8 * (1 + 0.1 * rng.normal(0, 1, 3000))
    breathing = a_sinus_fast_breathing(3000, rng)
    assert abs(np.median(flatness(correlated)) - np.median(flatness(independent))) < 0.05
    assert np.median(flatness(correlated)) > 0.5
    assert np.median(flatness(breathing)) < 0.3


def test_a_model_variant_is_installed_for_its_run_only() -> None:
    """``af_bins.installed`` swaps the classifier's features and constants, and restores them."""
    base = af_candidates.base_model("08d2710")
    before = af_model.features, af_model.MEAN, af_model.SCALE, af_model.probability
    rows = sliding_window_view(h_af(400, np.random.default_rng(6), low=True), 64)[::16]
    plain = af_model.probability(af_model.features(rows, af_model.cleaned(rows)))
    picked = af_bins.Model((0, 1, 2), base.mean[:3], base.scale[:3], np.zeros(9), 3.0)
    with af_bins.installed(picked):
        assert af_model.features(rows, af_model.cleaned(rows)).shape == (len(rows), 3)
        p = af_model.probability(af_model.features(rows, af_model.cleaned(rows)))
        assert np.allclose(p, 1 / (1 + np.exp(-3.0)))
    after = af_model.features, af_model.MEAN, af_model.SCALE, af_model.probability
    assert all(a is b for a, b in zip(after, before, strict=True))
    np.testing.assert_array_equal(af_model.probability(af_model.features(rows, af_model.cleaned(rows))), plain)


def test_a_fourteen_feature_model_runs_through_the_detector() -> None:
    """A model of ``af_candidates.features`` (shipped thirteen + log_flatness) judges windows with
    the rhythm detector's code; with the twelfth round's logistic constants and the fourteenth weight
    0 it gives that model's verdicts."""
    base = af_candidates.base_model("08d2710")
    rows = sliding_window_view(h_af(800, np.random.default_rng(7), low=False), 64)[::16]
    params = {name: np.full(len(rows), value) for name, value in
              {"model": 1.0, "trim": 8.0, "nrmssd": 0.1, "tpr_low": 0.54, "tpr_high": 0.77, "entropy": 0.7}.items()}
    i, j = np.triu_indices(14)
    weights = np.zeros(len(i) + 14)
    weights[:13] = base.weights[:13]
    old_i, old_j = np.triu_indices(13)
    old_pair = {(a, b): k for k, (a, b) in enumerate(zip(old_i, old_j, strict=True))}
    for k, (a, b) in enumerate(zip(i, j, strict=True)):
        if (a, b) in old_pair:
            weights[14 + k] = base.weights[13 + old_pair[(a, b)]]
    wide = af_bins.Model(af_candidates.ALL, np.r_[base.mean, 0.0], np.r_[base.scale, 1.0], weights, base.bias,
                         af_candidates.features)
    saved = af_model.THRESHOLD
    af_model.THRESHOLD = 0.5  # type: ignore[misc]  # the logistic model's threshold
    try:
        with af_bins.installed(base):
            shipped = irregular(rows, np.ones(len(rows), np.bool_), params)
        with af_bins.installed(wide):
            got = irregular(rows, np.ones(len(rows), np.bool_), params)
    finally:
        af_model.THRESHOLD = saved  # type: ignore[misc]
    np.testing.assert_array_equal(got, shipped)


def test_family_h_draws_every_cell_with_one_paroxysm_where_labelled() -> None:
    recordings = cohort("H", 1, 40, (5, 15), 9)
    assert len(recordings) == 36
    for rec in recordings:
        assert np.all(rec.rr > 0) and abs(rec.t[-1] - 2400) < 5
        assert len(rec.episodes) == (rec.af_kind is not None)
        for a, b in rec.episodes:
            assert 5 * 60 - 1 <= b - a <= 15 * 60 + 1


def test_family_i_draws_every_cell_with_one_paroxysm_where_labelled() -> None:
    recordings = cohort("I", 1, 40, (5, 15), 9)
    assert len(recordings) == 36
    for rec in recordings:
        assert np.all(rec.rr > 0) and abs(rec.t[-1] - 2400) < 5
        assert len(rec.episodes) == (rec.af_kind is not None)
        for a, b in rec.episodes:
            assert 5 * 60 - 1 <= b - a <= 15 * 60 + 1
        if rec.af_kind == "AF low variability":  # the steerer's band for rate-controlled AF (before errors)
            assert rec.af_rr is not None
            assert 0.07 < np.std(rec.af_rr) / np.mean(rec.af_rr) < 0.13


def test_the_second_opinion_is_installed_for_its_run_only_and_sees_alternating_af() -> None:
    """Tenth round: af_second's guarded Dash rule calls more alternating AF (lag-1 -0.6, CV 0.12)
    irregular than the shipped classifier, keeps trigeminy regular, and restores the detector."""
    rng = np.random.default_rng(33)
    alternating = sliding_window_view(0.8 * (1 + 0.12 * lfilter([0.8], [1.0, 0.6], rng.normal(0, 1, 3000))), 64)[::16]
    trigeminy = sliding_window_view(a_geminy(a_sinus(3000, rng), rng, 3), 64)[::16]

    def share(rows: np.ndarray) -> float:
        return float(np.nanmean(irregular(rows, np.ones(len(rows), np.bool_), rule_params(len(rows)))))

    shipped = rhythm._learned
    before = share(alternating)
    with af_second.installed("0.5,0,0.1,0.6,0.62"):
        after, regular = share(alternating), share(trigeminy)
    assert rhythm._learned is shipped
    assert after > before + 0.2
    assert regular < 0.02


def test_fit_mlp_is_deterministic_and_learns_a_curved_boundary() -> None:
    """Thirteenth round: train_af's network fit gives the same weights for the same seed, and fits a
    boundary no linear model of the raw inputs can (inside / outside a circle)."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (4000, 2))
    y = (np.hypot(x[:, 0], x[:, 1]) < 1.0).astype(np.float64)
    first = train_af.fit_mlp(x, y, hidden=16, epochs=80, seed=1)
    second = train_af.fit_mlp(x, y, hidden=16, epochs=80, seed=1)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    test = rng.normal(0, 1, (2000, 2))
    truth = np.hypot(test[:, 0], test[:, 1]) < 1.0
    assert np.mean((af_model.network(test, *first) >= 0.5) == truth) > 0.95


def test_the_shipped_probability_is_the_network_of_its_constants() -> None:
    """``af_model.probability`` is ``af_model.network`` on af_model's constants, and the block
    ``train_af.py --write`` writes, read back as the candidate tooling reads git, is the same network."""
    rows = sliding_window_view(h_af(800, np.random.default_rng(8), low=True), 64)[::16]
    columns = af_model.features(rows, af_model.cleaned(rows))
    net = (af_model.MEAN, af_model.SCALE, af_model.HIDDEN_WEIGHTS, af_model.HIDDEN_BIAS, af_model.OUTPUT_WEIGHTS,
           af_model.OUTPUT_BIAS)
    shipped = af_model.probability(columns)
    assert np.mean(shipped >= af_model.THRESHOLD) > 0.5  # low-variability AF of family H: mostly irregular
    block = train_af.constants(*net)  # what --write writes
    assert "HIDDEN_WEIGHTS: Final = np.array(" in block and ".reshape(13, 16)" in block
    read = af_candidates.model_from_source(block)  # as the candidate tooling reads it from git
    again = read.judge(columns)
    np.testing.assert_allclose(again, shipped, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(again >= af_model.THRESHOLD, shipped >= af_model.THRESHOLD)
