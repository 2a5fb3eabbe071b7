"""How reading-to-reading noise affects the default threshold rules' sustained-condition alerts.

A threshold level with ``for: 10m`` raises when every reading for 10 minutes is beyond the threshold:
one reading back across restarts the run. A heart-rate strap reporting every second with a little
noise around a sustained value near the threshold may then never alert. This measures, for
``bradycardia`` and ``tachycardia`` with the default rules (``alert_rules.yaml``), the share of
simulated patients alerted in an hour at a sustained rate with Gaussian noise of a given SD::

    .venv/bin/python -m benchmarks.threshold_noise [--patients 20] [--out benchmarks/results/threshold_noise.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from detectors import Engine, RuleSet
from rpm_core.rules import default_rules_path, load_rules

CASES = {"bradycardia": (42, 44, 45, 46, 47, 48), "tachycardia": (128, 126, 125, 124, 123, 122)}
SDS = (1.0, 1.5, 2.5)


def alerted(engine_rules: RuleSet, rule: str, mean: float, sd: float, patients: int, seed: int = 1) -> int:
    """How many of ``patients`` one-hour 1 Hz traces at ``mean`` ± ``sd`` raise ``rule``."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(patients):
        t = 1.8e9 + np.arange(3600.0)
        v = np.round(mean + rng.normal(0.0, sd, t.size))
        engine = Engine(engine_rules)
        events = engine.process(engine.batch(["p"] * t.size, ["heart_rate"] * t.size, t, v,
                                             devices=["hrs-1"] * t.size))
        hits += any(e.rule == rule and e.state == "raised" for e in events)
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/threshold_noise.md"))
    args = parser.parse_args()
    rules = load_rules(default_rules_path())
    lines = ["| rule | sustained rate (bpm) | " + " | ".join(f"alerted, noise SD {sd}" for sd in SDS) + " |",
             "|---|---|" + "---|" * len(SDS)]
    for rule, means in CASES.items():
        for mean in means:
            cells = [f"{alerted(rules, rule, mean, sd, args.patients)}/{args.patients}" for sd in SDS]
            lines.append(f"| {rule} | {mean} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
