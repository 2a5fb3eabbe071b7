"""AF screening of the default rules: the learned window classifier, and metrics pinned per episode.

The pinned numbers are those measured when the model was fitted (benchmarks/RESULTS.md, "AF
screening, fifth round (issue 17)"), on one test seed of the design family A, one of the
validation family B, one of family C, one of the fourth round's family D, one of the fifth
round's held-out family E, one of the sixth round's held-out family F and one of the seventh
round's held-out family G (the first seeds of their evaluations; never training seeds; F 7400
measured with the 90 s rule, "AF screening, sixth round"; G 8700 with the seventh round's rule,
the same numbers as the sixth round's rule): a change that alerts fewer AF episodes, raises
alerts in more non-AF segments or alerts later than 5 min fails here. (Family A's young sinus
changed in the fourth and fifth rounds, so A 2000 is a different cohort from earlier rounds'.)
Since the fourteenth round (the network classifier) the pins are its numbers on the same seeds
(B, F and G one more episode, B and E one more segment free than before), and one seed each of
families H, I and J (never used for tuning) is pinned too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from benchmarks.evaluate_af import run, summary
from benchmarks.rr_models import (
    a_af,
    a_errors,
    a_geminy,
    a_sinus,
    a_sinus_breathing,
    a_sinus_breaths,
    b_sinus,
    c_af,
    c_ectopy,
    c_errors,
    c_errors_traced,
    c_sinus,
    cohort,
)
from detectors import Engine, af_model
from detectors.rhythm import _params, irregular
from detectors.rules import RhythmRule
from rpm_core.rules import load_rules, parse_rules
from tests.detectors.reference import af_verdict, model_columns

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def default_rule() -> RhythmRule:
    rule = load_rules(ROOT / "alert_rules.yaml").by_name()["af_screening"]
    assert isinstance(rule, RhythmRule)
    return rule


def rule_params(n: int) -> dict[str, np.ndarray]:
    """The default rule's rhythm parameters for ``n`` window rows (as the detector passes them)."""
    return {name: np.full(n, value) for name, value in _params(default_rule()).items()}


def verdicts(rr: np.ndarray) -> np.ndarray:
    """The default rule's verdict on each 64-beat window (every 16 beats) of ``rr``."""
    rows = np.lib.stride_tricks.sliding_window_view(rr, 64)[::16]
    return irregular(rows, np.ones(len(rows), np.bool_), rule_params(len(rows)))


def test_rate_controlled_af_with_beat_errors_is_irregular() -> None:
    rng = np.random.default_rng(7)
    rr = a_errors(a_af(2000, rng, low=True), rng)
    assert np.mean(verdicts(rr) == 1.0) > 0.8


@pytest.mark.parametrize("every", [2, 3])
def test_bigeminy_and_trigeminy_are_not_irregular(every: int) -> None:
    rng = np.random.default_rng(8)
    rr = a_geminy(a_sinus(2000, rng), rng, every)
    assert np.mean(verdicts(rr) == 1.0) < 0.05


def test_sinus_arrhythmia_of_the_young_is_not_irregular() -> None:
    rng = np.random.default_rng(9)
    rr = a_sinus(2000, rng, young=True)
    assert np.mean(verdicts(rr) == 1.0) < 0.05


@pytest.mark.parametrize("errors", [False, True])
def test_breathing_driven_sinus_arrhythmia_of_the_young_is_rarely_irregular(errors: bool) -> None:
    """Respiration in time at 8-30 breaths a minute, +-5-20 % at 40-80 bpm (issue 17, fourth round).

    The beats per breath are not an integer and drift within a window, so the lag-2..6 feature does
    not see the pattern; before ``log_ar_ratio`` and ``spectral_peak`` 7.6 % (8.1 % with beat
    errors) of these windows were irregular on these seeds, one recording 58-62 %.
    """
    shares = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        rr = a_sinus_breathing(3000, rng)
        shares.append(np.mean(verdicts(a_errors(rr, rng) if errors else rr) == 1.0))
    assert np.mean(shares) < 0.05, shares


def test_integral_pulse_frequency_sinus_arrhythmia_of_the_young_is_rarely_irregular() -> None:
    """Family B's young sinus rhythm (respiration in time through an IPFM model), the third round's miss.

    With the third round's model 28.6 % of these windows were irregular (seeds 0-9; four
    recordings 47-63 %); with the fourth round's 3.0 %.
    """
    shares = [np.mean(verdicts(b_sinus(3000, np.random.default_rng(seed), young=True)) == 1.0) for seed in range(10)]
    assert np.mean(shares) < 0.06, shares


