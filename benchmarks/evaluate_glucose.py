"""Evaluate glucose forecasting alerts on realistic CGM traces: our damped trend versus Nightscout's AR2.

Reproduce (see benchmarks/RESULTS.md)::

    pip install -e '.[eval]'                      # simglucose, the UVA/Padova simulator
    python benchmarks/evaluate_glucose.py --days 2 --cache var/glucose_traces.npz
    python benchmarks/evaluate_glucose.py --days 2 --seeds 101 202 303   # pooled, bootstrap CIs

The predictors run through the very same :class:`detectors.Engine` and alert rule ("urgent low
soon": predicted <= 55 mg/dL within 20 min, cleared once the forecast stays >= 70 mg/dL for 15
min); only ``model:`` differs, so the comparison isolates the predictor. Ground truth is the
simulator's blood glucose (not the noisy CGM):

- a hypoglycaemic *event* is a run of blood glucose < 54 mg/dL (level 2, Battelino 2019); runs
  less than 30 min apart are one event; its onset is the first minute below 54;
- an event is *detected* if an alert was raised between 60 min before its onset and its end;
  *lead time* is onset minus the first such alert (negative: raised after the onset);
- a *false alert* is one raised with no event onset within the next 60 min and not during an event.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.glucose_traces import PATIENTS, Trace, simulate
from detectors import Engine, RuleSet
from detectors.rules import Direction, ForecastRule, Severity, ThresholdLevel

HYPO_MG_DL = 54.0
MERGE_S = 1800.0
LOOKAHEAD_S = 3600.0


def forecast_rule(model: str, **changes: object) -> ForecastRule:
    """The default urgent-low-soon rule with ``model``."""
    rule = ForecastRule(
        name="glucose_urgent_low_soon",
        metric="glucose",
        direction=Direction.BELOW,
        levels=(ThresholdLevel(severity=Severity.CRITICAL, threshold=55.0),),
        clear_threshold=70.0,
        clear_for_s=900.0,
        max_gap_s=660.0,
        model=model,
        horizon_s=1200.0,
        window_s=1500.0,
        damping_s=1200.0,
        # Nightscout's AR2 alarms on its forecast alone: no momentum confirmation for the baseline.
        confirm=1.0 if model == "damped_trend" else 0.0,
    )
    return replace(rule, **changes)  # type: ignore[arg-type]


def default_rule() -> ForecastRule:
    """The default ``glucose_urgent_low_soon`` of ``alert_rules.yaml``."""
    from rpm_core.rules import load_rules  # the rules file parser; detectors alone cannot read YAML

    rule = load_rules(Path(__file__).resolve().parents[1] / "alert_rules.yaml").by_name()["glucose_urgent_low_soon"]
    assert isinstance(rule, ForecastRule)
    return rule


def load_traces(
    days: float, cache: Path | None, patients: list[str], seed: int, sensor: str = "GuardianRT"
) -> list[Trace]:
    """Simulated traces, from ``cache`` when it holds the same set-up."""
    key: dict[str, object] = {"days": days, "patients": patients, "seed": seed}
    if sensor != "GuardianRT":  # the first caches had no sensor key
        key["sensor"] = sensor
    if cache is not None and cache.exists():
        data = np.load(cache, allow_pickle=False)
        if json.loads(str(data["key"])) == key:
            return [Trace(p, data[f"{p}/t"], data[f"{p}/cgm"], data[f"{p}/bg"]) for p in patients]
    traces = []
    for i, patient in enumerate(patients):
        started = time.perf_counter()
        traces.append(simulate(patient, days, seed + i, sensor))
        print(f"simulated {patient} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{tr.patient}/{k}": getattr(tr, k) for tr in traces for k in ("t", "cgm", "bg")}
        np.savez_compressed(cache, key=json.dumps(key), **arrays)
    return traces


def hypo_events(trace: Trace) -> list[tuple[float, float]]:
    """(onset, end) of each run of blood glucose < 54 mg/dL, runs closer than 30 min merged."""
    below = trace.bg < HYPO_MG_DL
    events: list[tuple[float, float]] = []
    for i in np.flatnonzero(below):
        t = float(trace.t[i])
        if events and t - events[-1][1] <= MERGE_S:
            events[-1] = (events[-1][0], t)
        else:
            events.append((t, t))
    return events


def alert_times(rule: ForecastRule, traces: list[Trace]) -> dict[str, list[float]]:
    """When the rule raised an alert, per patient, running the engine over all traces at once."""
    engine = Engine(RuleSet(rules=(rule,)))
    patients = np.concatenate([np.full(len(tr.t), tr.patient, dtype=object) for tr in traces])
    t = np.concatenate([tr.t for tr in traces])
    value = np.concatenate([tr.cgm for tr in traces])
    out: dict[str, list[float]] = {tr.patient: [] for tr in traces}
    order = np.argsort(t, kind="stable")
    for chunk in np.array_split(order, 48):  # event-time chunks, as a backtest would
        batch = engine.batch(patients[chunk], np.full(len(chunk), "glucose"), t[chunk], value[chunk])
        for event in engine.process(batch):
            if event.state == "raised":
                out[event.patient].append(event.time)
    return {p: sorted(set(ts)) for p, ts in out.items()}


def score(traces: list[Trace], alerts: dict[str, list[float]], days: float) -> dict[str, float]:
    """Sensitivity, median lead time (min), false alerts per patient-day."""
    detected, leads, false_alerts, n_events = 0, [], 0, 0
    for trace in traces:
        events = hypo_events(trace)
        n_events += len(events)
        raised = np.array(alerts[trace.patient])
        for onset, end in events:
            hits = raised[(raised >= onset - LOOKAHEAD_S) & (raised <= end)]
            if hits.size:
                detected += 1
                leads.append((onset - hits[0]) / 60.0)
        for when in raised:
            useful = any(onset - LOOKAHEAD_S <= when <= end for onset, end in events)
            false_alerts += 0 if useful else 1
    patient_days = len(traces) * days
    return {
        "events": n_events,
        "sensitivity": detected / n_events if n_events else float("nan"),
        "median_lead_min": float(np.median(leads)) if leads else float("nan"),
        "early_fraction": float(np.mean(np.array(leads) > 0)) if leads else float("nan"),
        "false_per_patient_day": false_alerts / patient_days,
        "alerts": sum(len(v) for v in alerts.values()),
    }


def cache_path(seed: int, sensor: str = "GuardianRT") -> Path:
    """Where a seed's 30 traces are cached: ``var/glucose_<seed>.npz`` (``glucose_<sensor>_<seed>``)."""
    name = f"glucose_{seed}.npz" if sensor == "GuardianRT" else f"glucose_{sensor}_{seed}.npz"
    return Path(__file__).resolve().parents[1] / "var" / name


