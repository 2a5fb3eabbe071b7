"""Alarm burden of the whole default rule set on a simulated ward week (issue 17).

Reproduce (needs the ``eval`` extra for the CGM traces; ~7 min to simulate them once, then ~1 min)::

    .venv/bin/python benchmarks/ward_week.py --days 7 --seed 505

A ward of 30 patients for ``--days`` days, every default rule on every stream, fed to one
``detectors.Engine`` in one-hour micro-batches (the worker's and ``rpm backtest``'s code):

- heart rate every second and an RR interval per beat for everyone: a resting rate of 58-90 bpm,
  8 bpm lower at night (23:00-07:00), 6-12 bouts of activity a day (2-15 min, +15-40 bpm) and
  1.5 bpm noise; RR intervals are the beat-to-beat intervals of that rate with sinus variability
  from ``benchmarks/rr_models.py`` family C (the held-out family);
- conditions (patient numbers): 0-2 persistent AF (family C AF, 70-115 bpm); 3-4 paroxysmal AF
  (one 30-120 min episode a day); 5-7 frequent ectopy (bigeminy / trigeminy in runs, 15 %
  premature beats); 8-9 a fever from day 3, 10:00 for 8 h (+35 bpm); 10-11 young and athletic,
  45-50 bpm asleep; 12-19 type 1 diabetes on CGM: 7-day simglucose traces (seed ``--seed``,
  virtual adults, adolescents and children, dosing errors to provoke lows: a worst case); the
  others have no CGM;
- *level-2 events* that must be alerted: each AF episode (any AF alert open during it), each
  fever (tachycardia or heart-rate-above-baseline open during it), each CGM level-2 low and
  level-2 high (BG < 54 or > 250 for >= 15 min; a matching glucose alert open from 60 min before
  to its end).

Burden: alerts raised (an upgrade of an open alert is not a new one) per patient-day, by rule and
severity. Staleness rules fire only on missing data, which this ward does not simulate.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evaluate_glucose import load_traces  # noqa: E402
from benchmarks.rr_models import c_af, c_ectopy, c_errors_traced, c_geminy, c_sinus  # noqa: E402
from detectors import Engine, forecast  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

T0 = 1_704_067_200.0  # 2024-01-01 00:00 UTC, the CGM traces' epoch
CGM_PATIENTS = [
    *("adult#001", "adult#004", "adult#007", "adolescent#002"),
    *("adolescent#006", "child#003", "child#008", "adult#009"),
]
N_PATIENTS = 30
DAY = 86400.0


def heart_rate(i: int, days: float, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Per-second heart rate of patient ``i`` and its fever episodes (s from T0)."""
    n = int(days * DAY)
    t = np.arange(n, dtype=np.float64)
    base = rng.uniform(58, 90)
    hour = (t % DAY) / 3600
    night = (hour >= 23) | (hour < 7)
    hr = np.full(n, base) - 8.0 * night
    if i in (10, 11):
        hr = np.where(night, rng.uniform(45, 50), rng.uniform(55, 62))
    for day in range(int(np.ceil(days))):
        for _ in range(rng.integers(6, 13)):
            start = int(day * DAY + rng.uniform(8, 21) * 3600)
            length = int(rng.uniform(2, 15) * 60)
            hr[start : start + length] += rng.uniform(15, 40)
    fevers = []
    if i in (8, 9) and days > 3:
        start, end = 2 * DAY + 10 * 3600, 2 * DAY + 18 * 3600
        hr[int(start) : int(end)] += 35.0
        fevers.append((start, end))
    return hr + rng.normal(0, 1.5, n), fevers