def test_clustered_ectopy_of_varying_coupling_is_rarely_irregular() -> None:
    """Premature beats in clusters (up to ~30 % while one lasts), coupling 0.5-0.9 beat to beat.

    Before the ``compensated`` feature 5-20 % of these windows were irregular (mean 10 % on these
    seeds), enough for a ward patient to raise ~4 false AF alerts a day.
    """
    shares = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        shares.append(np.mean(verdicts(c_ectopy(c_sinus(3000, rng), rng, 0.15)) == 1.0))
    assert np.mean(shares) < 0.04, shares


@pytest.mark.parametrize("low", [False, True])
def test_af_with_missed_beats_extra_beats_and_spurious_triggers_is_irregular(low: bool) -> None:
    shares = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        shares.append(np.mean(verdicts(c_errors(c_af(3000, rng, low=low), rng)) == 1.0))
    assert np.mean(shares) > (0.85 if low else 0.97), shares


def test_traced_beat_errors_make_the_same_intervals_and_say_where_they_come_from() -> None:
    rr = np.random.default_rng(12).uniform(0.6, 1.2, 5000)
    plain = c_errors(rr, np.random.default_rng(13))
    traced, source = c_errors_traced(rr, np.random.default_rng(13))
    np.testing.assert_array_equal(plain, traced)
    assert len(source) == len(traced) and (np.diff(source) >= 0).all() and source[-1] < len(rr)
    assert len(traced) != len(rr)  # some errors were made
    whole = np.flatnonzero(np.diff(source, append=len(rr)) == 1)  # every input interval up to here is out
    added = np.cumsum(traced)[whole] - np.cumsum(rr)[source[whole]]
    # missed and extra beats keep the time; only spurious triggers add some (0.1-0.3 s each)
    assert (added > -1e-9).all() and (np.diff(added) > -1e-9).all() and added[-1] > 0.1


def test_unusable_windows_are_unknown() -> None:
    rr = np.full((4, 64), 0.8)
    rr[1] = 0.8 * 4.0 ** np.linspace(-1, 1, 64)[np.random.default_rng(3).permutation(64)]  # 0.2-3.2 s:
    # most beats outside 0.6-1.6 x the median for both filters (the model's and the Dash criteria's)
    rr[2, 5] = -1.0  # not an interval
    rr[3, ::2] = 3.0  # the model's filter rejects every beat; the Dash criteria keep the 3 s ones, which repeat
    got = irregular(rr, np.array([True, True, True, True]), rule_params(4))
    assert got[0] == 0.0 and np.isnan(got[1]) and np.isnan(got[2]) and got[3] == 0.0


@pytest.mark.parametrize("cv", [0.4, 0.5])
def test_very_irregular_af_is_judged_not_left_unknown(cv: float) -> None:
    """AF so irregular (CV 0.4-0.5) that the model's beat-error filter rejects most of its beats.

    Its short cycles look like split beats (dropped with both neighbours) and its long ones like
    missed beats: before the seventh round (issue 17) 65-98 % of these windows were unknown and
    2-33 % irregular, so a paroxysm of it raised no alert; the Dash criteria judge such windows now.
    """
    rng = np.random.default_rng(31)
    rr = 0.7 * (1 + cv * np.sqrt(12) * (rng.random(3000) - 0.5))  # uniform intervals, no beat errors
    got = verdicts(np.clip(rr, 0.25, 3.0))
    assert np.mean(np.isnan(got)) < 0.6
    assert np.mean(got == 1.0) > 0.35
    assert np.nanmean(got) > 0.9  # of the windows judged, nearly all irregular


@pytest.mark.parametrize("every", [2, 3])
def test_geminy_of_early_coupling_stays_regular_when_its_windows_are_emptied(every: int) -> None:
    """Bigeminy / trigeminy at a coupling of 0.45-0.55 with a compensatory pause: every premature
    beat is under 0.6 x the median, so the model's filter rejects (nearly) every interval; the Dash
    criteria judge such windows since the seventh round and must not call them irregular. (The
    check that the intervals repeat is what keeps family A's trigeminy of coupling ~0.6 regular:
    without it 9 % of its windows are irregular, ``test_bigeminy_and_trigeminy_are_not_irregular``.)"""
    rng = np.random.default_rng(32)
    rr = a_sinus(3000, rng)
    early = np.arange(0, len(rr) - 1, every)
    coupling = rng.uniform(0.45, 0.55, len(early))
    rr[early + 1] *= 2 - coupling
    rr[early] *= coupling
    cleaned = af_model.cleaned(np.lib.stride_tricks.sliding_window_view(rr, 64)[::16])
    assert np.mean(cleaned.sum(axis=1) * 2 < 64) > 0.9  # the model alone leaves them unknown
    assert np.mean(verdicts(rr) == 1.0) < 0.02


