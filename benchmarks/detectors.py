"""Detector throughput: samples per second per core, and the ratio to the scalar reference in the same run.

Reproduce (one core; results and machine in benchmarks/RESULTS.md, section "Detectors")::

    taskset -c 0 .venv/bin/python benchmarks/detectors.py --patients 10000 --seconds 120

The load mimics the live stream: micro-batches of ``--batch-s`` seconds for every patient, with a
heart rate every second, an RR interval every beat (~1.2/s) and a CGM glucose every 5 minutes;
1 % of the patients are abnormal (tachycardic, hypoglycaemic, in AF) so that episodes open and
close. Only :meth:`detectors.Engine.process` and ``tick`` are timed; building the batches is not.
The scalar reference (``tests/detectors/reference.py``, the one the property tests compare
against) runs on a slice of the same patients, so both rates are per sample of the same mix.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors import Engine, RuleSet, SampleBatch  # noqa: E402
from detectors.rules import Rule, StalenessRule, ThresholdRule  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402
from tests.detectors.reference import ReferenceEngine  # noqa: E402

T0 = 1_700_000_000.0
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # --clock
HR, RR, GLUCOSE = 0, 1, 2


@dataclass
class Load:
    """Pre-built micro-batches (as the worker would hand them over) and their sample count."""

    batches: list[SampleBatch]
    samples: int


def make_load(engine: Engine, patients: int, seconds: float, batch_s: float, seed: int, metrics: set[int]) -> Load:
    """Micro-batches of every patient's readings, ``batch_s`` seconds each."""
    rng = np.random.default_rng(seed)
    index = engine.registry.indices([f"p{i:05d}" for i in range(patients)])
    sick = rng.random(patients) < 0.01
    batches, total = [], 0
    for k in range(int(seconds / batch_s)):
        start = T0 + k * batch_s
        parts = []
        if HR in metrics:
            parts.append(_heart_rate(rng, index, sick, start, batch_s))
        if RR in metrics:
            parts.append(_rr(rng, index, sick, start, batch_s))
        if GLUCOSE in metrics:
            parts.append(_glucose(rng, index, sick, start, batch_s))
        batch = SampleBatch.concat(parts)
        batches.append(batch)
        total += len(batch)
    return Load(batches, total)


def _batch(p: np.ndarray, metric: int, t: np.ndarray, v: np.ndarray) -> SampleBatch:
    return SampleBatch(
        patient=p, metric=np.full(len(p), metric, np.int8), t=t, value=v, flags=np.zeros(len(p), np.int16)
    )


def _heart_rate(
    rng: np.random.Generator, index: np.ndarray, sick: np.ndarray, start: float, span: float
) -> SampleBatch:
    per = int(span)
    p = np.repeat(index, per)
    t = start + np.tile(np.arange(per, dtype=np.float64), len(index)) + 0.25
    v = rng.normal(72, 6, len(p)) + np.repeat(np.where(sick, 70.0, 0.0), per)
    return _batch(p, HR, t, np.round(v))


def _rr(rng: np.random.Generator, index: np.ndarray, sick: np.ndarray, start: float, span: float) -> SampleBatch:
    per = int(span * 1.2)
    p = np.repeat(index, per)
    base = np.tile(np.arange(per, dtype=np.float64), len(index)) * (span / per)
    t = start + base + 0.5
    spread = np.repeat(np.where(sick, 0.18, 0.03), per)
    v = np.clip(rng.normal(0.83, 1.0, len(p)) * spread + 0.83, 0.35, 1.6)
    return _batch(p, RR, t, v)


def _glucose(rng: np.random.Generator, index: np.ndarray, sick: np.ndarray, start: float, span: float) -> SampleBatch:
    phase = (np.arange(len(index)) * 7) % 300  # each patient's CGM ticks at its own second
    due = (phase >= start % 300) & (phase < start % 300 + span)
    p = index[due]
    t = start - start % 300 + phase[due] + 0.75
    v = np.where(sick[due], 48.0, 0.0) + np.where(sick[due], 0.0, rng.normal(120, 15, len(p)))
    return _batch(p, GLUCOSE, t, np.round(v))


