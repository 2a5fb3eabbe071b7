"""Every glucose rule of the default set together, on simulated CGM traces: misses, leads and burden.

Reproduce (needs the ``eval`` extra, simglucose; traces are cached, ~3-5 min per seed to simulate on one core)::

    .venv/bin/python benchmarks/evaluate_glucose_rules.py --seeds 101 202 303
    .venv/bin/python benchmarks/evaluate_glucose_rules.py --seeds 101 202 303 --compare   # per seed, paired

Data: ``benchmarks/glucose_traces.py`` (simglucose's 30 virtual patients, adolescents, adults and
children, 2 days per seed, dosing errors to provoke hypoglycaemia), as in
``benchmarks/evaluate_glucose.py``; the rules are the default ``alert_rules.yaml`` ones on
``glucose`` (CGM), run through one ``detectors.Engine``. Ground truth is blood glucose:

- a *level-2 low* is a run of BG < 54 mg/dL lasting >= 15 min (runs < 30 min apart merged); it is
  *alerted* when an alert of a low rule (``glucose_low``, ``glucose_urgent_low_soon``,
  ``glucose_falling_fast``) is open at some time from 60 min before its onset to its end; *lead*
  is onset minus the earliest such alert's raise, capped at 60 min; likewise a *level-2 high*
  (BG > 250 for >= 15 min) and ``glucose_high`` alerts that reached level warning (> 250);
- a low alert is *non-actionable* when no BG < 54 comes within 60 min of its raise; the ``< 70``
  column relaxes that to level 1;
- burden: alerts (an upgrade of an open alert is not a new one) of every glucose rule, per
  patient-day;
- 95 % CIs: percentile bootstrap over patient-traces (2000 resamples); ``--compare`` adds each
  seed's leads against the anchor's and a paired bootstrap (the same resampled traces for both)
  of the difference of the median leads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evaluate_glucose import cache_path, forecast_rule, load_traces  # noqa: E402
from benchmarks.glucose_traces import PATIENTS, Trace  # noqa: E402
from detectors import Engine, RuleSet, forecast  # noqa: E402
from detectors.rules import Direction, ForecastRule, Severity, StalenessRule, ThresholdRule  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

LOW_RULES = ("glucose_low", "glucose_urgent_low_soon", "glucose_falling_fast")
HIGH_FORECASTS = ("glucose_high_soon",)  # counted at any severity; glucose_high from level warning
LOOKAHEAD_S = 3600.0
MERGE_S = 1800.0
MIN_S = 900.0


@dataclass
class PerTrace:
    """One trace's outcome."""

    low_leads: list[float]  # NaN: missed
    high_leads: list[float]
    low_alerts: int
    non_actionable_54: int
    non_actionable_70: int
    high_alerts: int
    non_actionable_high: int
    alerts: int
    by_rule: dict[str, int]