def test_the_features_ignore_an_extra_beat_split_interval() -> None:
    rng = np.random.default_rng(10)
    rr = a_sinus(64, rng)[None, :]
    split = rr.copy()
    split[0, 30:32] = [rr[0, 30] * 0.3, rr[0, 30] * 0.7]  # one interval split in two (an extra beat)
    keep = af_model.cleaned(split)
    assert not keep[0, 29:33].any() or not keep[0, 30:32].any()
    assert af_model.probability(af_model.features(split, keep))[0] < af_model.THRESHOLD


def test_the_vectorized_features_equal_the_plain_reference() -> None:
    """Every feature of every window row equals the scalar reference's (1e-9), beat errors included."""
    rng = np.random.default_rng(21)
    rows = np.concatenate(
        [
            np.lib.stride_tricks.sliding_window_view(rr, 64)[::37]
            for rr in (
                a_errors(a_sinus_breaths(600, rng), rng),
                a_errors(a_af(600, rng, low=True), rng),
                c_errors(c_ectopy(c_sinus(600, rng), rng, 0.15), rng),
                np.full(200, 0.8),  # a paced rhythm: ties everywhere
            )
        ]
    )
    got = af_model.features(rows, af_model.cleaned(rows))
    for row, columns in zip(rows, got, strict=True):
        want = model_columns(list(row))
        assert want is not None
        np.testing.assert_allclose(columns, want, rtol=0, atol=1e-9)


def test_the_ordinal_and_analogue_features_tell_breathing_from_af() -> None:
    """Irregular breathing (each breath its own length) keeps few orderings and repeats its shapes."""
    names = list(af_model.FEATURES)
    pattern, nn = names.index("perm_entropy"), names.index("log_nn_error")
    rng = np.random.default_rng(22)

    def columns(rr: np.ndarray) -> np.ndarray:
        rows = np.lib.stride_tricks.sliding_window_view(rr, 64)[::16]
        return af_model.features(rows, af_model.cleaned(rows))

    young, af = columns(a_sinus_breaths(3000, rng)), columns(a_af(3000, rng, low=True))
    assert np.median(young[:, pattern]) < np.median(af[:, pattern]) - 0.05
    assert np.median(af[:, pattern]) > 0.9  # independent intervals: all 24 orderings about equally
    assert np.median(np.exp(af[:, nn])) > 1.2  # ~sqrt(2) SD
    assert np.median(np.exp(young[:, nn])) < 0.8 * np.median(np.exp(af[:, nn]))


@pytest.mark.parametrize(
    ("family", "seed", "episodes", "segments_free", "segments"),
    [
        ("A", 2000, 24, 94, 94),
        ("B", 3000, 24, 95, 95),
        ("C", 4000, 24, 97, 97),
        ("D", 5000, 24, 96, 97),
        ("E", 6300, 23, 93, 95),
        ("F", 7400, 24, 97, 97),
        ("G", 8700, 24, 98, 100),
        ("H", 9700, 24, 96, 97),
        ("I", 10700, 24, 92, 93),
        ("J", 11700, 24, 92, 92),
    ],
)
def test_default_rule_metrics_per_episode(
    family: str, seed: int, episodes: int, segments_free: int, segments: int
) -> None:
    outcomes = run(default_rule(), cohort(family, 1, 40, (5, 15), seed))
    _, _, median, hits, n_episodes, free, n_segments = summary(outcomes)
    assert n_episodes == 24 and n_segments == segments
    assert hits >= episodes, f"AF episodes alerted {hits}/24, pinned {episodes}"
    assert free >= segments_free, f"non-AF segments free {free}/{n_segments}, pinned {segments_free}"
    assert median <= 5 * 60, f"median onset to alert {median / 60:.1f} min"


