"""Evaluate AF screening (the default ``af_screening`` rule) on synthetic RR-interval recordings.

Reproduce (see benchmarks/RESULTS.md)::

    .venv/bin/python benchmarks/evaluate_rhythm.py --recordings 200 --minutes 20

Each synthetic recording is one patient for ``--minutes``; half are in atrial fibrillation for
the whole recording, half are not. Rhythms (all with a wearable's beat errors at times):

- ``sinus``: respiratory sinus arrhythmia (4-5 beats per breath, +-4 %) plus 1/f-like drift and 1 %
  beat-to-beat noise (nRMSSD ~ 0.02-0.05, the healthy-adult range);
- ``sinus+ectopy``: sinus with 6 % premature beats (atrial or ventricular), each a short
  interval (70 % of the cycle) followed by a compensatory long one (130 %);
- ``sinus+frequent ectopy``: 15 % premature beats, plus beat errors;
- ``sinus+beat errors``: sinus with 2 % missed beats (RR doubled) and 1 % extra beats (an interval
  split 30/70), as a chest strap or optical sensor produces them;
- ``AF``: irregularly irregular intervals (independent, coefficient of variation 0.15-0.25,
  mean rate 70-130 bpm), with or without the same beat errors; ``AF, low variability``: coefficient
  of variation 0.08-0.12 (a rate-controlled AF), with beat errors: the hard case.

A recording counts as detected if the rule raised an alert during it. Sensitivity: detected AF
recordings / AF recordings; specificity: non-AF recordings without an alert / non-AF recordings.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors import Engine, RuleSet  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

T0 = 1_700_000_000.0
KINDS = (
    "sinus",
    "sinus+ectopy",
    "sinus+frequent ectopy",
    "sinus+beat errors",
    "AF",
    "AF+beat errors",
    "AF, low variability",
)


def sinus(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sinus rhythm with respiratory arrhythmia, slow drift and small beat-to-beat noise."""
    mean = rng.uniform(0.6, 1.1)
    breath = rng.uniform(3.5, 5.5)
    drift = np.cumsum(rng.normal(0, 0.002, n))
    beats = np.arange(n)
    rsa = rng.uniform(0.02, 0.05) * np.sin(2 * np.pi * beats / breath + rng.uniform(0, 6.3))
    return mean * (1 + rsa + drift - drift.mean() + rng.normal(0, 0.01, n))


def ectopy(rr: np.ndarray, rng: np.random.Generator, rate: float = 0.06) -> np.ndarray:
    """Premature beats: a short interval then a compensatory pause."""
    rr = rr.copy()
    for i in np.flatnonzero(rng.random(len(rr) - 1) < rate):
        rr[i], rr[i + 1] = rr[i] * 0.7, rr[i + 1] * 1.3
    return rr


def beat_errors(rr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wearable's errors: missed beats (two intervals merged) and extra beats (one split)."""
    out: list[float] = []
    i = 0
    while i < len(rr):
        draw = rng.random()
        if draw < 0.02 and i + 1 < len(rr):
            out.append(rr[i] + rr[i + 1])
            i += 2
            continue
        if draw < 0.03:
            out += [rr[i] * 0.3, rr[i] * 0.7]
        else:
            out.append(rr[i])
        i += 1
    return np.array(out)


def af(n: int, rng: np.random.Generator, cv: tuple[float, float] = (0.15, 0.25)) -> np.ndarray:
    """Irregularly irregular ventricular response with a coefficient of variation drawn from ``cv``."""
    mean = 60.0 / rng.uniform(70, 130)
    return np.clip(rng.normal(mean, rng.uniform(*cv) * mean, n), 0.3, 2.0)


def recording(kind: str, minutes: float, rng: np.random.Generator) -> np.ndarray:
    """RR intervals of one recording of ``kind``."""
    n = int(minutes * 60 / 0.5)  # enough beats at up to 120 bpm; trimmed to the duration below
    rr = {
        "sinus": lambda: sinus(n, rng),
        "sinus+ectopy": lambda: ectopy(sinus(n, rng), rng),
        "sinus+frequent ectopy": lambda: beat_errors(ectopy(sinus(n, rng), rng, 0.15), rng),
        "sinus+beat errors": lambda: beat_errors(sinus(n, rng), rng),
        "AF": lambda: af(n, rng),
        "AF, low variability": lambda: beat_errors(af(n, rng, (0.08, 0.12)), rng),
        "AF+beat errors": lambda: beat_errors(af(n, rng), rng),
    }[kind]()
    return rr[np.cumsum(rr) <= minutes * 60]


def evaluate(rules: RuleSet, recordings: int, minutes: float, seed: int) -> dict[str, tuple[int, int]]:
    """Per kind: (recordings with an alert, recordings)."""
    rng = np.random.default_rng(seed)
    engine = Engine(rules)
    kinds, patients, times, values = [], [], [], []
    for i in range(recordings):
        kind = KINDS[i % len(KINDS)]
        rr = recording(kind, minutes, rng)
        kinds.append(kind)
        patients.append(np.full(len(rr), f"r{i:04d}", dtype=object))
        times.append(T0 + np.cumsum(rr))
        values.append(rr)
    p, t, v = np.concatenate(patients), np.concatenate(times), np.concatenate(values)
    alerted = set()
    for chunk in np.array_split(np.argsort(t, kind="stable"), 40):
        batch = engine.batch(p[chunk], np.full(len(chunk), "rr_interval"), t[chunk], v[chunk])
        alerted |= {e.patient for e in engine.process(batch) if e.state == "raised"}
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i, kind in enumerate(kinds):
        out[kind][0] += f"r{i:04d}" in alerted
        out[kind][1] += 1
    return {k: (a, n) for k, (a, n) in out.items()}


def main() -> int:
    """Print per-kind alert rates, sensitivity and specificity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    full = load_rules(ROOT / "alert_rules.yaml")
    rules = RuleSet(rules=(full.by_name()["af_screening"],))
    result = evaluate(rules, args.recordings, args.minutes, args.seed)
    print(f"{args.recordings} synthetic recordings of {args.minutes:g} min, default af_screening rule\n")
    print("| rhythm | recordings | alerted |")
    print("|---|---|---|")
    for kind in KINDS:
        alerted, n = result[kind]
        print(f"| {kind} | {n} | {alerted} ({alerted / n:.0%}) |")
    af_hits = sum(result[k][0] for k in KINDS if k.startswith("AF"))
    af_n = sum(result[k][1] for k in KINDS if k.startswith("AF"))
    ok = sum(result[k][1] - result[k][0] for k in KINDS if not k.startswith("AF"))
    other = sum(result[k][1] for k in KINDS if not k.startswith("AF"))
    print(f"\nsensitivity {af_hits / af_n:.1%} ({af_hits}/{af_n}), specificity {ok / other:.1%} ({ok}/{other})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