def with_overrides(rules: RuleSet, patients: int, share: float) -> RuleSet:
    """``rules`` with the first ``share`` of the patients on one override of every threshold rule
    (every threshold × 1.01), as a ward's patients on a clinician's common adjustment."""
    count = round(patients * share)
    if count == 0:
        return rules
    changed = {}
    for rule in rules.rules:
        if type(rule) is ThresholdRule:
            levels = tuple(dataclasses.replace(lv, threshold=lv.threshold * 1.01) for lv in rule.levels)
            clear = None if rule.clear_threshold is None else rule.clear_threshold * 1.01
            changed[rule.name] = dataclasses.replace(rule, levels=levels, clear_threshold=clear)
    return RuleSet(rules=rules.rules, patient_rules={f"p{i:05d}": dict(changed) for i in range(count)})


def _subset(rules: RuleSet, keep: Callable[[Rule], bool]) -> RuleSet:
    """The rules ``keep`` selects, with their per-patient overrides."""
    kept = tuple(r for r in rules.rules if keep(r))
    names = {r.name for r in kept}
    overrides = {p: {n: r for n, r in o.items() if n in names} for p, o in rules.patient_rules.items()}
    return RuleSet(rules=kept, patient_rules={p: o for p, o in overrides.items() if o})


def time_engine(rules: RuleSet, patients: int, seconds: float, batch_s: float, metrics: set[int]) -> tuple[float, int]:
    """Samples per second of the vectorized engine (process and a tick per batch)."""
    engine = Engine(rules)
    load = make_load(engine, patients, seconds, batch_s, 1, metrics)
    # The first batch registers every patient and grows the arrays (and imports numpy's lazily
    # loaded modules): steady state is what a running worker sees, so it is not timed.
    engine.process(load.batches[0])
    started = clock()
    for k, batch in enumerate(load.batches[1:], start=1):
        engine.process(batch)
        engine.tick(T0 + (k + 1) * batch_s)
    elapsed = clock() - started
    samples = load.samples - len(load.batches[0])
    return samples / elapsed, samples


def time_reference(rules: RuleSet, patients: int, seconds: float, batch_s: float, metrics: set[int]) -> float:
    """Samples per second of the scalar reference on the same kind of load."""
    engine = Engine(rules)
    load = make_load(engine, patients, seconds, batch_s, 1, metrics)
    names = ("heart_rate", "rr_interval", "glucose")
    batches = [
        [
            (engine.registry.id_of(int(p)), names[int(m)], float(t), float(v), 0)
            for p, m, t, v in zip(b.patient, b.metric, b.t, b.value, strict=True)
        ]
        for b in load.batches
    ]
    reference = ReferenceEngine(rules)
    started = time.perf_counter()
    for k, batch in enumerate(batches):
        reference.process(batch)
        reference.tick(T0 + (k + 1) * batch_s)
    return load.samples / (time.perf_counter() - started)


def machine() -> str:
    """CPU model and core count, as lscpu reports them."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "?").strip()
    return f"{model}, {os.cpu_count()} cores visible, numpy {np.__version__}, Python {platform.python_version()}"


def main() -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds of simulated data")
    parser.add_argument("--batch-s", type=float, default=10.0, help="seconds of data per micro-batch")
    parser.add_argument("--reference-patients", type=int, default=100)
    parser.add_argument(
        "--override-share",
        type=float,
        default=0.0,
        help="share of patients with a per-patient override of every threshold rule (one shared override)",
    )
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="cpu: this process's CPU time (a shared machine)"
    )
    args = parser.parse_args()
    global clock  # set once, from the command line
    clock = CLOCKS[args.clock]
    full = with_overrides(load_rules(ROOT / "alert_rules.yaml"), args.patients, args.override_share)
    thresholds = _subset(full, lambda r: type(r) is ThresholdRule)
    signal_only = _subset(full, lambda r: not isinstance(r, StalenessRule))
    cases = [
        ("threshold rules (HR + glucose)", thresholds, {HR, GLUCOSE}),
        ("full default rule set (HR + RR + glucose)", full, {HR, RR, GLUCOSE}),
        ("full default rule set, HR + glucose only", signal_only, {HR, GLUCOSE}),
    ]
    print(f"machine: {machine()}\n")
    print("| rule set | samples | vectorized samples/s/core | scalar reference samples/s | ratio |")
    print("|---|---|---|---|---|")
    for name, rules, metrics in cases:
        rate, samples = time_engine(rules, args.patients, args.seconds, args.batch_s, metrics)
        ref = time_reference(rules, args.reference_patients, args.seconds, args.batch_s, metrics)
        print(f"| {name} | {samples:,} | {rate / 1e6:.2f} M | {ref / 1e3:.1f} k | {rate / ref:,.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
