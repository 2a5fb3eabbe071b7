"""The simulator's scripted episodes raise their alerts with the default rules, every time.

The chaos, end-to-end and demo checks count on each scripted patient raising its alert within the
first minutes of an episode, whatever the random draws. An episode that sits too close to its
threshold breaks that quietly: one noisy heart-rate reading back over 50 bpm restarts
bradycardia's 10-minute run (seen in the failover chaos test: a reading of 50 at 10 min 51 s, so
the alert came 10 min later than the test's data lasted). This runs the simulator's own tick loop
(everything but MQTT) over many seeds and the default rules through the engine the worker runs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from detectors import Engine
from rpm_core.rules import default_rules_path, load_rules
from simulators import runner
from simulators.patients import RAMP_S, Scenario, patient_id, scenario_for

PATIENTS = 24  # three of each scripted scenario
SEEDS = range(20)
HISTORY_S = 21 * 60.0  # room for bradycardia's 10 min after the ramp, and more
# When each scripted alert must be raised by, from the episode's start: the ramp, the rule's
# duration (glucose_low: none, one reading), and one reading's slack (a CGM reading every 5 min).
DUE_S = {"tachycardia": RAMP_S + 600 + 60, "bradycardia": RAMP_S + 600 + 60,
         "glucose_low": 300 + 60}  # on the first low CGM reading (issue 17, fifth round)
EXPECTED = {Scenario.TACHYCARDIA: "tachycardia", Scenario.BRADYCARDIA: "bradycardia",
            Scenario.HYPOGLYCEMIA: "glucose_low"}


class _Recorder:
    """The simulator's publisher, minus MQTT: keeps every sample."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float, str]] = []

    def publish(self, patient: str, device: str, samples: list[list[Any]]) -> None:
        self.rows += [(patient, metric, float(t), float(v), device) for metric, t, v in samples]

    def retry_due(self) -> None:
        pass

    def wait_all(self, timeout: float) -> Counter[str]:
        return Counter()


def _simulate(seed: int) -> tuple[float, list[tuple[str, str, float, float, str]]]:
    cfg = runner.SimConfig(patients=PATIENTS, duration_s=0.0, mqtt_url="mqtt://unused", history_s=HISTORY_S,
                           seed=seed)
    pub = _Recorder()
    runner._simulate_with(cfg, 0, PATIENTS, pub)  # the backlog only: no waiting on the wall clock
    return min(t for _, _, t, _, _ in pub.rows), pub.rows


@pytest.fixture(scope="module")
def raised() -> dict[int, dict[str, dict[str, float]]]:
    """Per seed, per patient: each rule raised and when (seconds into the timeline)."""
    rules = load_rules(default_rules_path())
    out: dict[int, dict[str, dict[str, float]]] = {}
    for seed in SEEDS:
        start, rows = _simulate(seed)
        engine = Engine(rules)
        patients, metrics, t, value, devices = zip(*rows, strict=True)
        order = np.argsort(np.asarray(t), kind="stable")
        events = []
        for chunk in np.array_split(order, 20):  # micro-batches, as the worker sees them
            idx = chunk.tolist()
            events += engine.process(engine.batch([patients[i] for i in idx], [metrics[i] for i in idx],
                                                  [t[i] for i in idx], [value[i] for i in idx],
                                                  devices=[devices[i] for i in idx]))
        first: dict[str, dict[str, float]] = {}
        for e in events:
            if e.state == "raised":
                first.setdefault(e.patient, {}).setdefault(e.rule, e.time - start)
        out[seed] = first
    return out


@pytest.mark.parametrize("scenario", [Scenario.TACHYCARDIA, Scenario.BRADYCARDIA, Scenario.HYPOGLYCEMIA],
                         ids=lambda s: s.name.lower())
def test_every_scripted_episode_raises_its_alert_in_time_on_every_seed(
    raised: dict[int, dict[str, dict[str, float]]], scenario: Scenario
) -> None:
    rule = EXPECTED[scenario]
    late = [(seed, patient_id(i), raised[seed].get(patient_id(i), {}).get(rule))
            for seed in SEEDS for i in range(PATIENTS) if scenario_for(i) == scenario
            if raised[seed].get(patient_id(i), {}).get(rule, np.inf) > DUE_S[rule]]
    assert not late, f"{rule} not raised within {DUE_S[rule]:.0f} s (seed, patient, raised at s): {late}"


def test_normal_patients_raise_nothing(raised: dict[int, dict[str, dict[str, float]]]) -> None:
    noisy = [(seed, p, rules) for seed in SEEDS for p, rules in raised[seed].items()
             if scenario_for(int(p[1:])) == Scenario.NORMAL]
    assert not noisy


def test_a_seed_reproduces_its_readings() -> None:
    """Whenever it runs: the failures above can then be replayed."""
    (start_a, a), (start_b, b) = _simulate(3), _simulate(3)
    assert [(p, m, t - start_a, v) for p, m, t, v, _ in a] == [(p, m, t - start_b, v) for p, m, t, v, _ in b]