def rr_series(i: int, hr: np.ndarray, days: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Beat times and RR intervals following ``hr``, with patient ``i``'s rhythm; AF episodes (s)."""
    seconds = len(hr)
    af_on = np.zeros(seconds, np.bool_)
    episodes: list[tuple[float, float]] = []
    if i in (0, 1, 2):
        af_on[:] = True
        episodes.append((0.0, float(seconds)))
    if i in (3, 4):
        for day in range(int(np.ceil(days))):
            start = day * DAY + rng.uniform(0, 20) * 3600
            end = min(start + rng.uniform(30, 120) * 60, seconds)
            af_on[int(start) : int(end)] = True
            episodes.append((start, end))
    rate = np.where(af_on, rng.uniform(70, 115), hr)
    phase = np.cumsum(rate / 60.0)  # beats elapsed at the end of each second
    beat_t = np.interp(np.arange(1, int(phase[-1])), phase, np.arange(1, seconds + 1, dtype=np.float64))
    rr = np.diff(beat_t, prepend=0.0)
    n = len(rr)
    sinus = c_sinus(n, rng)
    sinus /= sinus.mean()
    if i in (5, 6):
        sinus = c_geminy(sinus, rng, 2 if i == 5 else 3)
    if i == 7:
        sinus = c_ectopy(sinus, rng, 0.15)[:n]
    af = c_af(n, rng, low=False)
    af /= af.mean()
    in_af = af_on[np.clip(beat_t.astype(np.int64), 0, seconds - 1)]
    rr = rr * np.where(in_af, af, sinus[:n] if len(sinus) >= n else np.resize(sinus, n))
    source = np.arange(n)
    if i % 4 == 0:  # a quarter of the straps make beat errors
        rr, source = c_errors_traced(rr, rng)
    beat_t = np.cumsum(rr)
    if i in (3, 4):
        # Label each paroxysm where its AF beats are in the emitted stream: the rhythm's factors
        # (mean 1 over the week, not over every hour) and spurious triggers move beat times away
        # from the rate's clock by up to ~40 min in a week (the first version labelled the clock's
        # times, and a 35-min paroxysm of w04 had no AF beat inside its label).
        af_beat = in_af[source]
        starts = np.flatnonzero(af_beat & ~np.r_[False, af_beat[:-1]])
        ends = np.flatnonzero(af_beat & ~np.r_[af_beat[1:], False])
        episodes = [(float(beat_t[a] - rr[a]), float(beat_t[b])) for a, b in zip(starts, ends, strict=True)]
    return beat_t, rr, episodes


def main() -> int:
    """Simulate the ward, run the default rules, print burden and misses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=505)
    parser.add_argument("--rules", default="alert_rules.yaml")
    parser.add_argument("--no-cgm", action="store_true", help="skip the CGM patients (a quick look)")
    parser.add_argument(
        "--high-accel-min",
        type=float,
        default=None,
        help="glucose_high_soon's model with KalmanParams.accel_min (mg/dL/min per min; RESULTS.md, seventh round)",
    )
    parser.add_argument(
        "--arm",
        type=float,
        nargs=2,
        metavar=("HOURS", "BELOW"),
        help="keep a glucose_low_soon alert (a --rules candidate) only when the patient's CGM read < BELOW within"
        " HOURS before it (emulated per-patient arming; RESULTS.md, ninth round)",
    )
    args = parser.parse_args()

    if args.high_accel_min is not None:
        forecast.KALMAN_HIGH = replace(forecast.KALMAN_HIGH, accel_min=args.high_accel_min)
    rng = np.random.default_rng(args.seed)
    cache = ROOT / "var" / f"ward_cgm_{args.seed}.npz"
    cgm = [] if args.no_cgm else load_traces(args.days, cache, CGM_PATIENTS, args.seed)
    names = [f"w{i:02d}" for i in range(N_PATIENTS)]
    streams: list[tuple[str, str, np.ndarray, np.ndarray]] = []  # (patient, metric, t, value)
    events: list[tuple[str, str, float, float]] = []  # (patient, kind, start, end), s from T0
    for i, name in enumerate(names):
        hr, fevers = heart_rate(i, args.days, rng)
        beat_t, rr, episodes = rr_series(i, hr, args.days, rng)
        events += [(name, "fever", a, b) for a, b in fevers] + [(name, "af", a, b) for a, b in episodes]
        streams.append((name, "heart_rate", T0 + np.arange(len(hr), dtype=np.float64), np.round(hr)))
        streams.append((name, "rr_interval", T0 + beat_t, rr))
        if 12 <= i < 12 + len(cgm):
            tr = cgm[i - 12]
            streams.append((name, "glucose", tr.t, tr.cgm))
            for kind, mask in (("low", tr.bg < 54), ("high", tr.bg > 250)):
                events += [(name, kind, a - T0, b - T0) for a, b in glucose_runs(tr.t, mask)]
    engine = Engine(load_rules(ROOT / args.rules))
    alerts: dict[str, list] = {}  # alert id -> [patient, rule, severities, raised, cleared]
    for hour in range(int(np.ceil(args.days * 24))):
        lo, hi = T0 + hour * 3600.0, T0 + (hour + 1) * 3600.0
        parts = []
        for name, metric, t, v in streams:
            a, b = np.searchsorted(t, [lo, hi])
            if b > a:
                labels = np.full(b - a, name, dtype=object), np.full(b - a, metric, dtype=object)
                parts.append((*labels, t[a:b], v[a:b]))
        p, m, t, v = (np.concatenate([x[k] for x in parts]) for k in range(4))
        for event in engine.process(engine.batch(p, m, t, v)):
            if event.state == "raised" and event.alert_id not in alerts:
                alerts[event.alert_id] = [event.patient, event.rule, {event.severity}, event.time - T0, np.inf]
            elif event.state == "raised":
                alerts[event.alert_id][2].add(event.severity)
            elif event.state == "cleared" and event.alert_id in alerts:
                alerts[event.alert_id][4] = event.time - T0
    if args.arm is not None:
        hours, below = args.arm
        cgm_of = {name: (tr.t - T0, tr.cgm) for name, tr in zip(names[12:], cgm, strict=False)}

        def armed(patient: str, raised: float) -> bool:
            t, v = cgm_of[patient]
            return bool(((v < below) & (t < raised) & (t >= raised - hours * 3600.0)).any())

        alerts = {k: a for k, a in alerts.items() if a[1] != "glucose_low_soon" or armed(a[0], a[3])}
    report(alerts, events, args.days)
    return 0


def glucose_runs(t: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Runs of ``mask`` lasting >= 15 min (runs < 30 min apart merged)."""
    out: list[tuple[float, float]] = []
    for k in np.flatnonzero(mask):
        now = float(t[k])
        if out and now - out[-1][1] <= 1800:
            out[-1] = (out[-1][0], now)
        else:
            out.append((now, now))
    return [(a, b) for a, b in out if b - a >= 900]


MATCH = {
    "af": (("af_screening",), 0.0),
    "fever": (("tachycardia", "heart_rate_above_baseline"), 0.0),
    "low": (("glucose_low", "glucose_urgent_low_soon", "glucose_falling_fast"), 3600.0),
    "high": (("glucose_high", "glucose_high_soon"), 3600.0),
}


def report(alerts: dict[str, list], events: list[tuple[str, str, float, float]], days: float) -> None:
    """Burden per patient-day by rule and severity, and the level-2 events missed."""
    patient_days = N_PATIENTS * days
    by = Counter((rule, max(sev, key=("info", "warning", "critical").index)) for _, rule, sev, _, _ in alerts.values())
    print(f"{N_PATIENTS} patients x {days:g} days = {patient_days:g} patient-days, {len(alerts)} alerts")
    print(f"alerts per patient-day: {len(alerts) / patient_days:.2f}")
    per_patient = Counter((patient, rule) for patient, rule, _, _, _ in alerts.values())
    print("per patient and rule: " + ", ".join(f"{p} {r} {c}" for (p, r), c in sorted(per_patient.items())))
    print("| rule | highest severity | alerts | per patient-day |")
    print("|---|---|---|---|")
    for (rule, severity), count in sorted(by.items()):
        print(f"| {rule} | {severity} | {count} | {count / patient_days:.2f} |")
    missed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    delays: list[float] = []
    for patient, kind, start, end in events:
        rules, before = MATCH[kind]
        total[kind] += 1
        hit = any(
            a[0] == patient
            and a[1] in rules
            and a[3] <= end
            and a[4] >= start - before
            and (kind != "high" or "warning" in a[2])
            for a in alerts.values()
        )
        missed[kind] += not hit
        if not hit:
            print(f"missed: {patient} {kind} from {start / 3600:.2f} h to {end / 3600:.2f} h")
        if kind == "af" and end - start < days * DAY / 2:  # a paroxysm: how long to the alert
            raised = [a[3] for a in alerts.values() if a[0] == patient and a[1] in rules and start <= a[3] <= end]
            delays.append((min(raised) - start) / 60 if raised else np.nan)
    print("level-2 events alerted: " + ", ".join(f"{k} {total[k] - missed[k]}/{total[k]}" for k in sorted(total)))
    if delays:
        print(f"AF paroxysms: onset -> alert raised inside the paroxysm (min): {', '.join(f'{d:.1f}' for d in delays)}")


if __name__ == "__main__":
    sys.exit(main())
