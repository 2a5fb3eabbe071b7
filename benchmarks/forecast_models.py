"""Throughput of the forecast predictors alone: readings per second per core, same load, same process.

Reproduce (one core)::

    taskset -c 0 .venv/bin/python benchmarks/forecast_models.py --patients 10000 --hours 6

Load: ``--patients`` CGM patients, a reading every 5 min (a smooth fall and rise with noise), fed
to one :class:`detectors.Engine` holding only the urgent-low-soon rule with each ``model:`` in
turn, one-hour micro-batches (12 readings per patient per call). The first batch (registration,
empty windows) is not timed; the models alternate three times and the best round is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.evaluate_glucose import default_rule, forecast_rule
from detectors import Engine, RuleSet


def run(rule: object, patients: int, hours: int) -> float:
    """Readings per second through ``Engine.process`` (after the first batch)."""
    rng = np.random.default_rng(0)
    names = np.array([f"p{i}" for i in range(patients)], dtype=object)
    engine = Engine(RuleSet(rules=(rule,)))  # type: ignore[arg-type]
    phase = rng.uniform(0, 2 * np.pi, patients)
    elapsed, count = 0.0, 0
    for hour in range(hours + 1):
        t = 1_704_067_200.0 + hour * 3600.0 + np.arange(12) * 300.0
        value = 110 + 60 * np.sin(phase[:, None] + t[None, :] / 7200.0) + rng.normal(0, 5, (patients, 12))
        batch = engine.batch(
            np.repeat(names, 12), np.full(patients * 12, "glucose"), np.tile(t, patients), value.ravel()
        )
        started = time.perf_counter()
        engine.process(batch)
        if hour:
            elapsed += time.perf_counter() - started
            count += patients * 12
    return count / elapsed


def main() -> int:
    """Print readings/s for each predictor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10000)
    parser.add_argument("--hours", type=int, default=6)
    args = parser.parse_args()
    rules = {
        "kalman (default)": default_rule(),
        "damped_trend": forecast_rule("damped_trend"),
        "ar2": forecast_rule("ar2"),
    }
    best: dict[str, float] = {}
    for _ in range(3):
        for name, rule in rules.items():
            best[name] = max(best.get(name, 0.0), run(replace(rule), args.patients, args.hours))
    print("| predictor | CGM readings/s/core |\n|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate / 1e3:.0f} k |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