def pooled(seeds: list[int], days: float, patients: list[str], sensor: str = "GuardianRT") -> int:
    """The predictors over several seeds' traces, with 95 % bootstrap intervals over traces."""
    traces = []
    for seed in seeds:
        for tr in load_traces(days, cache_path(seed, sensor), patients, seed, sensor):
            traces.append(Trace(f"{seed}:{tr.patient}", tr.t, tr.cgm, tr.bg))
    print(f"seeds {seeds}, sensor {sensor}: {len(traces)} traces x {days:g} days\n")
    print("| predictor | events | sensitivity (95 % CI) | median lead, min (CI) | false alerts / patient-day (CI) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(traces), len(traces)) for _ in range(1000)]
    predictors = (
        ("default (kalman, ours)", default_rule()),
        ("damped_trend (previous default)", forecast_rule("damped_trend")),
        ("ar2 (Nightscout)", forecast_rule("ar2")),
    )
    for name, rule in predictors:
        alerts = alert_times(rule, traces)
        r = score(traces, alerts, days)
        keys = ("sensitivity", "median_lead_min", "false_per_patient_day")
        draws = np.array([[score([traces[i] for i in pick], alerts, days)[k] for k in keys] for pick in picks])
        lo, hi = np.nanpercentile(draws, [2.5, 97.5], axis=0)
        print(
            f"| {name} | {r['events']} | {r['sensitivity']:.1%} ({lo[0]:.1%}-{hi[0]:.1%}) "
            f"| {r['median_lead_min']:.1f} ({lo[1]:.1f}-{hi[1]:.1f}) "
            f"| {r['false_per_patient_day']:.2f} ({lo[2]:.2f}-{hi[2]:.2f}) |"
        )
    return 0


def main() -> int:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=2.0, help="simulated days per virtual patient")
    parser.add_argument("--patients", type=int, default=30, help="how many of the 30 virtual patients")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None, help="npz file to keep the simulated traces in")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--seeds", type=int, nargs="+", help="pool these seeds (cached as var/glucose_<seed>.npz)")
    parser.add_argument("--sensor", default="GuardianRT", help="simglucose CGM model: GuardianRT, Dexcom, Navigator")
    args = parser.parse_args()
    if args.seeds:
        return pooled(args.seeds, args.days, PATIENTS[: args.patients], args.sensor)
    traces = load_traces(args.days, args.cache, PATIENTS[: args.patients], args.seed)
    rows = {
        "default (kalman, ours)": score(traces, alert_times(default_rule(), traces), args.days),
        "damped_trend (previous default)": score(traces, alert_times(forecast_rule("damped_trend"), traces), args.days),
        "ar2 (Nightscout)": score(traces, alert_times(forecast_rule("ar2"), traces), args.days),
    }
    print(
        f"{len(traces)} virtual patients x {args.days:g} days, {rows['ar2 (Nightscout)']['events']} events < 54 mg/dL\n"
    )
    print(
        "| predictor | sensitivity | median lead before < 54 (min) | raised before onset | false alerts / patient-day |"
    )
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['sensitivity']:.1%} | {r['median_lead_min']:.1f} | {r['early_fraction']:.1%} "
            f"| {r['false_per_patient_day']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