def test_a_patient_override_can_return_to_the_dash_criteria() -> None:
    """The remedy for a patient whose ectopy the model takes for AF: ``method: dash`` for them only."""
    text = (ROOT / "alert_rules.yaml").read_text()
    text = text.replace("patients: {}", "patients:\n  p-dash: {rules: {af_screening: {method: dash}}}")
    rules = parse_rules(text)
    rule = rules.by_name()["af_screening"]
    rng = np.random.default_rng(11)
    rr = 0.8 * (1 + 0.06 * rng.standard_normal(1200))  # rate-controlled AF: nRMSSD ~0.085 < Dash's 0.1
    engine = Engine(rules)
    t = T0 + np.cumsum(rr)
    raised = set()
    for patient in ("p-model", "p-dash"):
        batch = engine.batch([patient] * len(rr), ["rr_interval"] * len(rr), t, rr)
        raised |= {(e.patient, e.rule) for e in engine.process(batch) if e.state == "raised"}
    assert isinstance(rule, RhythmRule) and rule.method == "model"
    assert raised == {("p-model", "af_screening")}


@pytest.mark.parametrize("method", ["model", "dash"])
def test_each_window_is_judged_on_its_own(method: str) -> None:
    # irregular() computes verdicts for the complete windows only (the others are unknown either
    # way): so a window's verdict must not depend on which other windows share its batch. Bit for
    # bit, against judging every window alone, with incomplete and non-finite windows mixed in.
    from detectors.rhythm import _params

    rng = np.random.default_rng(11)
    rr = np.concatenate([np.lib.stride_tricks.sliding_window_view(series, 64)[::16] for series in (
        a_errors(a_af(900, rng, low=True), rng), rng.normal(0.8, 0.05, 900), rng.normal(0.6, 0.12, 900))])
    rr = rr[rng.permutation(len(rr))].copy()
    rr[3, 5] = np.nan
    complete = rng.random(len(rr)) < 0.6
    rule = dataclasses.replace(default_rule(), method=method)
    params = {name: np.full(len(rr), value) for name, value in _params(rule).items()}
    together = irregular(rr, complete, params)
    alone = np.concatenate([irregular(rr[i:i + 1], complete[i:i + 1], {k: v[i:i + 1] for k, v in params.items()})
                            for i in range(len(rr))])
    assert np.array_equal(together, alone, equal_nan=True)
    assert np.isnan(together[~complete]).all() and np.isfinite(together[complete]).sum() > 20
    assert set(np.unique(together[complete & np.isfinite(together)])) <= {0.0, 1.0}


def test_a_patient_override_holds_the_alert_for_longer_irregular_runs() -> None:
    """The remedy for a young heart whose breathing opens AF alerts: ``for: 150s`` for them only.

    Two minutes of irregular beats between sinus rhythm alert with the default 90 s and not with
    the patient's 150 s; the default rule is unchanged for everyone else.
    """
    text = (ROOT / "alert_rules.yaml").read_text()
    override = "patients:\n  p-young: {rules: {af_screening: {levels: {warning: {for: 150s}}}}}"
    text = text.replace("patients: {}", override)
    rules = parse_rules(text)
    rule = rules.by_name()["af_screening"]
    assert isinstance(rule, RhythmRule) and rule.levels[0].for_s == 90
    rng = np.random.default_rng(5)
    rr = np.concatenate([0.9 * (1 + 0.01 * rng.standard_normal(300)),
                         0.7 * (1 + 0.2 * rng.standard_normal(178)),  # ~125 s irregular
                         0.9 * (1 + 0.01 * rng.standard_normal(900))])
    t = T0 + np.cumsum(rr)
    engine = Engine(rules)
    raised = []
    for patient in ("p-default", "p-young"):
        batch = engine.batch([patient] * len(rr), ["rr_interval"] * len(rr), t, rr)
        raised += [e.patient for e in engine.process(batch) if e.state == "raised" and e.rule == "af_screening"]
    assert raised == ["p-default"]


def test_the_emptied_windows_judgement_equals_the_plain_reference() -> None:
    """The seventh round's judgement of windows the model's filter empties, vectorized and plainly."""
    rng = np.random.default_rng(33)
    af = np.clip(0.7 * (1 + 0.45 * np.sqrt(12) * (rng.random(640) - 0.5)), 0.25, 3.0)
    geminy = a_geminy(a_sinus(640, rng), rng, 3) * np.where(np.arange(640) % 3 == 0, 0.8, 1.0)
    rows = np.concatenate([np.lib.stride_tricks.sliding_window_view(x, 64)[::16] for x in (af, geminy)])
    emptied = af_model.cleaned(rows).sum(axis=1) * 2 < 64
    assert emptied.sum() > 20
    got = irregular(rows, np.ones(len(rows), np.bool_), rule_params(len(rows)))
    rule = default_rule()
    plain = [af_verdict(rule, [(float(i), float(v)) for i, v in enumerate(row)]) for row in rows]
    np.testing.assert_array_equal(got, np.array(plain))
