"""Evaluate AF screening per episode on synthetic recordings with paroxysms (issue 17).

Reproduce (see benchmarks/RESULTS.md, "AF screening per episode")::

    .venv/bin/python benchmarks/evaluate_af.py --family A --seeds 2000 2001 2002
    .venv/bin/python benchmarks/evaluate_af.py --family B --seeds 3000 3001 3002

Each seed is a cohort from ``benchmarks/rr_models.py``: every background rhythm (sinus, sinus
arrhythmia of the young, 6 % and 15 % ectopy, bigeminy, trigeminy) x (no AF, one AF paroxysm,
one rate-controlled paroxysm) x (clean, wearable beat errors), ``--per-cell`` recordings of
``--minutes`` each; a paroxysm lasts 5-15 min. All recordings run through one ``detectors.Engine``
in 40 micro-batches, as the worker and ``rpm backtest`` run them.

- an AF *episode* is *alerted* when the rule raises between its onset and 60 s after its end
  (the last windows still hold AF beats); *time to alert* is from the onset;
- a *non-AF segment* is a 10-min piece of the time outside AF episodes and their first 10 min
  after (the clear time of the rule): a 1-min tail is dropped, a shorter piece counts if >= 5 min;
  it is *free* when no alert is raised in it;
- 95 % confidence intervals: percentile bootstrap over recordings (2000 resamples).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rr_models import Recording, cohort  # noqa: E402
from detectors import Engine, RuleSet, af_model  # noqa: E402
from detectors.rules import RhythmRule, ThresholdLevel  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

T0 = 1_700_000_000.0
GRACE_S = 60.0
SEGMENT_S = 600.0
AFTER_S = 600.0


@dataclasses.dataclass
class Outcome:
    """Per recording: its episodes' alert delays (NaN: missed) and its segments' false-alert flags."""

    recording: Recording
    delays: list[float]
    segments: list[bool]  # True: an AF alert was raised in the segment
    causes: list[str]  # per missed episode: "open" (an alert raised before its onset was still open),
    # "cooldown" (one cleared before its onset: the rule's cooldown held the raise back), "none"


def rule_from_args(args: argparse.Namespace) -> RhythmRule:
    """The default ``af_screening`` rule with the command line's changes."""
    rule = load_rules(ROOT / args.rules).by_name()["af_screening"]
    assert isinstance(rule, RhythmRule)
    changes: dict[str, object] = {}
    for field, value in (
        ("method", args.method),
        ("window_beats", args.window),
        ("every_beats", args.every),
        ("votes", args.votes),
    ):
        if value is not None:
            changes[field] = value
    if args.cooldown_s is not None:
        changes["cooldown_s"] = args.cooldown_s
    if args.clear_s is not None:
        changes["clear_for_s"] = args.clear_s
    if args.for_s is not None:
        changes["levels"] = tuple(dataclasses.replace(lv, for_s=args.for_s) for lv in rule.levels)
    return dataclasses.replace(rule, **changes)  # type: ignore[arg-type]


def run(rule: RhythmRule, recordings: list[Recording]) -> list[Outcome]:
    """Alerts of ``rule`` over ``recordings``, scored per episode and per segment."""
    engine = Engine(RuleSet(rules=(rule,)))
    names = np.array([f"r{i:04d}" for i in range(len(recordings))], dtype=object)
    p = np.concatenate([np.full(len(r.rr), names[i], dtype=object) for i, r in enumerate(recordings)])
    t = np.concatenate([T0 + r.t for r in recordings])
    v = np.concatenate([r.rr for r in recordings])
    raised: dict[str, list[float]] = {}
    cleared: dict[str, list[float]] = {}
    for chunk in np.array_split(np.argsort(t, kind="stable"), 40):
        batch = engine.batch(p[chunk], np.full(len(chunk), "rr_interval"), t[chunk], v[chunk])
        for event in engine.process(batch):
            if event.state == "raised":
                raised.setdefault(event.patient, []).append(event.time - T0)
            elif event.state == "cleared":
                cleared.setdefault(event.patient, []).append(event.time - T0)
    return [
        score(r, np.array(raised.get(names[i], [])), np.array(cleared.get(names[i], [])))
        for i, r in enumerate(recordings)
    ]


def score(rec: Recording, alerts: np.ndarray, clears: np.ndarray | None = None) -> Outcome:
    """One recording's episode delays, segment flags and the cause of each missed episode."""
    clears = np.zeros(0) if clears is None else clears
    delays, causes = [], []
    for a, b in rec.episodes:
        hit = alerts[(alerts >= a) & (alerts <= b + GRACE_S)]
        delays.append(float(hit.min() - a) if len(hit) else float("nan"))
        if not len(hit):
            last_raise = alerts[alerts < a].max(initial=-np.inf)
            last_clear = clears[clears < a].max(initial=-np.inf)
            if np.isfinite(last_raise) and last_raise > last_clear:
                causes.append("open")
            elif np.isfinite(last_clear):
                causes.append("cooldown")
            else:
                causes.append("none")
    end = float(rec.t[-1]) if len(rec.t) else 0.0
    free: list[tuple[float, float]] = []
    start = 0.0
    for a, b in rec.episodes:
        free.append((start, a))
        start = b + AFTER_S
    free.append((start, end))
    segments = []
    for a, b in free:
        edges = np.arange(a, b, SEGMENT_S)
        for lo in edges:
            hi = min(lo + SEGMENT_S, b)
            if hi - lo >= SEGMENT_S / 2:
                segments.append(bool(((alerts >= lo) & (alerts < hi)).any()))
    return Outcome(rec, delays, segments, causes)


