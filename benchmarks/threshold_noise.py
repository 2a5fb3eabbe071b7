"""How reading-to-reading noise affects the default threshold rules' sustained-condition alerts.

A threshold level with ``for: 10m`` raises when the readings stay beyond the threshold for 10
minutes. With neither ``median_of`` nor ``tolerate``, one reading back across restarts the run: a
heart-rate strap reporting every second with a little noise around a sustained value near the
threshold may then never alert. This measures, for ``bradycardia`` and ``tachycardia``
(``alert_rules.yaml``), the share of simulated patients alerted in an hour at a sustained rate with
reading noise, for rates inside the threshold (should alert) and just outside it (should not),
with the rules as in the file or with each given setting (``--settings MEDIAN_OF/TOLERATE_S ...``,
one column group each, e.g. ``1/0`` for each reading and no tolerance)::

    .venv/bin/python -m benchmarks.threshold_noise [--patients 20] [--settings 1/0 9/30] [--seed 1]
        [--out benchmarks/results/threshold_noise.md]

Noise models: Gaussian white noise of SD 1.0, 1.5 and 2.5 bpm per reading; "RSA": a respiratory
sinus arrhythmia of +-4 bpm at a breath every 4-6 s (drawn per patient) plus white noise of SD 1.0;
"artifacts": SD 1.5 plus 1 % of readings halved or doubled (a strap missing or double-counting
beats). Readings are rounded to whole bpm, as straps report them.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from detectors import Engine, RuleSet
from detectors.rules import Rule, ThresholdRule
from rpm_core.rules import default_rules_path, load_rules

# Rates inside the threshold (an alert is due) and outside it (none is).
CASES = {
    "bradycardia": (42, 44, 46, 47, 48, 49, 50.5, 51, 52),
    "tachycardia": (128, 126, 124, 123, 122, 121, 119.5, 119, 118),
}
INSIDE = {"bradycardia": lambda m: m < 50, "tachycardia": lambda m: m > 120}
NOISES = ("SD 1.0", "SD 1.5", "SD 2.5", "RSA", "artifacts")


def trace(rng: np.random.Generator, mean: float, noise: str, n: int) -> np.ndarray:
    """One hour of 1 Hz readings at ``mean`` with ``noise``, rounded to whole bpm."""
    if noise == "artifacts":
        v = trace(rng, mean, "SD 1.5", n)
        hit = rng.random(n) < 0.01
        v[hit] = np.round(v[hit] * rng.choice([0.5, 2.0], int(hit.sum())))
        return v
    if noise == "RSA":
        period = rng.uniform(4.0, 6.0)
        phase = rng.uniform(0.0, 2 * np.pi)
        wave = 4.0 * np.sin(2 * np.pi * np.arange(n) / period + phase)
        return np.asarray(np.round(mean + wave + rng.normal(0.0, 1.0, n)))
    sd = float(noise.split()[1])
    return np.round(mean + rng.normal(0.0, sd, n))


def alerted(rules: RuleSet, rule: str, mean: float, noise: str, patients: int, seed: int) -> int:
    """How many of ``patients`` one-hour 1 Hz traces at ``mean`` with ``noise`` raise ``rule``."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(patients):
        t = 1.8e9 + np.arange(3600.0)
        v = trace(rng, mean, noise, t.size)
        engine = Engine(rules)
        events = engine.process(engine.batch(["p"] * t.size, ["heart_rate"] * t.size, t, v,
                                             devices=["hrs-1"] * t.size))
        hits += any(e.rule == rule and e.state == "raised" for e in events)
    return hits


def with_setting(rules: RuleSet, setting: tuple[int, float] | None) -> RuleSet:
    """``rules`` with both heart-rate threshold rules at ``(median_of, tolerate_s)`` (None: as in the file)."""
    if setting is None:
        return rules
    median_of, tolerate_s = setting
    changed: list[Rule] = []
    for rule in rules.rules:
        if isinstance(rule, ThresholdRule) and rule.name in CASES:
            rule = dataclasses.replace(rule, median_of=median_of, tolerate_s=tolerate_s)
        changed.append(rule)
    return dataclasses.replace(rules, rules=tuple(changed))


def parse_setting(text: str) -> tuple[int, float]:
    """``"9/30"`` as (9, 30.0)."""
    median_of, tolerate_s = text.split("/")
    return int(median_of), float(tolerate_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settings", type=parse_setting, nargs="*", default=None,
                        help="MEDIAN_OF/TOLERATE_S (several: one column group each); default: the rules' own")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/threshold_noise.md"))
    args = parser.parse_args()
    base = load_rules(default_rules_path())
    settings: list[tuple[int, float] | None] = list(args.settings) if args.settings else [None]
    head = ["rule", "rate (bpm)", "due"]
    for setting in settings:
        label = "file" if setting is None else f"{setting[0]}/{setting[1]:g} s"
        head += [f"{label}: {noise}" for noise in NOISES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule, means in CASES.items():
        for mean in means:
            cells = [rule, f"{mean:g}", "yes" if INSIDE[rule](mean) else "no"]
            for setting in settings:
                rules = with_setting(base, setting)
                cells += [f"{alerted(rules, rule, mean, noise, args.patients, args.seed)}/{args.patients}"
                          for noise in NOISES]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    text = f"seed {args.seed}, {args.patients} one-hour traces per cell\n\n" + "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
