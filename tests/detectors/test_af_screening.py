"""AF screening of the default rules: the learned window classifier, and metrics pinned per episode.

The pinned numbers are those measured when the model was fitted (benchmarks/RESULTS.md, "AF
screening per episode"), on one test seed of the design family A and one of the validation
family B (never training seeds): a change that alerts fewer AF episodes, raises alerts in more
non-AF segments or alerts later fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.evaluate_af import run, summary
from benchmarks.rr_models import a_af, a_errors, a_geminy, a_sinus, cohort
from detectors import Engine, af_model
from detectors.rhythm import irregular
from detectors.rules import RhythmRule
from rpm_core.rules import load_rules, parse_rules

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def default_rule() -> RhythmRule:
    rule = load_rules(ROOT / "alert_rules.yaml").by_name()["af_screening"]
    assert isinstance(rule, RhythmRule)
    return rule


def verdicts(rr: np.ndarray) -> np.ndarray:
    """The model's verdict on each 64-beat window (every 16 beats) of ``rr``."""
    rows = np.lib.stride_tricks.sliding_window_view(rr, 64)[::16]
    params = {"model": np.ones(len(rows))}
    return irregular(rows, np.ones(len(rows), np.bool_), params)


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


def test_unusable_windows_are_unknown() -> None:
    rr = np.full((3, 64), 0.8)
    rr[1, ::2] = 3.0  # more than half the beats rejected as missed beats
    rr[2, 5] = -1.0  # not an interval
    got = irregular(rr, np.array([True, True, True]), {"model": np.ones(3)})
    assert got[0] == 0.0 and np.isnan(got[1]) and np.isnan(got[2])


def test_the_features_ignore_an_extra_beat_split_interval() -> None:
    rng = np.random.default_rng(10)
    rr = a_sinus(64, rng)[None, :]
    split = rr.copy()
    split[0, 30:32] = [rr[0, 30] * 0.3, rr[0, 30] * 0.7]  # one interval split in two (an extra beat)
    keep = af_model.cleaned(split)
    assert not keep[0, 29:33].any() or not keep[0, 30:32].any()
    assert af_model.probability(af_model.features(split, keep))[0] < af_model.THRESHOLD


@pytest.mark.parametrize(
    ("family", "seed", "episodes", "segments_free", "segments"),
    [("A", 2000, 24, 92, 92), ("B", 3000, 23, 93, 95)],
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