def summary(outcomes: list[Outcome]) -> tuple[float, float, float, int, int, int, int]:
    """Sensitivity, specificity, median delay (s) and the counts behind them."""
    delays = np.array([d for o in outcomes for d in o.delays])
    segments = np.array([s for o in outcomes for s in o.segments], dtype=bool)
    hit = ~np.isnan(delays)
    sens = hit.mean() if len(delays) else float("nan")
    spec = 1 - segments.mean() if len(segments) else float("nan")
    median = float(np.median(delays[hit])) if hit.any() else float("nan")
    return sens, spec, median, int(hit.sum()), len(delays), int((~segments).sum()), len(segments)


def bootstrap(outcomes: list[Outcome], n: int = 2000, seed: int = 0) -> np.ndarray:
    """2.5 and 97.5 percentiles of (sensitivity, specificity, median delay), resampling recordings."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        pick = rng.integers(0, len(outcomes), len(outcomes))
        draws.append(summary([outcomes[i] for i in pick])[:3])
    return np.nanpercentile(np.array(draws), [2.5, 97.5], axis=0)


def table(outcomes: list[Outcome]) -> None:
    """Per background and AF kind: episodes alerted, segments free, median delay."""
    print("| background | beat errors | AF episodes alerted | rate-controlled AF alerted | non-AF segments free |")
    print("|---|---|---|---|---|")
    keys = sorted({(o.recording.background, o.recording.beat_errors) for o in outcomes}, key=str)
    for background, errors in keys:
        mine = [o for o in outcomes if (o.recording.background, o.recording.beat_errors) == (background, errors)]
        cells = []
        for kind in ("AF", "AF low variability"):
            d = np.array([x for o in mine if o.recording.af_kind == kind for x in o.delays])
            cells.append(f"{(~np.isnan(d)).sum()}/{len(d)}")
        seg = [s for o in mine for s in o.segments]
        cells.append(f"{len(seg) - sum(seg)}/{len(seg)}")
        print(f"| {background} | {'yes' if errors else 'no'} | {' | '.join(cells)} |")


def main() -> int:
    """Print the per-episode evaluation of one rule on one family's seeds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="A", choices=("A", "B", "C", "D", "E", "F", "G", "H"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[2000])
    parser.add_argument("--per-cell", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--rules", default="alert_rules.yaml")
    parser.add_argument("--method", choices=("dash", "model"))
    parser.add_argument("--window", type=int)
    parser.add_argument("--every", type=int)
    parser.add_argument("--votes", type=int)
    parser.add_argument("--for-s", type=float)
    parser.add_argument("--clear-s", type=float, help="the rule's clear time (s)")
    parser.add_argument("--cooldown-s", type=float, help="the rule's cooldown after a clear (s)")
    parser.add_argument("--threshold", type=float, help="the model's probability threshold (a sweep)")
    parser.add_argument("--detail", action="store_true", help="print the per-rhythm table")
    args = parser.parse_args()
    if args.threshold is not None:
        af_model.THRESHOLD = args.threshold  # type: ignore[misc]
    rule = rule_from_args(args)
    level: ThresholdLevel = rule.levels[0]
    print(
        f"family {args.family}, seeds {args.seeds}, {args.per_cell} per cell, {args.minutes:g} min; "
        f"af_screening method={rule.method} window={rule.window_beats} every={rule.every_beats} "
        f"votes={rule.votes} for={level.for_s:g}s clear={rule.clear_for_s:g}s cooldown={rule.cooldown_s:g}s"
    )
    outcomes: list[Outcome] = []
    for seed in args.seeds:
        mine = run(rule, cohort(args.family, args.per_cell, args.minutes, (5, 15), seed))
        sens, spec, median, hits, episodes, free, segments = summary(mine)
        print(
            f"  seed {seed}: episodes alerted {hits}/{episodes} ({sens:.1%}), "
            f"non-AF segments free {free}/{segments} ({spec:.1%}), median onset->alert {median / 60:.1f} min"
        )
        outcomes += mine
    sens, spec, median, hits, episodes, free, segments = summary(outcomes)
    (s_lo, p_lo, m_lo), (s_hi, p_hi, m_hi) = bootstrap(outcomes)
    print(
        f"  all: episodes alerted {hits}/{episodes} ({sens:.1%}, 95% CI {s_lo:.1%}-{s_hi:.1%}), "
        f"non-AF segments free {free}/{segments} ({spec:.1%}, {p_lo:.1%}-{p_hi:.1%}), "
        f"median onset->alert {median / 60:.1f} min ({m_lo / 60:.1f}-{m_hi / 60:.1f})"
    )
    causes = [c for o in outcomes for c in o.causes]
    print(
        f"  missed episodes by cause: alert already open at onset {causes.count('open')}, "
        f"held back by the cooldown of a cleared alert {causes.count('cooldown')}, "
        f"no earlier alert {causes.count('none')}"
    )
    if args.detail:
        table(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