def runs(t: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """(onset, end) of runs of ``mask`` lasting >= 15 min, runs closer than 30 min merged."""
    out: list[tuple[float, float]] = []
    for i in np.flatnonzero(mask):
        now = float(t[i])
        if out and now - out[-1][1] <= MERGE_S:
            out[-1] = (out[-1][0], now)
        else:
            out.append((now, now))
    return [(a, b) for a, b in out if b - a >= MIN_S]


def raised_events(rules: RuleSet, traces: list[Trace]) -> dict[str, list[tuple[str, str, float, float]]]:
    """Per patient, each alert (first raise): (rule, highest severity, raised at, cleared at or inf)."""
    engine = Engine(rules)
    patients = np.concatenate([np.full(len(tr.t), tr.patient, dtype=object) for tr in traces])
    t = np.concatenate([tr.t for tr in traces])
    value = np.concatenate([tr.cgm for tr in traces])
    alerts: dict[str, dict[str, list]] = {tr.patient: {} for tr in traces}  # type: ignore[type-arg]
    for chunk in np.array_split(np.argsort(t, kind="stable"), 48):
        batch = engine.batch(patients[chunk], np.full(len(chunk), "glucose"), t[chunk], value[chunk])
        for event in engine.process(batch):
            mine = alerts[event.patient]
            if event.state == "raised" and event.alert_id not in mine:
                mine[event.alert_id] = [event.rule, {event.severity}, event.time, float("inf")]
            elif event.state == "raised":
                mine[event.alert_id][1].add(event.severity)  # an upgrade of an open alert
            elif event.state == "cleared" and event.alert_id in mine:
                mine[event.alert_id][3] = event.time
    return {
        patient: [(rule, _top(sev), raised, cleared) for rule, sev, raised, cleared in mine.values()]
        for patient, mine in alerts.items()
    }


def _top(severities: set[str]) -> str:
    """The most severe of an alert's severities."""
    order = ("critical", "warning", "info")
    return next(s for s in order if s in severities)


def leads(events: list[tuple[float, float]], spans: list[tuple[float, float]]) -> list[float]:
    """Per event: minutes from the earliest alert open from 60 min before it to its end, capped at 60 (NaN: none)."""
    out = []
    for onset, end in events:
        starts = [a for a, b in spans if a <= end and b >= onset - LOOKAHEAD_S]
        out.append(min(onset - min(starts), LOOKAHEAD_S) / 60.0 if starts else float("nan"))
    return out


def outcome(trace: Trace, alerts: list[tuple[str, str, float, float]]) -> PerTrace:
    """Score one trace."""
    lows = runs(trace.t, trace.bg < 54)
    highs = runs(trace.t, trace.bg > 250)
    low_spans = [(a, b) for r, _, a, b in alerts if r in LOW_RULES]
    high_spans = [(a, b) for r, s, a, b in alerts if (r == "glucose_high" and s == "warning") or r in HIGH_FORECASTS]
    na54 = na70 = 0
    for when, _ in low_spans:
        ahead = (trace.t >= when) & (trace.t <= when + LOOKAHEAD_S)
        na54 += int(not (trace.bg[ahead] < 54).any())
        na70 += int(not (trace.bg[ahead] < 70).any())
    na_high = 0
    for when, _ in high_spans:
        ahead = (trace.t >= when) & (trace.t <= when + LOOKAHEAD_S)
        na_high += int(not (trace.bg[ahead] > 250).any())
    by_rule: dict[str, int] = {}
    for r, _, _, _ in alerts:
        by_rule[r] = by_rule.get(r, 0) + 1
    return PerTrace(
        leads(lows, low_spans),
        leads(highs, high_spans),
        len(low_spans),
        na54,
        na70,
        len(high_spans),
        na_high,
        len(alerts),
        by_rule,
    )


def nightscout(rules: RuleSet) -> RuleSet:
    """The anchor: Nightscout's AR2 forecast alarm (no confirmation) and its low / urgent-low alarms
    (70 and 55 mg/dL on a single reading); for the highs the default high rule and AR2's predicted high."""
    by = rules.by_name()
    low = by["glucose_low"]
    assert isinstance(low, ThresholdRule)
    assert not isinstance(low, StalenessRule)
    levels = (
        replace(low.levels[0], threshold=70.0, for_s=0.0),
        replace(low.levels[1], threshold=55.0, for_s=0.0),
    )
    return RuleSet(
        rules=(
            replace(low, levels=levels, clear_for_s=0.0),
            by["glucose_high"],
            forecast_rule("ar2"),  # predicted < 55 within 20 min, as before issue 17's changes
            ar2_high(),
        )
    )


def ar2_high() -> ForecastRule:
    """Nightscout's AR2 alarm on the high side: predicted > 250 mg/dL within 20 min (no confirmation)."""
    low = forecast_rule("ar2")
    return replace(
        low,
        name="glucose_high_soon",
        direction=Direction.ABOVE,
        levels=(replace(low.levels[0], severity=Severity.WARNING, threshold=250.0),),
        clear_threshold=180.0,
    )


def summary(rows: list[PerTrace], days: float) -> dict[str, float]:
    """Pooled metrics."""
    low = np.array([x for r in rows for x in r.low_leads])
    high = np.array([x for r in rows for x in r.high_leads])
    pd = len(rows) * days
    return {
        "lows": len(low),
        "lows_alerted": float((~np.isnan(low)).sum()),
        "low_lead": float(np.nanmedian(low)) if (~np.isnan(low)).any() else float("nan"),
        "highs": len(high),
        "highs_alerted": float((~np.isnan(high)).sum()),
        "high_lead": float(np.nanmedian(high)) if (~np.isnan(high)).any() else float("nan"),
        "low_alerts_pd": sum(r.low_alerts for r in rows) / pd,
        "non_actionable_54_pd": sum(r.non_actionable_54 for r in rows) / pd,
        "non_actionable_70_pd": sum(r.non_actionable_70 for r in rows) / pd,
        "high_alerts_pd": sum(r.high_alerts for r in rows) / pd,
        "non_actionable_high_pd": sum(r.non_actionable_high for r in rows) / pd,
        "alerts_pd": sum(r.alerts for r in rows) / pd,
    }


def bootstrap(
    rows: list[PerTrace], days: float, keys: tuple[str, ...], n: int = 2000
) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of ``keys``, resampling traces."""
    rng = np.random.default_rng(0)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n):
        pick = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
        s = summary(pick, days)
        for k in keys:
            draws[k].append(s[k])
    return {k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))) for k, v in draws.items()}


def paired_difference(
    ours: list[PerTrace], anchor: list[PerTrace], attr: str, n: int = 2000
) -> tuple[float, float, float]:
    """95 % interval of median(ours) - median(anchor) leads, resampling traces (paired), and P(>= 5 min)."""
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(n):
        pick = rng.integers(0, len(ours), len(ours))
        o = np.array([x for i in pick for x in getattr(ours[i], attr)])
        a = np.array([x for i in pick for x in getattr(anchor[i], attr)])
        if (~np.isnan(o)).any() and (~np.isnan(a)).any():
            draws.append(float(np.nanmedian(o) - np.nanmedian(a)))
    d = np.array(draws)
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)), float(np.mean(d >= 5.0))


def compare(rules: RuleSet, seeds: list[int], sensor: str, days: float) -> None:
    """Per seed and paired: our leads against the Nightscout anchor's on the same traces."""
    ours: list[PerTrace] = []
    anchor: list[PerTrace] = []
    for seed in seeds:
        traces = load_traces(days, cache_path(seed, sensor), PATIENTS, seed, sensor)
        rows = {}
        for name, rs in (("ours", rules), ("anchor", nightscout(rules))):
            raised = raised_events(rs, traces)
            rows[name] = [outcome(tr, raised[tr.patient]) for tr in traces]
        o, a = summary(rows["ours"], days), summary(rows["anchor"], days)
        lows = f"low lead {o['low_lead']:.1f} vs {a['low_lead']:.1f} min"
        highs = f"high lead {o['high_lead']:.1f} vs {a['high_lead']:.1f} min"
        na = (
            f"non-actionable lows {o['non_actionable_54_pd']:.2f} / {o['non_actionable_70_pd']:.2f} vs "
            f"{a['non_actionable_54_pd']:.2f} / {a['non_actionable_70_pd']:.2f}, highs "
            f"{o['non_actionable_high_pd']:.2f} vs {a['non_actionable_high_pd']:.2f} per patient-day"
        )
        print(f"seed {seed}: {lows}, {highs}; {na}")
        ours += rows["ours"]
        anchor += rows["anchor"]
    for side, attr in (("low", "low_leads"), ("high", "high_leads")):
        d = np.array([x for r in ours for x in getattr(r, attr)]) - np.array(
            [x for r in anchor for x in getattr(r, attr)]
        )
        lo, hi, p5 = paired_difference(ours, anchor, attr)
        print(
            f"{side}s, per event: ours earlier {(d > 0).sum()}, later {(d < 0).sum()}, same {(d == 0).sum()}; "
            f"median(ours) - median(anchor) 95 % CI ({lo:g}, {hi:g}) min, P(>= 5 min) {p5:.2f}"
        )


def main() -> int:
    """Print the table for the default glucose rules over the given seeds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101])
    parser.add_argument("--sensor", default="GuardianRT", help="simglucose CGM model: GuardianRT, Dexcom, Navigator")
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--rules", default="alert_rules.yaml")
    parser.add_argument("--anchor", action="store_true", help="Nightscout: AR2 forecast + low alarms instead")
    parser.add_argument("--compare", action="store_true", help="per seed and paired against the Nightscout anchor")
    parser.add_argument(
        "--high-accel-min",
        type=float,
        default=None,
        help="glucose_high_soon's model with KalmanParams.accel_min (mg/dL/min per min; RESULTS.md, seventh round)",
    )
    args = parser.parse_args()
    full = load_rules(ROOT / args.rules)
    if args.high_accel_min is not None:
        forecast.KALMAN_HIGH = replace(forecast.KALMAN_HIGH, accel_min=args.high_accel_min)
    rules = RuleSet(rules=tuple(r for r in full.rules if r.metric == "glucose" and r.device_prefix is None))
    if args.compare:
        compare(rules, args.seeds, args.sensor, args.days)
        return 0
    if args.anchor:
        rules = nightscout(rules)
    rows: list[PerTrace] = []
    for seed in args.seeds:
        traces = load_traces(args.days, cache_path(seed, args.sensor), PATIENTS, seed, args.sensor)
        raised = raised_events(rules, traces)
        rows += [outcome(tr, raised[tr.patient]) for tr in traces]
    s = summary(rows, args.days)
    keys = (
        "low_lead",
        "non_actionable_54_pd",
        "non_actionable_70_pd",
        "high_lead",
        "non_actionable_high_pd",
        "alerts_pd",
    )
    ci = bootstrap(rows, args.days, keys)
    by_rule: dict[str, int] = {}
    for r in rows:
        for k, v in r.by_rule.items():
            by_rule[k] = by_rule.get(k, 0) + v
    pd = len(rows) * args.days
    print(f"seeds {args.seeds}: {len(rows)} traces x {args.days:g} days = {pd:g} patient-days; rules {rules.names()}")
    lead = f"median lead {s['low_lead']:.1f} min {ci['low_lead']}"
    print(f"level-2 lows alerted {s['lows_alerted']:.0f}/{s['lows']}, {lead}")
    print(
        f"level-2 highs alerted {s['highs_alerted']:.0f}/{s['highs']}, median lead {s['high_lead']:.1f} min "
        f"{ci['high_lead']}; high alerts/patient-day {s['high_alerts_pd']:.2f}, non-actionable (no BG > 250 "
        f"within 60 min) {s['non_actionable_high_pd']:.2f} {ci['non_actionable_high_pd']}"
    )
    print(
        f"low alerts/patient-day {s['low_alerts_pd']:.2f}; non-actionable (no BG < 54 within 60 min) "
        f"{s['non_actionable_54_pd']:.2f} {ci['non_actionable_54_pd']}; (no BG < 70) {s['non_actionable_70_pd']:.2f} "
        f"{ci['non_actionable_70_pd']}"
    )
    print(f"all glucose alerts/patient-day {s['alerts_pd']:.2f} {ci['alerts_pd']}")
    print("per rule / patient-day: " + ", ".join(f"{k} {v / pd:.2f}" for k, v in sorted(by_rule.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
